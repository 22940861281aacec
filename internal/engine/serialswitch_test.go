package engine

import (
	"os"
	"runtime"
	"testing"

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
