package ipt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/labtest"
)

// A moat killed before any of an apply's commands (each command refused
// from the k-th on, as a kill there leaves the kernel) never leaves a
// drop of MOAT-PREROUTING by a set its early list lacks: a source of
// that set would skip the drop silently. Between blocklists added,
// removed and replaced, both ways, both families; the apply after each
// kill succeeds and leaves each list holding its rules' sets alone.
func TestKernelEarlyListsKillAtEachStep(t *testing.T) {
	ctx := context.Background()
	ns := labtest.NS(t, "moatearlykill")
	run := labtest.Runner(ns)
	pol := blocklistPolicy(t)
	check := func(what string) { t.Helper(); checkEarlyLists(t, ns, what) }
	errKilled := errors.New("killed")
	for _, step := range []struct{ from, to []string }{
		{[]string{"one"}, []string{"one", "two"}},
		{[]string{"one", "two"}, []string{"two"}},
		{[]string{"one"}, []string{"two", "three"}},
		{nil, []string{"one"}},
		{[]string{"one"}, nil},
	} {
		for k := 0; ; k++ {
			good := &Backend{IpsetNetlink: true, Run: run}
			if err := ns.Do(func() error { return good.Apply(ctx, compile(t, pol(step.from...))) }); err != nil {
				t.Fatalf("%v: %v", step.from, err)
			}
			calls := 0
			b := &Backend{IpsetNetlink: true, Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
				if calls++; calls > k && !strings.HasSuffix(name, "-save") && !(name == "ipset" && len(args) > 0 && args[0] == "list") {
					return nil, errKilled
				}
				return run(ctx, stdin, name, args...)
			}}
			what := fmt.Sprintf("%v to %v, killed before command %d", step.from, step.to, k+1)
			err := ns.Do(func() error { return b.Apply(ctx, compile(t, pol(step.to...))) })
			check(what)
			if err := ns.Do(func() error { return good.Apply(ctx, compile(t, pol(step.to...))) }); err != nil {
				t.Fatalf("%s: the apply after: %v", what, err)
			}
			check(what + ", then applied")
			if err == nil {
				break
			}
			if !errors.Is(err, errKilled) {
				t.Fatalf("%s: %v", what, err)
			}
		}
	}
}

