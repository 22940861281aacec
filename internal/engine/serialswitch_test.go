package engine

import (
	"context"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/gctune"
)

// A command main started on one processor (gctune.StartSerial: an edit
// of a small policy) that turns out to change backend (the policy's
// backend line changed by hand, then 'moat allow') carries every ban in
// force over, up to hundreds of thousands: it gets its processors back
// first. An apply on the same backend stays on one.
func TestBackendSwitchGetsProcessors(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" || runtime.NumCPU() < 2 {
		t.Skip("GOMAXPROCS set or one CPU: StartSerial leaves the scheduler alone")
	}
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { gctune.Parallel(); runtime.GOMAXPROCS(before) })
	runtime.GOMAXPROCS(max(before, 2))
	r, _, _, _ := newSwitchRig(t, [2]string{"nftables", "iptables"})

	gctune.StartSerial()
	r.write("backend nftables\n" + base + "allow 8080/tcp\n")
	_, err := r.enable(r.ch(0))
	r.must(err)
	if !gctune.Serial() {
		t.Errorf("an apply on the same backend left its one processor")
	}

	r.write("backend iptables\n" + base)
	res, err := r.enable(r.ch(0))
	r.must(err)
	if res.Switched != "nftables" {
		t.Fatalf("not switched: %+v", res)
	}
	if gctune.Serial() {
		t.Errorf("a change of backend carried the bans over on one processor")
	}
}

// The repair a command runs when it takes the lock undoes a command
// killed half way (here an enable killed after its kernel step) or
// finishes a rollback, with the bans in force put back: heavy work, up
// to a whole policy and hundreds of thousands of bans, that an edit
// main started on one processor does first. It gets its processors
// back; a lock with nothing to repair leaves it on one.
func TestRepairGetsProcessors(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" || runtime.NumCPU() < 2 {
		t.Skip("GOMAXPROCS set or one CPU: StartSerial leaves the scheduler alone")
	}
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { gctune.Parallel(); runtime.GOMAXPROCS(before) })
	runtime.GOMAXPROCS(max(before, 2))
	noop := func(context.Context, *Engine) error { return nil }
	for _, c := range []struct {
		name string
		kill func(r *rig)
	}{
		{"killed enable", func(r *rig) {
			r.write(base + "allow 8080/tcp\n")
			r.crashAt = "applied"
			if _, err := r.enable(r.ch(0)); !IsCrash(err) {
				t.Fatalf("no crash: %v", err)
			}
			r.crashAt = ""
		}},
		{"deadline passed", func(r *rig) {
			r.write(base + "allow 8080/tcp\n")
			_, err := r.enable(r.ch(time.Minute))
			r.must(err)
			r.advance(2 * time.Minute)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			r.write(base)
			_, err := r.enable(r.ch(0))
			r.must(err)
			gctune.StartSerial()
			r.must(r.do(noop))
			if !gctune.Serial() {
				t.Errorf("a lock with nothing to repair left its one processor")
			}
			c.kill(r)
			gctune.StartSerial()
			r.must(r.do(noop))
			if gctune.Serial() {
				t.Errorf("the repair ran on one processor")
			}
		})
	}
}
