package ipt

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
)

// A rule transaction whose answer is lost while a drift check vouches
// for Apply's read (Checked). Before, Apply dropped the vouch and applied
// again from a new read through iptables-restore: a rule put by hand
// into moat's chains after the check (which made the kernel refuse the
// transaction) was in that read and written over without a word, and a
// transaction that was committed lost the vouch. Now: not committed and
// nothing else, the restores go on under the vouch; committed, it counts
// (no restore, the vouch moves on); refused because a hand rule came
// first, nothing is restored (ErrChangedSinceCheck) and the hand rule
// stays.
func TestKernelRulesNetlinkAckLostChecked(t *testing.T) {
	ns := labtest.NS(t, "moatacklost")
	ctx := context.Background()
	progs := map[string]int{}
	b := countingBackend(t, progs)
	head := "default deny incoming\nallow 22/tcp\n"
	oldSend := sendRules
	t.Cleanup(func() { sendRules = oldSend })
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		if err := b.Apply(ctx, compile(t, head)); err != nil {
			t.Fatal(err)
		}
		for i, c := range []string{"not committed", "committed", "hand rule first"} {
			g, err := nft.Generation()
			if err != nil {
				t.Fatal(err)
			}
			b.Checked = nft.CheckedGen{Gen: g, OK: true}
			sendRules = func(txn *rulesTxn, gen uint32) error {
				switch c {
				case "committed":
					if err := oldSend(txn, gen); err != nil {
						t.Fatal(err)
					}
				case "hand rule first":
					if _, err := execrun.Exec(context.Background(), nil, insertHandRule[0], insertHandRule[1:]...); err != nil {
						t.Fatal(err)
					}
					if err := oldSend(txn, gen); !nft.GenerationMoved(err) {
						t.Fatalf("the transaction after a hand rule: %v, want refused", err)
					}
				}
				return fmt.Errorf("nftables: transaction's acks lost, committed or not: %w", unix.ENOBUFS)
			}
			clear(progs)
			port := []string{"5000", "6000", "7000"}[i]
			err = b.Apply(ctx, compile(t, head+"allow "+port+"/tcp\n"))
			lines := strings.Join(moatLines(t, ctx)[policy.FamilyV4], "\n")
			restores := progs["iptables-restore"] + progs["ip6tables-restore"]
			switch c {
			case "not committed":
				if err != nil || restores == 0 || !strings.Contains(lines, port) || !b.Checked.OK {
					t.Errorf("%s: %v, %d restores, vouch %v:\n%s", c, err, restores, b.Checked.OK, lines)
				}
			case "committed":
				if err != nil || restores != 0 || !strings.Contains(lines, port) || !b.Checked.OK {
					t.Errorf("%s: %v, %d restores, vouch %v:\n%s", c, err, restores, b.Checked.OK, lines)
				}
			default:
				if !errors.Is(err, nft.ErrChangedSinceCheck) || restores != 0 || !strings.Contains(lines, handRule) || strings.Contains(lines, port) {
					t.Errorf("%s: %v, %d restores:\n%s", c, err, restores, lines)
				}
			}
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// 'moat reload' (a whole rewrite of the same policy) whose answer is
// lost after a hand rule made the kernel refuse it, a drift check
// vouching for the read: MOAT-GEN's record read back must not count it
// committed because the policy is the same (here the ipsets' "changing"
// mark, written first, says it is not). Nothing restored over the hand
// rule (ErrChangedSinceCheck).
func TestKernelRulesNetlinkAckLostSameRecord(t *testing.T) {
	ns := labtest.NS(t, "moatacksame")
	ctx := context.Background()
	b := countingBackend(t, map[string]int{})
	head := "default deny incoming\nallow 22/tcp\n"
	oldSend := sendRules
	t.Cleanup(func() { sendRules = oldSend })
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		if err := b.Apply(ctx, compile(t, head)); err != nil {
			t.Fatal(err)
		}
		g, err := nft.Generation()
		if err != nil {
			t.Fatal(err)
		}
		b.Checked = nft.CheckedGen{Gen: g, OK: true}
		sent := false
		sendRules = func(txn *rulesTxn, gen uint32) error {
			sent = true
			if _, err := execrun.Exec(context.Background(), nil, insertHandRule[0], insertHandRule[1:]...); err != nil {
				t.Fatal(err)
			}
			if err := oldSend(txn, gen); !nft.GenerationMoved(err) {
				t.Fatalf("the transaction after a hand rule: %v, want refused", err)
			}
			return fmt.Errorf("nftables: transaction's acks lost, committed or not: %w", unix.ENOBUFS)
		}
		b.Full = true // moat reload
		err = b.Apply(ctx, compile(t, head))
		if !sent {
			t.Fatal("the same policy again wrote nothing over netlink: the case is not made")
		}
		lines := strings.Join(moatLines(t, ctx)[policy.FamilyV4], "\n")
		if !errors.Is(err, nft.ErrChangedSinceCheck) || !strings.Contains(lines, handRule) {
			t.Errorf("refused after a hand rule, answer lost: %v, want ErrChangedSinceCheck:\n%s", err, lines)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
