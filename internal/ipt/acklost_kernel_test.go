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
	const hand = "-A MOAT-INPUT -p tcp -m tcp --dport 7070 -m comment --comment HAND -j DROP"
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
					if _, err := execrun.Exec(context.Background(), nil, "iptables", "-I", "MOAT-INPUT", "1", "-p", "tcp", "--dport", "7070", "-m", "comment", "--comment", "HAND", "-j", "DROP"); err != nil {
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
				if !errors.Is(err, nft.ErrChangedSinceCheck) || restores != 0 || !strings.Contains(lines, hand) || strings.Contains(lines, port) {
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
