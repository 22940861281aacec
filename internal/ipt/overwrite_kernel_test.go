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

// A rule put by hand into one of moat's chains while moat's
// iptables-restore runs (after Apply's last look at the generation,
// before the restore's commit; here: just before the restore starts)
// is written over: the restore empties the chain and writes it again.
// Before, nothing said so (the full comparison afterwards found moat's
// chains as written); now Apply watches the commits and tells which
// change it may have written over, by whom. A change elsewhere is not
// told. With a drift check vouching for Apply's read, a hand rule
// before the last look makes Apply restore nothing
// (nft.ErrChangedSinceCheck): before, a change that iptables-restore
// writes (here: the netlink transaction off) had no look at the
// generation after the read at all.
func TestKernelHandChangeDuringRestore(t *testing.T) {
	ns := labtest.NS(t, "moatoverw")
	ctx := context.Background()
	head := "default deny incoming\nallow 22/tcp\n"
	otherTable := []string{"nft", "add", "table", "inet", "moatoverwother"}
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		for i, c := range []struct {
			name    string
			change  []string
			checked bool
			told    bool
		}{
			{"hand rule, checked", insertHandRule, true, true},
			{"hand rule, not checked", insertHandRule, false, true},
			{"another table, checked", otherTable, true, false},
		} {
			var during []string
			progs := map[string]int{}
			b := countingBackend(t, progs)
			run := b.Run
			b.Run = func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
				if name == "iptables-restore" && during != nil {
					change := during
					during = nil
					if _, err := execrun.Exec(context.Background(), nil, change[0], change[1:]...); err != nil {
						t.Error(err)
					}
				}
				return run(ctx, stdin, name, args...)
			}
			b.noRulesNetlink = true // the change through iptables-restore
			var warned []string
			b.Warn = func(msg string) { warned = append(warned, msg) }
			if err := b.Apply(ctx, compile(t, head)); err != nil {
				t.Fatal(err)
			}
			if c.checked {
				g, err := nft.Generation()
				if err != nil {
					t.Fatal(err)
				}
				b.Checked = nft.CheckedGen{Gen: g, OK: true}
			}
			during = c.change
			port := []string{"9901", "9902", "9903"}[i]
			if err := b.Apply(ctx, compile(t, head+"allow "+port+"/tcp\n")); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			lines := strings.Join(moatLines(t, ctx)[policy.FamilyV4], "\n")
			if !strings.Contains(lines, port) {
				t.Fatalf("%s: the change was not made:\n%s", c.name, lines)
			}
			got := b.LastOverwritten()
			if c.told != (len(got) > 0) || len(got) != len(warned) {
				t.Errorf("%s: told %q (warned %q), want told %v", c.name, got, warned, c.told)
			}
			if !strings.Contains(lines, handRule) && c.told && (len(got) == 0 || !strings.Contains(got[0], `chain "MOAT-INPUT" of table ip filter`) || !strings.Contains(got[0], "(iptables)")) {
				t.Errorf("%s: the hand rule was lost and %q does not say so", c.name, got)
			}
			if strings.Contains(lines, handRule) {
				if _, err := execrun.Exec(ctx, nil, "iptables", "-D", "MOAT-INPUT", "1"); err != nil {
					t.Fatal(err)
				}
			}
			// Before the last look, with a check vouching: nothing
			// restored, the hand rule kept.
			if !c.checked || !c.told {
				continue
			}
			g, err := nft.Generation()
			if err != nil {
				t.Fatal(err)
			}
			b.Checked = nft.CheckedGen{Gen: g, OK: true}
			b.beforeLook = func() {
				if _, err := execrun.Exec(ctx, nil, insertHandRule[0], insertHandRule[1:]...); err != nil {
					t.Error(err)
				}
			}
			clear(progs)
			err = b.Apply(ctx, compile(t, head+"allow 9909/tcp\n"))
			b.beforeLook = nil
			if !errors.Is(err, nft.ErrChangedSinceCheck) {
				t.Errorf("%s: hand rule before the last look: %v, want ErrChangedSinceCheck", c.name, err)
			}
			if n := progs["iptables-restore"] + progs["ip6tables-restore"]; n != 0 {
				t.Errorf("%s: %d restores ran", c.name, n)
			}
			lines = strings.Join(moatLines(t, ctx)[policy.FamilyV4], "\n")
			if !strings.Contains(lines, handRule) || strings.Contains(lines, "9909") {
				t.Errorf("%s: the hand rule was lost or the change made:\n%s", c.name, lines)
			}
			if _, err := execrun.Exec(ctx, nil, "iptables", "-D", "MOAT-INPUT", "1"); err != nil {
				t.Fatal(err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Notifications lost while moat's iptables-restore runs (a flood of
// another program's commits overruns the watch's socket): Apply cannot
// tell whether the restore wrote over a change of moat's chains, and
// says so. Before, it said nothing, which reads as nothing written over.
func TestKernelRestoreUnheardSaid(t *testing.T) {
	ns := labtest.NS(t, "moatunheard")
	ctx := context.Background()
	old := watchCommits
	small := false
	watchCommits = func() (*nft.CommitWatch, error) {
		if small {
			return nft.WatchCommitsBuffer(0)
		}
		return old()
	}
	t.Cleanup(func() { watchCommits = old })
	flood := labtest.NftFlood(3000)
	head := "default deny incoming\nallow 22/tcp\n"
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		b := countingBackend(t, map[string]int{})
		run := b.Run
		flooding := false
		// The watch's reader is held while the flood commits: a reader
		// on the other processor could keep up with it.
		hold, end := nft.HoldReaders()
		t.Cleanup(end)
		b.Run = func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
			if name == "iptables-restore" && flooding {
				flooding = false
				release := hold()
				if _, err := execrun.Exec(context.Background(), flood, "nft", "-f", "-"); err != nil {
					t.Error(err)
				}
				release()
			}
			return run(ctx, stdin, name, args...)
		}
		b.noRulesNetlink = true // the change through iptables-restore
		var warned []string
		b.Warn = func(msg string) { warned = append(warned, msg) }
		if err := b.Apply(ctx, compile(t, head)); err != nil {
			t.Fatal(err)
		}
		if len(warned) != 0 {
			t.Errorf("nothing else committed: warned %q", warned)
		}
		flooding, small = true, true
		if err := b.Apply(ctx, compile(t, head+"allow 9901/tcp\n")); err != nil {
			t.Fatal(err)
		}
		if len(warned) != 1 || !strings.Contains(warned[0], "could not hear every change") || !strings.Contains(warned[0], "iptables-restore") {
			t.Errorf("notifications lost, warned %q", warned)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
