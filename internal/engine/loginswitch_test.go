package engine

import (
	"cmp"
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// The port scan trap spares an address that logged in within the day
// (the guard puts it in the login sets). A change of backend loaded the
// new backend with empty login sets: the exemptions were lost. They go
// over with the time they have left, also to a policy without the trap
// (the login sets always exist and are kept across applies, as the ban
// sets are: the trap turned on again spares them).
func TestBackendSwitchCarriesLogins(t *testing.T) {
	const trap = "guard portscan ports 5 within 60s bantime 1h\n"
	for _, dir := range [][2]string{{"nftables", "iptables"}, {"iptables", "nftables"}} {
		for _, next := range []string{trap, ""} {
			name := dir[0] + "-to-" + dir[1]
			if next == "" {
				name += "/no-trap-after"
			}
			t.Run(name, func(t *testing.T) {
				r := newRig(t)
				fakes := map[string]*Fake{"nftables": r.nft, "iptables": r.ipt}
				from, to := fakes[dir[0]], fakes[dir[1]]
				ctx := context.Background()
				r.write("backend " + dir[0] + "\n" + base + trap)
				_, err := r.enable(r.ch(0))
				r.must(err)
				admins := []netip.Addr{netip.MustParseAddr("198.51.100.9"), netip.MustParseAddr("2001:db8::9")}
				r.must(from.Protect(ctx, admins, 20*time.Hour))
				r.write("backend " + dir[1] + "\n" + base + next)
				res, err := r.enable(r.ch(0))
				r.must(err)
				if res.Switched != dir[0] {
					t.Fatalf("not switched: %+v", res)
				}
				got, err := to.Logins(ctx)
				r.must(err)
				if len(got) != 2 {
					t.Fatalf("logins in %s after the switch: %+v, want %v", to.Name(), got, admins)
				}
				for i, l := range got {
					if l.Addr != admins[i] || l.Expires != 20*time.Hour {
						t.Errorf("login %d: %s with %s left, want %s with 20h0m0s", i, l.Addr, l.Expires, admins[i])
					}
				}
				if w := strings.Join(r.warnings, "\n"); w != "" {
					t.Errorf("warnings: %s", w)
				}
			})
		}
	}
}

// A login made while a --confirm change waits is exempted by the guard in
// the backend the change loaded. The rollback restored the snapshot of
// before (its login sets as they were then), and the undo of a change of
// backend cut by a kill loaded the old backend with empty login sets:
// the exemption was lost either way. Both directions, and a --confirm
// change that keeps the backend.
func TestRollbackKeepsLogins(t *testing.T) {
	for _, dir := range [][2]string{{"nftables", "iptables"}, {"iptables", "nftables"}, {"nftables", "nftables"}} {
		for _, how := range []string{"rollback", "kill+undo", "kill-before-removal+undo"} {
			if how != "rollback" && dir[0] == dir[1] {
				continue
			}
			t.Run(dir[0]+"-to-"+dir[1]+"/"+how, func(t *testing.T) {
				r := newRig(t)
				fakes := map[string]*Fake{"nftables": r.nft, "iptables": r.ipt}
				from, to := fakes[dir[0]], fakes[dir[1]]
				ctx := context.Background()
				admin := netip.MustParseAddr("2001:db8::9")
				r.write("backend " + dir[0] + "\n" + base)
				_, err := r.enable(r.ch(0))
				r.must(err)
				r.write("backend " + dir[1] + "\n" + base + "allow 80/tcp\n")
				if how == "rollback" {
					_, err = r.enable(r.ch(time.Hour))
					r.must(err)
					r.must(to.Protect(ctx, []netip.Addr{admin}, 20*time.Hour))
					r.must(r.do(func(ctx context.Context, e *Engine) error { _, err := e.Rollback(ctx, "", "test"); return err }))
				} else {
					// The guard exempts the login while the switch runs,
					// in the backend holding moat's rules then.
					at := "switched" // the old backend removed
					if how == "kill-before-removal+undo" {
						at = "switch-logins"
					}
					kill := r.eng.o.Checkpoint
					r.eng.o.Checkpoint = func(step string) error {
						if step == at {
							if err := to.Protect(ctx, []netip.Addr{admin}, 20*time.Hour); err != nil {
								return err
							}
						}
						return kill(step)
					}
					r.crashAt = at
					if _, err := r.enable(r.ch(0)); !IsCrash(err) {
						t.Fatalf("no crash: %v", err)
					}
					r.eng.o.Checkpoint = kill
					r.must(r.do(func(context.Context, *Engine) error { return nil }))
				}
				r.kernelIs(dir[0], "backend "+dir[0]+"\n"+base)
				got, err := from.Logins(ctx)
				r.must(err)
				if len(got) != 1 || got[0].Addr != admin || got[0].Expires != 20*time.Hour {
					t.Errorf("logins in %s after the %s: %+v, want %s with 20h left", from.Name(), how, got, admin)
				}
			})
		}
	}
}

// A login exempted by the guard in the instant of a change of backend
// (after the switch read the old login sets, before it removed them) was
// written to the old backend and lost with it: the guard's Protect, like
// its Ban, takes the bans lock shared, waits for the switch's removal,
// fails on the removed sets and lands in the backend that holds moat's
// rules now. The guard runs in a goroutine with its own lock file
// descriptor, as a second process would.
func TestProtectDuringBackendSwitchNotLost(t *testing.T) {
	for _, dir := range [][2]string{{"nftables", "iptables"}, {"iptables", "nftables"}} {
		t.Run(dir[0]+"-to-"+dir[1], func(t *testing.T) {
			r, from, to, _ := newSwitchRig(t, dir)
			ctx := context.Background()
			g := r.following(from)
			admin := netip.MustParseAddr("198.51.100.9")
			done := make(chan error, 1)
			kill := r.eng.o.Checkpoint
			r.eng.o.Checkpoint = func(step string) error {
				if step == "switch-logins" {
					// The switch read the old login sets and is about
					// to remove them.
					go func() { done <- g.Protect(ctx, []netip.Addr{admin}, 20*time.Hour) }()
					select {
					case err := <-done: // an unserialized call lands at once
						done <- err
					case <-time.After(300 * time.Millisecond):
					}
				}
				return kill(step)
			}
			r.write("backend " + dir[1] + "\n" + base)
			_, err := r.enable(r.ch(0))
			r.must(err)
			select {
			case err := <-done:
				r.must(err)
			case <-time.After(10 * time.Second):
				t.Fatal("the guard's Protect never finished")
			}
			got, err := to.Logins(ctx)
			r.must(err)
			if len(got) != 1 || got[0].Addr != admin {
				t.Errorf("logins in %s, which holds moat's rules: %+v, want %s", to.Name(), got, admin)
			}
		})
	}
}

// A failure to read the login sets (during a change of backend, a
// rollback, the undo of a change cut by a kill) lost the exemptions
// without a word: it is said, naming the backend and the error.
func TestLoginsReadFailureSaid(t *testing.T) {
	broken := errors.New("netlink: no buffer space")
	failLogins := func(op string) error {
		if op == "logins" {
			return broken
		}
		return nil
	}
	for _, how := range []string{"switch", "rollback", "kill+undo"} {
		t.Run(how, func(t *testing.T) {
			r := newRig(t)
			ctx := context.Background()
			admin := netip.MustParseAddr("198.51.100.9")
			r.write("backend nftables\n" + base)
			_, err := r.enable(r.ch(0))
			r.must(err)
			r.must(r.nft.Protect(ctx, []netip.Addr{admin}, 20*time.Hour))
			switch how {
			case "switch":
				r.nft.Fail = failLogins
				r.write("backend iptables\n" + base)
				_, err = r.enable(r.ch(0))
				r.must(err)
			case "rollback":
				r.write("backend nftables\n" + base + "allow 80/tcp\n")
				_, err = r.enable(r.ch(time.Hour))
				r.must(err)
				r.nft.Fail = failLogins
				r.must(r.do(func(ctx context.Context, e *Engine) error { _, err := e.Rollback(ctx, "", "test"); return err }))
			case "kill+undo":
				r.write("backend iptables\n" + base)
				r.crashAt = "switched"
				if _, err := r.enable(r.ch(0)); !IsCrash(err) {
					t.Fatalf("no crash: %v", err)
				}
				r.crashAt = ""
				r.ipt.Fail = failLogins
				r.must(r.do(func(context.Context, *Engine) error { return nil }))
			}
			w := strings.Join(r.warnings, "\n")
			if !strings.Contains(w, "cannot read the port scan trap's login exemptions") || !strings.Contains(w, broken.Error()) {
				t.Errorf("the login sets could not be read, and nothing said so: warnings %q", w)
			}
		})
	}
}

// The login exemptions travel in pending.bans with the bans: a kill -9 of
// a rollback after its restore (which brings back the login sets of
// before), or of the undo of a change of backend after it loaded the old
// backend, loses none. Before, they were read into memory only, and the
// repair found the login sets empty: the admin's exemption was lost.
// Every checkpoint of each path, killed once, then twice in a row.
func TestKillKeepsLogins(t *testing.T) {
	type path struct {
		name, from, to string
		confirm        time.Duration
		steps          []string // killed at, in the command, then in the repair
	}
	paths := []path{
		{"rollback", "iptables", "iptables", time.Hour, []string{"rollback-marked", "rollback-restored", "rollback-kernel", "rollback-records"}},
		{"rollback-switch", "nftables", "iptables", time.Hour, []string{"rollback-marked", "rollback-restored", "rollback-kernel", "rollback-records"}},
		{"switch", "nftables", "iptables", 0, []string{"kernel", "switch-bans-recorded", "switch-bans", "switch-logins", "switched", "undo-bans-recorded", "undo-applied"}},
		{"switch-back", "iptables", "nftables", 0, []string{"kernel", "switch-bans-recorded", "switch-bans", "switch-logins", "switched", "undo-bans-recorded", "undo-applied"}},
	}
	for _, pa := range paths {
		for _, first := range pa.steps {
			for _, second := range append([]string{""}, pa.steps...) {
				if second != "" && !strings.HasPrefix(second, "undo") && !strings.HasPrefix(second, "rollback") {
					continue
				}
				t.Run(pa.name+"/"+first+"/"+cmp.Or(second, "once"), func(t *testing.T) {
					r := newRig(t)
					fakes := map[string]*Fake{"nftables": r.nft, "iptables": r.ipt}
					from, to := fakes[pa.from], fakes[pa.to]
					ctx := context.Background()
					before := netip.MustParseAddr("198.51.100.9") // logged in before the change
					during := netip.MustParseAddr("2001:db8::9")  // while it waited
					r.write("backend " + pa.from + "\n" + base)
					_, err := r.enable(r.ch(0))
					r.must(err)
					r.must(from.Protect(ctx, []netip.Addr{before}, 20*time.Hour))
					// A ban in force: the switch's and the undo's records
					// and their checkpoints are made for it.
					r.must(from.Ban(ctx, []ruleset.Ban{{Addr: netip.MustParseAddr("203.0.113.66"), Timeout: time.Hour}}))
					want := []netip.Addr{before}
					r.write("backend " + pa.to + "\n" + base + "allow 80/tcp\n")
					var cmdErr error
					if pa.confirm > 0 {
						_, err = r.enable(r.ch(pa.confirm))
						r.must(err)
						r.must(to.Protect(ctx, []netip.Addr{during}, 20*time.Hour))
						want = append(want, during)
						r.crashAt = first
						cmdErr = r.do(func(ctx context.Context, e *Engine) error { _, err := e.Rollback(ctx, "", "test"); return err })
					} else {
						r.crashAt = first
						_, cmdErr = r.enable(r.ch(0))
					}
					crashed := IsCrash(cmdErr)
					if cmdErr != nil && !crashed {
						t.Fatal(cmdErr)
					}
					r.crashAt = second
					if err := r.do(func(context.Context, *Engine) error { return nil }); err != nil && !IsCrash(err) {
						t.Fatal(err)
					}
					r.crashAt = ""
					r.must(r.do(func(context.Context, *Engine) error { return nil }))
					// Where moat's rules are now.
					holder := from
					if pa.confirm == 0 && (!crashed || first == "") {
						holder = to
					}
					if on, _ := to.Active(ctx); on && pa.confirm == 0 {
						holder = to
					}
					got, err := holder.Logins(ctx)
					r.must(err)
					have := map[netip.Addr]time.Duration{}
					for _, l := range got {
						have[l.Addr] = l.Expires
					}
					for _, a := range want {
						if left, ok := have[a]; !ok || left < 19*time.Hour {
							t.Errorf("crashed %v: the exemption of %s in %s: %v (present %v), want 20h; logins %+v; warnings %q",
								crashed, a, holder.Name(), left, ok, got, r.warnings)
						}
					}
				})
			}
		}
	}
}
