package engine

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// A --confirm change of backend whose snapshot is unusable (damaged on
// disk) is rolled back by loading the policy applied before (or, when
// that fails too, the ruleset saved for boot, or the fail-closed one):
// that fallback used to load the old backend with empty ban sets and
// remove the new backend's rules with every ban in force. The bans in
// force go over as a normal rollback carries them (one made while the
// change waited stays, one lifted meanwhile stays lifted), for a rollback
// asked for, one at the deadline (the watchdog), and one cut by kill -9
// after the fallback loaded (the next command finishes it from
// pending.bans). Both directions.
func TestRollbackFallbackCarriesBans(t *testing.T) {
	for _, dir := range [][2]string{{"nftables", "iptables"}, {"iptables", "nftables"}} {
		for _, how := range []string{"rollback", "deadline", "kill-after-load", "saved", "fail-closed"} {
			t.Run(dir[0]+"-to-"+dir[1]+"/"+how, func(t *testing.T) {
				r, from, to, oldPolicy := newSwitchRig(t, dir)
				ctx := context.Background()
				addr := netip.MustParseAddr
				r.must(from.Ban(ctx, []ruleset.Ban{
					{Addr: addr("203.0.113.50"), Timeout: time.Hour, Reason: "before"},
					{Addr: addr("2001:db8::50"), Timeout: 30 * time.Minute, Reason: "v6"},
					{Addr: addr("203.0.113.51"), Timeout: time.Hour, Reason: "lifted meanwhile"},
				}))
				r.write("backend " + dir[1] + "\n" + base)
				res, err := r.enable(r.ch(time.Hour))
				r.must(err)
				r.kernelIs(dir[1], "backend "+dir[1]+"\n"+base)
				r.must(to.Ban(ctx, []ruleset.Ban{{Addr: addr("192.0.2.3"), Timeout: 2 * time.Hour, Reason: "meanwhile"}}))
				r.must(to.Unban(ctx, []netip.Addr{addr("203.0.113.51")}))
				r.must(os.WriteFile(filepath.Join(r.dir, snapshotFile), []byte("garbage"), 0o600))
				want := map[string]time.Duration{"203.0.113.50": time.Hour, "2001:db8::50": 30 * time.Minute, "192.0.2.3": 2 * time.Hour}
				rollback := r.rollback
				holder, other := from, to
				switch how {
				case "rollback":
					r.must(rollback())
				case "deadline":
					r.expire(res.Pending)
				case "kill-after-load":
					r.crashAt = "rollback-fallback-loaded"
					if err := rollback(); !IsCrash(err) {
						t.Fatalf("no crash: %v", err)
					}
					r.advance(10 * time.Minute)
					r.must(r.do(func(context.Context, *Engine) error { return nil }))
					for a, d := range want {
						want[a] = d - 10*time.Minute
					}
				case "saved", "fail-closed":
					// The policy of before fails to load once: the saved
					// ruleset is next; with it broken, the fail-closed one.
					if how == "fail-closed" {
						r.must(os.WriteFile(filepath.Join(r.dir, savedFile), []byte("{"), 0o600))
					}
					applies := 0
					from.Fail = func(op string) error {
						if op == "apply" {
							if applies++; applies == 1 {
								return os.ErrInvalid
							}
						}
						return nil
					}
					r.must(rollback())
					from.Fail = nil
					if how == "fail-closed" {
						// auto: the rig detects nftables.
						holder, other = r.nft, r.ipt
					}
				}
				if how != "fail-closed" {
					r.kernelIs(dir[0], oldPolicy)
				}
				if holder == to {
					other = from
				}
				got := bansOf(t, holder)
				for a, left := range want {
					b, ok := got[a]
					if !ok {
						t.Errorf("%s is not banned in %s after the rollback: %+v", a, holder.Name(), got)
						continue
					}
					if b.Expires != left {
						t.Errorf("%s: %v left, want %v", a, b.Expires, left)
					}
				}
				if _, ok := got["203.0.113.51"]; ok {
					t.Errorf("the ban lifted meanwhile is back: %+v", got)
				}
				if holder != other && other.Loaded() != "" {
					t.Errorf("%s still holds moat's rules", other.Name())
				}
				if _, err := readState(r.dir, rollbackBansFile); err == nil {
					t.Errorf("%s left behind", rollbackBansFile)
				}
			})
		}
	}
}
