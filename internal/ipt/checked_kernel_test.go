package ipt

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
)

// handRule is the rule insertHandRule puts by hand at the head of
// MOAT-INPUT, as iptables-save prints it.
const handRule = "-A MOAT-INPUT -p tcp -m tcp --dport 7070 -m comment --comment HAND -j DROP"

// insertHandRule is the command that puts handRule by hand.
var insertHandRule = []string{"iptables", "-I", "MOAT-INPUT", "1", "-p", "tcp", "--dport", "7070", "-m", "comment", "--comment", "HAND", "-j", "DROP"}

// Apply with a checked generation (the command's drift check vouched
// for it): a change committed after it by another program, before
// Apply's read or between the read and the netlink transaction, makes
// Apply commit nothing and say so (nft.ErrChangedSinceCheck), with no
// iptables-restore run: before, the refused transaction fell back to
// iptables-restore, which emptied moat's chains and wrote them again,
// the hand rule gone. Nothing in between: the change is one transaction
// and the checked generation moves on by it.
func TestKernelCheckedApply(t *testing.T) {
	ns := labtest.NS(t, "moatchecked")
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
		check := func() {
			g, err := nft.Generation()
			if err != nil {
				t.Fatal(err)
			}
			b.Checked = nft.CheckedGen{Gen: g, OK: true}
		}
		hasHand := func() bool {
			return strings.Contains(strings.Join(moatLines(t, ctx)[policy.FamilyV4], "\n"), handRule)
		}
		for _, c := range []struct {
			name       string
			before     []string // run before Apply
			beforeSend []string // run before the transaction is sent
		}{
			{name: "hand rule before the read", before: insertHandRule},
			{name: "hand rule before the send", beforeSend: insertHandRule},
			{name: "another table before the send", beforeSend: []string{"nft", "add", "table", "inet", "moatcheckedother"}},
		} {
			check()
			if c.before != nil {
				if _, err := execrun.Exec(ctx, nil, c.before[0], c.before[1:]...); err != nil {
					t.Fatal(err)
				}
			}
			sent := 0
			sendRules = func(txn *rulesTxn, gen uint32) error {
				if sent++; c.beforeSend != nil {
					if _, err := execrun.Exec(ctx, nil, c.beforeSend[0], c.beforeSend[1:]...); err != nil {
						t.Fatal(err)
					}
				}
				return oldSend(txn, gen)
			}
			clear(progs)
			err := b.Apply(ctx, compile(t, head+"allow 9903/tcp\n"))
			if !errors.Is(err, nft.ErrChangedSinceCheck) {
				t.Errorf("%s: %v, want ErrChangedSinceCheck", c.name, err)
			}
			if restores := progs["iptables-restore"] + progs["ip6tables-restore"]; restores != 0 {
				t.Errorf("%s: %d restores ran: %v", c.name, restores, progs)
			}
			if c.before != nil && sent != 0 {
				t.Errorf("%s: the transaction was sent", c.name)
			}
			if strings.Contains(strings.Join(moatLines(t, ctx)[policy.FamilyV4], "\n"), "9903") {
				t.Errorf("%s: the change was committed", c.name)
			}
			if want := c.name != "another table before the send"; hasHand() != want {
				t.Errorf("%s: hand rule there %v, want %v", c.name, !want, want)
			}
			if hasHand() {
				if _, err := execrun.Exec(ctx, nil, "iptables", "-D", "MOAT-INPUT", "1"); err != nil {
					t.Fatal(err)
				}
			}
		}
		sendRules = oldSend
		check()
		g0 := b.Checked.Gen
		if err := b.Apply(ctx, compile(t, head+"allow 9903/tcp\n")); err != nil {
			t.Fatal(err)
		}
		if !b.Checked.OK || b.Checked.Gen != g0+1 {
			t.Errorf("checked %+v after one transaction from %d", b.Checked, g0)
		}
		b.Checked = nft.CheckedGen{}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The same when Apply's ipsets change too: their "changing" mark is
// committed (iptables-restore) before the rules' transaction, so a
// refusal of that transaction is no longer "nothing committed". A new
// read decides: moat's chains changed (a hand rule): nothing more is
// committed (nft.ErrChangedSinceCheck), the hand rule kept; a change
// elsewhere (another table): the rules go through iptables-restore as
// before, and the hand rule question does not arise.
func TestKernelCheckedApplyAfterMark(t *testing.T) {
	ns := labtest.NS(t, "moatcheckmark")
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
		for i, c := range []struct {
			name   string
			change []string
			hand   bool
		}{
			{"hand rule", insertHandRule, true},
			{"another table", []string{"nft", "add", "table", "inet", "moatcheckmarkother"}, false},
		} {
			sendRules = oldSend
			b.Checked = nft.CheckedGen{}
			if err := b.Apply(ctx, compile(t, head+denyList(50, -1))); err != nil {
				t.Fatal(err)
			}
			g, err := nft.Generation()
			if err != nil {
				t.Fatal(err)
			}
			b.Checked = nft.CheckedGen{Gen: g, OK: true}
			sent := 0
			sendRules = func(txn *rulesTxn, gen uint32) error {
				if sent++; sent == 1 {
					if _, err := execrun.Exec(ctx, nil, c.change[0], c.change[1:]...); err != nil {
						t.Fatal(err)
					}
				}
				return oldSend(txn, gen)
			}
			clear(progs)
			err = b.Apply(ctx, compile(t, head+denyList(51, i)+"allow 9903/tcp\n"))
			lines := strings.Join(moatLines(t, ctx)[policy.FamilyV4], "\n")
			if c.hand {
				if !errors.Is(err, nft.ErrChangedSinceCheck) || !strings.Contains(lines, "HAND") || strings.Contains(lines, "9903") {
					t.Errorf("%s: %v, want ErrChangedSinceCheck, the hand rule kept and the edit not made:\n%s", c.name, err, lines)
				}
				if _, err := execrun.Exec(ctx, nil, "iptables", "-D", "MOAT-INPUT", "1"); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err != nil || !strings.Contains(lines, "9903") || progs["iptables-restore"] == 0 {
				t.Errorf("%s: %v, restores %v, want the edit made through iptables-restore:\n%s", c.name, err, progs, lines)
			}
		}
		b.Checked = nft.CheckedGen{}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}