// checkEarlyLists fails t where a drop of MOAT-PREROUTING (ns's kernel,
// both families) is by a set the early list its jump is gated by lacks:
// a source of that set would skip the drop.
func checkEarlyLists(t *testing.T, ns *lab.NS, what string) {
	t.Helper()
	ctx := context.Background()
	run := labtest.Runner(ns)
	drop := regexp.MustCompile(`^-A MOAT-PREROUTING .*-m set --match-set (\S+) src .*-j DROP$`)
	gate := regexp.MustCompile(`^-A PREROUTING -m set --match-set (\S+) src -j MOAT-PREROUTING$`)
	for _, prog := range []string{"iptables-save", "ip6tables-save"} {
		out, err := run(ctx, nil, prog, "-t", "raw")
		if err != nil {
			t.Fatal(err)
		}
		list := ""
		var drops []string
		for _, l := range strings.Split(string(out), "\n") {
			if m := gate.FindStringSubmatch(l); m != nil {
				list = m[1]
			}
			if m := drop.FindStringSubmatch(l); m != nil {
				drops = append(drops, m[1])
			}
		}
		if list == "" {
			continue // not gated: every source goes through the drops
		}
		var held []string
		if err := ns.Do(func() error {
			var err error
			held, _, err = earlyHeld(ctx, list)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		for _, d := range drops {
			if !slices.Contains(held, d) {
				t.Errorf("%s: %s: MOAT-PREROUTING drops by %s, which %s lacks (holds %q): its sources skip the drop", what, prog, d, list, held)
			}
		}
	}
}

// A rollback (the snapshot restored) killed before any of its commands
// leaves no drop by a set its early list lacks either: the lists are
// swapped to the snapshot's before its rules are restored, and held the
// current rules' sets no longer (a blocklist added by the change rolled
// back: its sources skipped the drop until the rules followed). The
// restore after the kill leaves the snapshot's lists and destroys the
// change's sets.
func TestKernelEarlyListsRestoreKillAtEachStep(t *testing.T) {
	ctx := context.Background()
	ns := labtest.NS(t, "moatearlyrst")
	run := labtest.Runner(ns)
	pol := blocklistPolicy(t)
	errKilled := errors.New("killed")
	// A rollback's (keeping the bans) of a blocklist added; a restore's
	// (bans refilled) of one replaced.
	for _, step := range []struct {
		snap, now []string
		keep      bool
	}{
		{[]string{"one"}, []string{"one", "two"}, true},
		{[]string{"one"}, []string{"two"}, false},
	} {
		keep := step.keep
		{
			for k := 0; ; k++ {
				good := &Backend{IpsetNetlink: true, Run: run}
				var snap []byte
				if err := ns.Do(func() error {
					if err := good.Apply(ctx, compile(t, pol(step.snap...))); err != nil {
						return err
					}
					var err error
					if snap, err = good.Snapshot(ctx); err != nil {
						return err
					}
					return good.Apply(ctx, compile(t, pol(step.now...)))
				}); err != nil {
					t.Fatal(err)
				}
				calls := 0
				b := &Backend{IpsetNetlink: true, Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
					if calls++; calls > k && !strings.HasSuffix(name, "-save") && !(name == "ipset" && len(args) > 0 && (args[0] == "list" || args[0] == "save")) {
						return nil, errKilled
					}
					return run(ctx, stdin, name, args...)
				}}
				what := fmt.Sprintf("restore of %v over %v (keeping bans %v), killed before command %d", step.snap, step.now, keep, k+1)
				err := ns.Do(func() error {
					if keep {
						_, err := b.RestoreKeepingBans(ctx, snap)
						return err
					}
					return b.Restore(ctx, snap)
				})
				checkEarlyLists(t, ns, what)
				if err := ns.Do(func() error { return good.Restore(ctx, snap) }); err != nil {
					t.Fatalf("%s: the restore after: %v", what, err)
				}
				checkEarlyLists(t, ns, what+", then restored")
				var held []string
				if herr := ns.Do(func() error {
					var err error
					held, _, err = earlyHeld(ctx, "moat-early4")
					return err
				}); herr != nil {
					t.Fatal(err)
				}
				want := []string{"moat-ban4"}
				for _, l := range step.snap {
					want = append(want, "moat-bl4_"+l)
				}
				if !slices.Equal(held, want) {
					t.Errorf("%s, then restored: moat-early4 holds %q, want %q", what, held, want)
				}
				if out, err := run(ctx, nil, "ipset", "list", "-n"); err != nil || strings.Contains(string(out), "moatnew-") ||
					(!slices.Contains(step.snap, "two") && strings.Contains(string(out), "bl4_two")) {
					t.Errorf("%s, then restored: sets (%v):\n%s", what, err, out)
				}
				if err == nil {
					break
				}
				if !errors.Is(err, errKilled) {
					t.Fatalf("%s: %v", what, err)
				}
			}
		}
	}
}

// blocklistPolicy makes a policy with a file blocklist of each name given
// (its file in a directory of the test's, listing 192.0.2.13 and
// 2001:db8::13).
func blocklistPolicy(t *testing.T) func(lists ...string) string {
	dir := t.TempDir()
	return func(lists ...string) string {
		s := "default deny incoming\nallow 22/tcp\n"
		for _, l := range lists {
			file := filepath.Join(dir, l)
			if err := os.WriteFile(file, []byte("192.0.2.13\n2001:db8::13\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			s += fmt.Sprintf("blocklist %s file %s\n", l, file)
		}
		return s
	}
}
