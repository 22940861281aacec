package guard

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// A holder of the bans lock that never lets go (a change of backend
// stopped, or stuck in a kernel call, between its read of the ban sets
// and their removal) stopped every ban of the guard for good: the guard
// waited for the lock as long as it ran. It waits a bounded time and then
// bans without it, as the change waits for a ban call (engine.holdBans):
// a ban matters more than the instant the lock guards. Ban and Protect.
func TestFollowingDoesNotWaitForeverForTheLock(t *testing.T) {
	b := &protBanner{protected: map[netip.Addr]time.Duration{}}
	held := func(ctx context.Context) (func(), error) {
		<-ctx.Done() // never granted
		return nil, ctx.Err()
	}
	g := NewFollowing(b, held, func(context.Context) (Banner, error) { return b, nil })
	g.Wait = 100 * time.Millisecond
	var wmu sync.Mutex
	var warned []string
	g.Warn = func(err error) { wmu.Lock(); warned = append(warned, err.Error()); wmu.Unlock() }
	a := netip.MustParseAddr("203.0.113.9")
	done := make(chan error, 2)
	go func() { done <- g.Ban(context.Background(), []ruleset.Ban{{Addr: a, Timeout: time.Hour}}) }()
	go func() { done <- g.Protect(context.Background(), []netip.Addr{a}, time.Hour) }()
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the guard still waits for a lock that is never released")
		}
	}
	if bans, _ := b.Bans(context.Background()); len(bans) != 1 || bans[0].Addr != a {
		t.Errorf("bans: %+v", bans)
	}
	if got := b.got(); got[a] != time.Hour {
		t.Errorf("protected: %v", got)
	}
	// Going on without the lock is said: a change of backend at that
	// instant may lose the ban (the change says so on its side too).
	wmu.Lock()
	if len(warned) != 2 || !strings.Contains(warned[0], "going on without it") || !strings.Contains(warned[0], "may lose this ban") {
		t.Errorf("warnings: %q, want one per call going on without the lock", warned)
	}
	wmu.Unlock()
	// The guard's own end still ends the wait with its error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.Ban(ctx, []ruleset.Ban{{Addr: a, Timeout: time.Hour}}); err == nil {
		t.Errorf("a ban with its context ended went on")
	}
}
