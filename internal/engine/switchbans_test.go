package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// A change of backend (the policy's backend line, both directions) carries
// the bans in force over to the new backend's ban sets, with the time they
// have left and their reasons (cleaned); killed at any step (kill -9 at
// each checkpoint of the switch, and again in the undo of it), the next
// command undoes the switch and the old backend holds the bans again; and
// a --confirm switch rolled back (cut after its restore too) puts the bans
// in force back in the old backend: one made while it waited stays, one
// lifted meanwhile stays lifted.
func TestBackendSwitchCarriesBans(t *testing.T) {
	hostile := "guard \"x\" $(id) `y`\n\\z"
	for _, dir := range [][2]string{{"nftables", "iptables"}, {"iptables", "nftables"}} {
		for _, crash := range []string{"", "switch-bans-recorded", "switch-bans", "switch-logins", "switched", "applied",
			"switched+undo-bans-recorded", "switched+undo-applied", "confirm", "confirm+rollback-restored"} {
			t.Run(dir[0]+"-to-"+dir[1]+"/"+crash, func(t *testing.T) {
				r, from, to, oldPolicy := newSwitchRig(t, dir)
				ctx := context.Background()
				addr := netip.MustParseAddr
				r.must(from.Ban(ctx, []ruleset.Ban{
					{Addr: addr("203.0.113.50"), Timeout: time.Hour, Reason: hostile},
					{Addr: addr("2001:db8::50"), Timeout: 30 * time.Minute, Reason: "v6"},
				}))
				r.write("backend " + dir[1] + "\n" + base)
				kills := strings.Split(crash, "+")
				noop := func(context.Context, *Engine) error { return nil }
				// want: the bans the backend in force must hold, with
				// the longest time they may have left.
				want := map[string]time.Duration{"203.0.113.50": time.Hour, "2001:db8::50": 30 * time.Minute}
				holder, other := to, from
				switch {
				case crash == "":
					res, err := r.enable(r.ch(0))
					r.must(err)
					if res.Switched != dir[0] {
						t.Fatalf("not switched: %+v", res)
					}
					r.kernelIs(dir[1], "backend "+dir[1]+"\n"+base)
				case kills[0] == "confirm":
					_, err := r.enable(r.ch(time.Hour))
					r.must(err)
					r.kernelIs(dir[1], "backend "+dir[1]+"\n"+base)
					if got := bansOf(t, to); len(got) != 2 {
						t.Fatalf("the switch did not carry the bans over: %+v", got)
					}
					r.must(to.Ban(ctx, []ruleset.Ban{{Addr: addr("192.0.2.3"), Timeout: 2 * time.Hour, Reason: "meanwhile"}}))
					r.must(to.Unban(ctx, []netip.Addr{addr("203.0.113.50")}))
					delete(want, "203.0.113.50")
					want["192.0.2.3"] = 2 * time.Hour
					rollback := func() error {
						return r.do(func(ctx context.Context, e *Engine) error { _, err := e.Rollback(ctx, "", "test"); return err })
					}
					if len(kills) > 1 {
						r.crashAt = kills[1]
						if err := rollback(); !IsCrash(err) {
							t.Fatalf("no crash at %s: %v", kills[1], err)
						}
						r.advance(10 * time.Minute)
						r.must(r.do(noop))
					} else {
						r.must(rollback())
					}
					r.kernelIs(dir[0], oldPolicy)
					holder, other = from, to
				default:
					r.crashAt = kills[0]
					if _, err := r.enable(r.ch(0)); !IsCrash(err) {
						t.Fatalf("no crash at %s: %v", kills[0], err)
					}
					r.advance(10 * time.Minute)
					if len(kills) > 1 {
						r.crashAt = kills[1]
						if err := r.do(noop); !IsCrash(err) {
							t.Fatalf("no crash at %s in the undo: %v", kills[1], err)
						}
						r.advance(5 * time.Minute)
					}
					r.must(r.do(noop))
					r.kernelIs(dir[0], oldPolicy)
					holder, other = from, to
				}
				got := bansOf(t, holder)
				for a, most := range want {
					b, ok := got[a]
					if !ok {
						t.Errorf("%s is not banned in %s: %+v", a, holder.Name(), got)
						continue
					}
					if left := most - gone[crash]; b.Expires != left {
						t.Errorf("%s: %v left, want %v", a, b.Expires, left)
					}
				}
				if len(got) != len(want) {
					t.Errorf("%s holds %d bans, want %d: %+v", holder.Name(), len(got), len(want), got)
				}
				wantReason := ruleset.CleanReason(hostile)
				if kills[0] == "switch-bans-recorded" || kills[0] == "switch-bans" || kills[0] == "switch-logins" {
					wantReason = hostile // never left the old backend (the fake keeps text as given)
				}
				if b, ok := got["203.0.113.50"]; ok && b.Reason != wantReason {
					t.Errorf("the reason went over as %q, want %q", b.Reason, wantReason)
				}
				if other.Loaded() != "" {
					t.Errorf("%s still holds moat's rules", other.Name())
				}
				if _, err := readState(r.dir, rollbackBansFile); err == nil {
					t.Errorf("%s left behind", rollbackBansFile)
				}
				if _, err := readState(r.dir, IntentFile); err == nil {
					t.Errorf("%s left behind", IntentFile)
				}
			})
		}
	}
}

