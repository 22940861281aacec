package engine

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/guard"
)

// A rollback cut after its restore (kill -9, the watchdog killed at the
// deadline) leaves the snapshot's bans in the kernel: one lifted while
// the change waited is back until the rollback is finished. The guard
// banning that address again after the cut (its history says the ban is
// lifted) finds it in the set (nftables keeps the element as it is) and
// records the ban; the finished rollback then lifted it again, as the
// snapshot's copy of a ban lifted meanwhile. The guard's history (and
// the record of 'moat ban') tells a ban made after the rollback began: kept,
// with the time the guard gave it. A ban lifted meanwhile and not made
// again stays lifted. Both ways the first rollback ended: asked for, and
// at the deadline.
func TestRollbackCutKeepsAddressBannedAgain(t *testing.T) {
	for _, how := range []string{"rollback", "deadline"} {
		t.Run(how, func(t *testing.T) {
			r, ban := newBanRig(t, false)
			ctx := context.Background()
			addr := netip.MustParseAddr
			ban("203.0.113.50", time.Hour, "before")
			ban("203.0.113.51", time.Hour, "lifted meanwhile, banned again after the cut")
			ban("203.0.113.52", time.Hour, "lifted meanwhile")
			res, err := r.add(r.ch(time.Hour), "allow 443/tcp")
			r.must(err)
			lifted := []netip.Addr{addr("203.0.113.51"), addr("203.0.113.52")}
			r.must(r.nft.Unban(ctx, lifted))
			r.must(guard.RecordUnbans(r.dir, lifted))

			r.crashAt = "rollback-restored"
			var cut error
			if how == "deadline" {
				r.advance(time.Hour + time.Second)
				cut = r.eng.Watch(ctx, res.Pending.ID)
			} else {
				cut = r.rollback()
			}
			if !IsCrash(cut) {
				t.Fatalf("no crash: %v", cut)
			}
			r.advance(time.Minute)
			// The guard bans 203.0.113.51 again: in the set already (the
			// snapshot's copy), the kernel keeps it; the history has it.
			ban("203.0.113.51", 2*time.Hour, "guard")
			now := r.eng.o.Now()
			_, err = guard.Append(r.dir, map[netip.Addr]*guard.Record{
				addr("203.0.113.51"): {Count: 2, LastBan: now, Until: now.Add(2 * time.Hour), Reason: "guard"},
			}, "", nil)
			r.must(err)
			r.advance(time.Minute)
			r.must(r.do(func(context.Context, *Engine) error { return nil }))
			r.kernelIs("nftables", base)

			got := bansOf(t, r.nft)
			for _, a := range []string{"203.0.113.50", "203.0.113.51"} {
				if _, ok := got[a]; !ok {
					t.Errorf("%s is not banned after the finished rollback: %+v", a, got)
				}
			}
			if b := got["203.0.113.51"]; b.Expires < 2*time.Hour-2*time.Minute {
				t.Errorf("the ban made again after the cut has %v left, want the guard's (%v)", b.Expires, 2*time.Hour-time.Minute)
			}
			if _, ok := got["203.0.113.52"]; ok {
				t.Errorf("the ban lifted while the change waited is back: %+v", got)
			}
		})
	}
}
