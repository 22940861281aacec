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
	dir := t.TempDir()
	for _, n := range []string{"one", "two", "three"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("192.0.2.13\n2001:db8::13\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pol := func(lists ...string) string {
		s := "default deny incoming\nallow 22/tcp\n"
		for _, l := range lists {
			s += fmt.Sprintf("blocklist %s file %s\n", l, filepath.Join(dir, l))
		}
		return s
	}
	drop := regexp.MustCompile(`^-A MOAT-PREROUTING .*-m set --match-set (\S+) src .*-j DROP$`)
	gate := regexp.MustCompile(`^-A PREROUTING -m set --match-set (\S+) src -j MOAT-PREROUTING$`)
	// check: every set a drop uses is in the list the jump is gated by.
	check := func(what string) {
		t.Helper()
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
