package engine

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/guard"
	"github.com/moat-fw/moat/internal/ruleset"
)

// A ban the guard makes in the instant of a change of backend (after the
// switch read the old backend's bans, before it removed its sets) was
// written to the old backend and lost with it. The guard's bans take the
// bans lock shared (guard.Following), the switch holds it exclusive from
// its read to the removal: the ban waits, fails on the removed sets and
// lands in the backend that holds moat's rules now. Also for the
// rollback of a --confirm change of backend (a ban between its read of
// the bans in force and the removal of the unconfirmed backend's sets).
// The guard runs in a goroutine with its own lock file descriptor, as a
// second process would (flock locks are per open file).
func TestBanDuringBackendSwitchNotLost(t *testing.T) {
	for _, dir := range [][2]string{{"nftables", "iptables"}, {"iptables", "nftables"}} {
		for _, at := range []string{"switch-bans-recorded", "switch-bans", "rollback-restored"} {
			t.Run(dir[0]+"-to-"+dir[1]+"/"+at, func(t *testing.T) {
				r := newRig(t)
				fakes := map[string]*Fake{"nftables": r.nft, "iptables": r.ipt}
				from, to := fakes[dir[0]], fakes[dir[1]]
				ctx := context.Background()
				addr := netip.MustParseAddr
				r.write("backend " + dir[0] + "\n" + base)
				_, err := r.enable(r.ch(0))
				r.must(err)
				r.must(from.Ban(ctx, []ruleset.Ban{{Addr: addr("203.0.113.50"), Timeout: time.Hour, Reason: "before"}}))
				holder := to
				g := r.following(from)
				if at == "rollback-restored" {
					holder = from
				}
				done := make(chan error, 1)
				ban := func() {
					go func() {
						done <- g.Ban(ctx, []ruleset.Ban{{Addr: addr("192.0.2.7"), Timeout: time.Hour, Reason: "guard"}})
					}()
					// Time for an unserialized ban to land first.
					select {
					case err := <-done:
						done <- err
					case <-time.After(300 * time.Millisecond):
					}
				}
				r.eng.o.Checkpoint = func(step string) error {
					if step == at {
						ban()
					}
					return nil
				}
				r.write("backend " + dir[1] + "\n" + base)
				if at == "rollback-restored" {
					r.eng.o.Checkpoint = nil
					_, err := r.enable(r.ch(time.Hour))
					r.must(err)
					g = r.following(to)
					r.eng.o.Checkpoint = func(step string) error {
						if step == at {
							ban()
						}
						return nil
					}
					r.must(r.do(func(ctx context.Context, e *Engine) error { _, err := e.Rollback(ctx, "", "test"); return err }))
				} else {
					_, err := r.enable(r.ch(0))
					r.must(err)
				}
				select {
				case err := <-done:
					r.must(err)
				case <-time.After(10 * time.Second):
					t.Fatal("the guard's ban never finished")
				}
				got := bansOf(t, holder)
				for _, a := range []string{"203.0.113.50", "192.0.2.7"} {
					if _, ok := got[a]; !ok {
						t.Errorf("%s is not banned in %s, which holds moat's rules: %+v", a, holder.Name(), got)
					}
				}
				if g.Name() != holder.Name() {
					t.Errorf("the guard bans into %s, want %s", g.Name(), holder.Name())
				}
			})
		}
	}
}

// A ban call stuck holding the bans lock (a kernel call that hangs) does
// not stop a change of backend: it waits a bounded time, says so, and
// goes on as it did before the lock.
func TestStuckBanHolderDoesNotStopSwitch(t *testing.T) {
	r := newRig(t)
	r.eng.bansWait = 200 * time.Millisecond
	r.write("backend nftables\n" + base)
	_, err := r.enable(r.ch(0))
	r.must(err)
	r.must(r.nft.Ban(context.Background(), []ruleset.Ban{{Addr: netip.MustParseAddr("203.0.113.50"), Timeout: time.Hour}}))
	unlock, err := LockBans(context.Background(), r.dir, false)
	r.must(err)
	defer unlock()
	r.write("backend iptables\n" + base)
	res, err := r.enable(r.ch(0))
	r.must(err)
	if res.Switched != "nftables" {
		t.Fatalf("not switched: %+v", res)
	}
	if _, ok := bansOf(t, r.ipt)["203.0.113.50"]; !ok {
		t.Errorf("the bans were not carried over")
	}
	if !strings.Contains(strings.Join(r.warnings, "\n"), "bans lock") {
		t.Errorf("the wait for the lock was not said: %q", r.warnings)
	}
}

// following is the guard's Following over the rig's fakes, starting with
// b: it takes the bans lock with a descriptor of its own, as the guard's
// process would, and finds the fake that holds moat's rules.
func (r *rig) following(b *Fake) *guard.Following {
	current := func(context.Context) (guard.Banner, error) {
		for _, f := range []*Fake{r.nft, r.ipt} {
			if f.Loaded() != "" {
				return f, nil
			}
		}
		return nil, nil
	}
	lock := func(ctx context.Context) (func(), error) { return LockBans(ctx, r.dir, false) }
	return guard.NewFollowing(b, lock, current)
}

// A change that went on without the bans lock (a stuck ban call held it
// past the wait) and then undoes itself (the old backend's removal
// failed) does not wait for the lock a second time: the undo is part of
// the same change, which already said the lock was not taken. It waited
// the whole bound again, doubling the time the firewall stayed between
// two backends.
func TestStuckBanHolderWaitedForOnce(t *testing.T) {
	r := newRig(t)
	r.eng.bansWait = 300 * time.Millisecond
	r.write("backend nftables\n" + base)
	_, err := r.enable(r.ch(0))
	r.must(err)
	unlock, err := LockBans(context.Background(), r.dir, false)
	r.must(err)
	defer unlock()
	removes := 0
	r.nft.Fail = func(op string) error {
		if op == "remove" {
			if removes++; removes == 1 {
				return errors.New("remove refused")
			}
		}
		return nil
	}
	r.write("backend iptables\n" + base)
	if _, err := r.enable(r.ch(0)); err == nil || !strings.Contains(err.Error(), "undone") {
		t.Fatalf("the switch whose old backend's removal failed: %v", err)
	}
	if n := strings.Count(strings.Join(r.warnings, "\n"), "bans lock"); n != 1 {
		t.Errorf("the lock was waited for %d times, want once: %q", n, r.warnings)
	}
}
