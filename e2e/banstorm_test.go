package e2e

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// A ban storm (a commit per ban, one after the other, as the guard adds
// them under attack) does not stop 'moat bans --all': with nftables every
// dump of a 20,000-ban set sees the generation move, and the list failed
// after 3 dumps ("the ruleset changed while it was read"). The list has
// every ban that stood throughout, each address once, and says when it
// merges reads taken while bans changed. Both backends.
func TestBansDuringBanStorm(t *testing.T) {
	eachBackend(t, func(t *testing.T, be string) {
		e, bk := newBanEnv(t, be)
		const n = 20000
		bans := make([]ruleset.Ban, n)
		for i := range bans {
			bans[i] = ruleset.Ban{Addr: banAddr(i), Timeout: time.Hour, Reason: "test: before the storm"}
		}
		e.banDirect(bk, bans)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var storm atomic.Int64
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := n; ctx.Err() == nil; i++ {
				ban := []ruleset.Ban{{Addr: banAddr(i), Timeout: time.Hour, Reason: "test: storm"}}
				if err := e.topo.Server.Do(func() error { return bk.Ban(ctx, ban) }); err != nil && ctx.Err() == nil {
					t.Errorf("storm ban %d: %v", i, err)
					return
				}
				storm.Add(1)
			}
		}()
		stop := sync.OnceFunc(func() { cancel(); wg.Wait() })
		t.Cleanup(stop)
		for range 2 {
			before := storm.Load()
			out, err := e.moat("bans", "--all")
			if err != nil {
				t.Fatalf("moat bans --all during a ban storm: %v\n%.500s", err, out)
			}
			seen := map[netip.Addr]bool{}
			for _, l := range strings.Split(out, "\n") {
				f := strings.Fields(l)
				if len(f) == 0 {
					continue
				}
				a, err := netip.ParseAddr(f[0])
				if err != nil {
					continue
				}
				if seen[a] {
					t.Errorf("%s listed twice", a)
				}
				seen[a] = true
			}
			for _, b := range bans {
				if !seen[b.Addr] {
					t.Errorf("%s (banned before the storm) not listed", b.Addr)
					break
				}
			}
			t.Logf("%d bans listed while %d more were added; merged note: %v", len(seen), storm.Load()-before,
				strings.Contains(out, "merges reads taken meanwhile"))
		}
		stop()
		if storm.Load() == 0 {
			t.Fatal("no ban was added during the list: not a storm")
		}
	})
}