// gone is the time the bans must have lost: those taken from a record
// (the old backend's rules removed, or a rollback cut after its restore)
// lose the time gone since (the fakes' own bans do not run down).
var gone = map[string]time.Duration{"switched": 10 * time.Minute, "applied": 10 * time.Minute,
	"switched+undo-bans-recorded": 15 * time.Minute, "switched+undo-applied": 15 * time.Minute,
	"confirm+rollback-restored": 10 * time.Minute}

func bansOf(t *testing.T, f *Fake) map[string]ruleset.Ban {
	t.Helper()
	got, err := f.Bans(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]ruleset.Ban{}
	for _, b := range got {
		m[b.Addr.String()] = b
	}
	return m
}

// newSwitchRig is a rig with moat enabled on base under the backend
// dir[0] (the policy it wrote, oldPolicy), and the fakes of dir[0] (from)
// and dir[1] (to), for a change of backend from the one to the other.
func newSwitchRig(t *testing.T, dir [2]string) (r *rig, from, to *Fake, oldPolicy string) {
	t.Helper()
	r = newRig(t)
	fakes := map[string]*Fake{"nftables": r.nft, "iptables": r.ipt}
	from, to = fakes[dir[0]], fakes[dir[1]]
	oldPolicy = "backend " + dir[0] + "\n" + base
	r.write(oldPolicy)
	_, err := r.enable(r.ch(0))
	r.must(err)
	return r, from, to, oldPolicy
}

