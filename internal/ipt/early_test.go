package ipt

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/labtest"
)

// The early lists over netlink: earlyHeld reads the members the kernel
// holds, in order; a rule change on lists that hold their members
// already runs no ipset process for them; a member deleted by hand is
// put back by a full apply, in the order moat loads them.
func TestKernelEarlyListsHeld(t *testing.T) {
	ctx := context.Background()
	ns := labtest.NS(t, "moatearly")
	run := labtest.Runner(ns)
	var sent []string
	b := &Backend{IpsetNetlink: true, Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		sent = append(sent, name+" "+strings.Join(args, " ")+"\n"+string(stdin))
		return run(ctx, stdin, name, args...)
	}}
	held := func(name string) []string {
		t.Helper()
		var m []string
		if err := ns.Do(func() error {
			var err error
			var missing bool
			m, missing, err = earlyHeld(ctx, name)
			if missing {
				m = nil
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return m
	}
	apply := func(text string) {
		t.Helper()
		if err := ns.Do(func() error { return b.Apply(ctx, compile(t, text)) }); err != nil {
			t.Fatal(err)
		}
	}
	apply("default deny incoming\nallow 22/tcp\n")
	if m4, m6 := held("moat-early4"), held("moat-early6"); !slices.Equal(m4, []string{"moat-ban4"}) || !slices.Equal(m6, []string{"moat-ban6"}) {
		t.Fatalf("early lists: %q %q", m4, m6)
	}
	if m := held("moat-none"); m != nil {
		t.Errorf("a missing list holds %q", m)
	}
	sent = nil
	apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	for _, s := range sent {
		if strings.HasPrefix(s, "ipset") && strings.Contains(s, "early") {
			t.Errorf("a rule change on early lists that hold their members sent:\n%s", s)
		}
	}
	if _, err := run(ctx, nil, "ipset", "del", "moat-early4", "moat-ban4"); err != nil {
		t.Fatal(err)
	}
	if _, err := run(ctx, nil, "ipset", "add", "moat-early4", "moat-protect4"); err != nil {
		t.Fatal(err)
	}
	// The fingerprint counts the members the rules use: one deleted
	// or added changes it; a set no rule uses (the old rules' sets
	// left by a moat killed between the list's steps and the rules)
	// does not.
	fingerprint := func() string {
		t.Helper()
		var fp string
		if err := ns.Do(func() error {
			var err error
			fp, err = b.Fingerprint(ctx)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return fp
	}
	if _, err := run(ctx, nil, "ipset", "del", "moat-early4", "moat-protect4"); err != nil {
		t.Fatal(err)
	}
	if _, err := run(ctx, nil, "ipset", "add", "moat-early4", "moat-ban4"); err != nil {
		t.Fatal(err)
	}
	fp := fingerprint()
	if _, err := run(ctx, []byte("create moat-bl4_gone hash:net\nadd moat-early4 moat-bl4_gone\n"), "ipset", "restore"); err != nil {
		t.Fatal(err)
	}
	if fingerprint() != fp {
		t.Error("a member no rule uses changed the fingerprint")
	}
	if _, err := run(ctx, nil, "ipset", "add", "moat-early4", "moat-protect4"); err != nil {
		t.Fatal(err)
	}
	if fingerprint() == fp {
		t.Error("a used set added to the early list by hand left the fingerprint")
	}
	if _, err := run(ctx, nil, "ipset", "del", "moat-early4", "moat-ban4"); err != nil {
		t.Fatal(err)
	}
	if fingerprint() == fp {
		t.Error("the ban set deleted from the early list by hand left the fingerprint")
	}
	b.Full = true
	apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	if m4 := held("moat-early4"); !slices.Equal(m4, []string{"moat-ban4"}) {
		t.Errorf("a full apply left the early list holding %q", m4)
	}
	if fingerprint() != fp {
		t.Error("the repaired early list has another fingerprint")
	}
}

// An early list made anew by hand under its name, of another type (a
// hash:ip) or a list:set of another header (its members expire), with
// moat's gated jump put back by hand: the create that makes the list
// exist was refused ("set with the same name already exists") and every
// apply after failed, 'moat reload' too, though status said it repairs
// it. The repair makes the jump plain for a moment (the same verdicts:
// each drop carries its own exemptions), destroys the impostor and makes
// the list anew; the fingerprint moat records is the kernel's.
func TestKernelEarlyListReplacedByHand(t *testing.T) {
	for _, create := range []string{"hash:ip", "list:set size 8 timeout 600"} {
		t.Run(strings.Fields(create)[0], func(t *testing.T) {
			ctx := context.Background()
			ns := labtest.NS(t, "moatearlyhand")
			run := labtest.Runner(ns)
			b := &Backend{IpsetNetlink: true, Run: run}
			const pol = "default deny incoming\nallow 22/tcp\n"
			if err := ns.Do(func() error { return b.Apply(ctx, compile(t, pol)) }); err != nil {
				t.Fatal(err)
			}
			earlyReplacedByHand(t, run, create)
			b.Full = true
			if err := ns.Do(func() error { return b.Apply(ctx, compile(t, pol)) }); err != nil {
				t.Fatalf("the repair: %v", err)
			}
			earlyMoats(t, ns, "the repair", "Header: size 64\n")
			var recorded, read string
			if err := ns.Do(func() error {
				var err error
				if recorded, err = b.Fingerprint(ctx); err != nil {
					return err
				}
				read, err = (&Backend{IpsetNetlink: true, Run: run}).Fingerprint(ctx)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if recorded != read {
				t.Errorf("the fingerprint after the repair is not the kernel's: %s, read %s", recorded, read)
			}
		})
	}
}

// An early list made anew by hand as another type (moat's jump put back
// by hand) between a snapshot and its restore (a rollback): the restore
// failed ("The sets cannot be swapped: their type does not match"), the
// rollback fell back to an apply. Restore and RestoreKeepingBans replace
// it as apply does: the snapshot's list:set comes back, holding its sets,
// and the raw jump is moat's alone.
func TestKernelRestoreEarlyListReplacedByHand(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keepBans=%v", keep), func(t *testing.T) {
			ctx := context.Background()
			ns := labtest.NS(t, "moatearlyrest")
			run := labtest.Runner(ns)
			b := &Backend{IpsetNetlink: true, Run: run}
			const pol = "default deny incoming\nallow 22/tcp\n"
			var snap []byte
			if err := ns.Do(func() error {
				if err := b.Apply(ctx, compile(t, pol)); err != nil {
					return err
				}
				var err error
				snap, err = b.Snapshot(ctx)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			earlyReplacedByHand(t, run, "hash:ip")
			if err := ns.Do(func() error {
				if keep {
					kept, err := b.RestoreKeepingBans(ctx, snap)
					if err == nil && !kept {
						err = fmt.Errorf("the ban sets were not kept")
					}
					return err
				}
				return b.Restore(ctx, snap)
			}); err != nil {
				t.Fatalf("restore: %v", err)
			}
			earlyMoats(t, ns, "the restore")
		})
	}
}

// earlyJump is moat's gated raw jump through its IPv4 early list.
const earlyJump = "PREROUTING -m set --match-set moat-early4 src -j MOAT-PREROUTING"

// earlyReplacedByHand makes moat's IPv4 early list anew by hand as create
// (an ipset type and its options), moat's jump through it taken out
// before and put back first after, as an admin would.
func earlyReplacedByHand(t *testing.T, run execrun.Runner, create string) {
	t.Helper()
	for _, c := range [][]string{
		append([]string{"iptables", "-t", "raw", "-D"}, strings.Fields(earlyJump)...),
		{"ipset", "destroy", "moat-early4"},
		append([]string{"ipset", "create", "moat-early4"}, strings.Fields(create)...),
		append([]string{"iptables", "-t", "raw", "-I"}, strings.Fields(strings.Replace(earlyJump, "PREROUTING", "PREROUTING 1", 1))...),
	} {
		if out, err := run(context.Background(), nil, c[0], c[1:]...); err != nil {
			t.Fatalf("%q: %v\n%s", c, err, out)
		}
	}
}

// earlyMoats checks, after what, that moat's IPv4 early list in ns is a
// list:set (its listing holding each of header too) holding moat-ban4
// alone, and that raw holds one jump into MOAT-PREROUTING: moat's.
func earlyMoats(t *testing.T, ns *lab.NS, after string, header ...string) {
	t.Helper()
	ctx := context.Background()
	run := labtest.Runner(ns)
	out, err := run(ctx, nil, "ipset", "list", "-t", "moat-early4")
	whole := err == nil && strings.Contains(string(out), "Type: list:set\n")
	for _, h := range header {
		whole = whole && strings.Contains(string(out), h)
	}
	if !whole {
		t.Errorf("the early list after %s (%v):\n%s", after, err, out)
	}
	var m4 []string
	if err := ns.Do(func() error { m4, _, err = earlyHeld(ctx, "moat-early4"); return err }); err != nil || !slices.Equal(m4, []string{"moat-ban4"}) {
		t.Errorf("early list after %s: %q (%v)", after, m4, err)
	}
	save, err := run(ctx, nil, "iptables-save", "-t", "raw")
	if err != nil || strings.Count(string(save), "-j MOAT-PREROUTING") != 1 || !strings.Contains(string(save), "-A "+earlyJump+"\n") {
		t.Errorf("raw after %s (%v):\n%s", after, err, save)
	}
}
