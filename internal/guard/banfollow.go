package guard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// Following is the guard's Banner while moat's rules may move to another
// backend (a change of backend: nftables <-> iptables) under it. Each
// ban is made holding the bans lock shared (Lock): the change of backend
// holds it exclusive from its read of the old ban sets to their removal,
// so a ban lands either before that read (and is carried over) or after
// the old sets went. Then the ban call fails, and the backend holding
// moat's rules now (Current) takes it. Before, the guard kept writing to
// the backend it found when it started: a ban made in the instant of a
// switch was lost, and every later one failed until a restart.
type Following struct {
	// Lock takes the bans lock shared; an error lets the ban go on
	// without it (a ban matters more than the instant it guards).
	Lock func(ctx context.Context) (unlock func(), err error)
	// Current finds the backend that holds moat's rules.
	Current func(ctx context.Context) (Banner, error)
	// Wait bounds the wait for the lock (0: LockWait). A holder that
	// never lets go (a change of backend stopped, or stuck in a kernel
	// call) must not stop the guard's bans for good.
	Wait time.Duration
	// Warn, when set, is told each time a call goes on without the lock
	// (the file refused, the wait over): a change of backend in that
	// instant may lose the ban or exemption, and the guard's log says so.
	Warn func(err error)

	mu sync.Mutex
	b  Banner
}

// NewFollowing starts with b, the backend found at the start.
func NewFollowing(b Banner, lock func(context.Context) (func(), error), current func(context.Context) (Banner, error)) *Following {
	return &Following{Lock: lock, Current: current, b: b}
}

func (f *Following) backend() Banner {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.b
}

// again finds the backend holding moat's rules after a call to b failed
// (nil: the same one, or none found).
func (f *Following) again(ctx context.Context, b Banner) Banner {
	nb, err := f.Current(ctx)
	if err != nil || nb == nil || sameBackend(nb, b) {
		return nil
	}
	f.mu.Lock()
	f.b = nb
	f.mu.Unlock()
	return nb
}

func sameBackend(a, b Banner) bool {
	type named interface{ Name() string }
	na, ok1 := a.(named)
	nb, ok2 := b.(named)
	if ok1 && ok2 {
		return na.Name() == nb.Name()
	}
	return a == b
}

// Name is the name of the backend banned into now.
func (f *Following) Name() string {
	if n, ok := f.backend().(interface{ Name() string }); ok {
		return n.Name()
	}
	return ""
}

// LockWait is how long a ban waits for the bans lock: the change of
// backend waits as long for a ban call (engine.holdBans). It must stay
// below what moat-guard.service's watchdog (WatchdogSec=30s) lets the
// main loop block: no ping after 15 s without progress, and a kill 30 s
// after the last ping, so at least 35 s into the wait.
const LockWait = 30 * time.Second

// lock takes the bans lock shared for one call that writes the sets a
// change of backend carries over. Without it (the file refused, a holder
// that kept it longer than Wait) the call goes on; an error only when ctx
// ended.
func (f *Following) lock(ctx context.Context) (unlock func(), err error) {
	if f.Lock == nil {
		return func() {}, nil
	}
	wait := f.Wait
	if wait <= 0 {
		wait = LockWait
	}
	lctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	unlock, err = f.Lock(lctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		if f.Warn != nil {
			f.Warn(fmt.Errorf("%w (waited up to %s): going on without it; a change of backend at this instant may lose this ban or exemption (the guard makes it again when the address fails maxretry times again, or logs in again)", err, wait))
		}
		return func() {}, nil
	}
	return unlock, nil
}

// Ban bans into the backend holding moat's rules, under the bans lock.
func (f *Following) Ban(ctx context.Context, bans []ruleset.Ban) error {
	unlock, err := f.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	b := f.backend()
	err = b.Ban(ctx, bans)
	if err == nil || ctx.Err() != nil {
		return err
	}
	if nb := f.again(ctx, b); nb != nil {
		return nb.Ban(ctx, bans)
	}
	return err
}

// Bans lists the bans of the backend holding moat's rules.
func (f *Following) Bans(ctx context.Context) ([]ruleset.Ban, error) {
	b := f.backend()
	bans, err := b.Bans(ctx)
	if err != nil && ctx.Err() == nil {
		if nb := f.again(ctx, b); nb != nil {
			return nb.Bans(ctx)
		}
	}
	return bans, err
}

var errNoCheck = errors.New("the backend cannot look up one ban")

// Banned asks the backend holding moat's rules whether a is banned.
func (f *Following) Banned(ctx context.Context, a netip.Addr) (bool, error) {
	call := func(b Banner) (bool, error) {
		if bc, ok := b.(BanChecker); ok {
			return bc.Banned(ctx, a)
		}
		return false, errNoCheck
	}
	b := f.backend()
	banned, err := call(b)
	if err != nil && ctx.Err() == nil {
		if nb := f.again(ctx, b); nb != nil {
			return call(nb)
		}
	}
	return banned, err
}

// Protect exempts logins from the port scan trap of the backend holding
// moat's rules, under the bans lock as a ban: a change of backend carries
// the login sets over, and an exemption written to the old backend after
// its read would be lost with it.
func (f *Following) Protect(ctx context.Context, addrs []netip.Addr, ttl time.Duration) error {
	unlock, err := f.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	call := func(b Banner) error {
		if p, ok := b.(LoginProtector); ok {
			return p.Protect(ctx, addrs, ttl)
		}
		return nil
	}
	b := f.backend()
	err = call(b)
	if err != nil && ctx.Err() == nil {
		if nb := f.again(ctx, b); nb != nil {
			return call(nb)
		}
	}
	return err
}