// The port scan trap bans in the kernel, from the old backend's rules,
// without the bans lock: a trap ban made after the switch read the old
// ban sets (while it recorded them, put them in the new backend, carried
// the logins) was removed with the old rules. The switch reads the old
// sets again just before removing them and carries what landed since;
// a kill after that finds them in pending.bans. Both directions, a ban
// at each checkpoint after the read, one at each of two (a trap kept
// busy), and a kill after the late bans were recorded or after the
// removal.
func TestTrapBanDuringSwitchCarried(t *testing.T) {
	for _, dir := range [][2]string{{"nftables", "iptables"}, {"iptables", "nftables"}} {
		for _, at := range [][]string{{"switch-bans-recorded"}, {"switch-bans"}, {"switch-logins"}, {"switch-bans", "switch-logins"}} {
			for _, kill := range []string{"", "switch-late-bans-recorded", "switched"} {
				name := dir[0] + "-to-" + dir[1] + "/" + strings.Join(at, "+")
				if kill != "" {
					name += "/killed-at-" + kill
				}
				t.Run(name, func(t *testing.T) {
					r, from, to, _ := newSwitchRig(t, dir)
					ctx := context.Background()
					r.must(from.Ban(ctx, []ruleset.Ban{{Addr: netip.MustParseAddr("203.0.113.1"), Timeout: time.Hour, Reason: "before"}}))
					var trapped []string
					step := r.eng.o.Checkpoint
					r.eng.o.Checkpoint = func(s string) error {
						if slices.Contains(at, s) {
							a := fmt.Sprintf("198.51.100.%d", 10+len(trapped))
							trapped = append(trapped, a)
							if err := from.Ban(ctx, []ruleset.Ban{{Addr: netip.MustParseAddr(a), Timeout: time.Hour, Reason: "portscan"}}); err != nil {
								return err
							}
						}
						return step(s)
					}
					r.write("backend " + dir[1] + "\n" + base)
					if kill != "" {
						// Killed once the late bans are recorded, or once
						// the old rules are gone: the repair undoes the
						// switch, the bans go back.
						r.crashAt = kill
						if _, err := r.enable(r.ch(0)); !IsCrash(err) {
							t.Fatalf("no crash: %v", err)
						}
						r.crashAt = ""
						r.eng.o.Checkpoint = step
						r.must(r.do(func(context.Context, *Engine) error { return nil }))
						to = from
					} else {
						_, err := r.enable(r.ch(0))
						r.must(err)
					}
					have := bansOf(t, to)
					for _, a := range append([]string{"203.0.113.1"}, trapped...) {
						if _, ok := have[a]; !ok {
							t.Errorf("%s, banned by the trap during the switch, is not banned in %s: %v", a, to.Name(), have)
						}
					}
				})
			}
		}
	}
}

// The late bans' record (carryLateBans) gives the bans carried before
// the time they have left then, not the time they had at the first read:
// a switch that spent 10 minutes putting bans in the new backend, killed
// after the record, got them back (and the login exemptions) for 10
// minutes more than they had, and one that had run out meanwhile for
// good, taken for a ban without a timeout.
func TestLateBansRecordAged(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.write("backend nftables\n" + base)
	_, err := r.enable(r.ch(0))
	r.must(err)
	r.must(r.nft.Ban(ctx, []ruleset.Ban{
		{Addr: netip.MustParseAddr("203.0.113.1"), Timeout: time.Hour, Reason: "hour"},
		{Addr: netip.MustParseAddr("203.0.113.2"), Timeout: 5 * time.Minute, Reason: "five minutes"},
		{Addr: netip.MustParseAddr("203.0.113.3"), Reason: "permanent"},
	}))
	r.must(r.nft.Protect(ctx, []netip.Addr{netip.MustParseAddr("198.51.100.9")}, time.Hour))
	step := r.eng.o.Checkpoint
	r.eng.o.Checkpoint = func(s string) error {
		if s == "switch-bans" {
			r.now = r.now.Add(10 * time.Minute)
			r.must(r.nft.Ban(ctx, []ruleset.Ban{{Addr: netip.MustParseAddr("198.51.100.10"), Timeout: time.Hour, Reason: "portscan"}}))
		}
		return step(s)
	}
	r.write("backend iptables\n" + base)
	r.crashAt = "switch-late-bans-recorded"
	if _, err := r.enable(r.ch(0)); !IsCrash(err) {
		t.Fatalf("no crash: %v", err)
	}
	r.crashAt = ""
	var rec rollbackBans
	data, err := readState(r.dir, rollbackBansFile)
	r.must(err)
	r.must(json.Unmarshal(data, &rec))
	left := map[string]int64{}
	for _, b := range append(rec.Bans, rec.Logins...) {
		left[b.Addr.String()] = b.LeftMS
	}
	want := map[string]int64{
		"203.0.113.1":   (50 * time.Minute).Milliseconds(),
		"203.0.113.3":   0,
		"198.51.100.10": time.Hour.Milliseconds(),
		"198.51.100.9":  (50 * time.Minute).Milliseconds(),
	}
	if !maps.Equal(left, want) {
		t.Errorf("the late record's time left: %v, want %v", left, want)
	}
}
