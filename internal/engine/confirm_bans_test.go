package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/blocklist"
	"github.com/moat-fw/moat/internal/ruleset"
)

// A rollback undoes the unconfirmed change, not the bans made or lifted
// while it waited: the ban sets hold the bans in force just before the
// rollback, with the time they had left (the snapshot's are those of its
// time). Cut short (kill -9) after the snapshot is restored, the next
// rollback still puts back the bans in force when the first began, not
// the snapshot's.
func TestRollbackKeepsBansInForce(t *testing.T) {
	for _, crash := range []string{"", "rollback-restored"} {
		t.Run("crash-"+crash, func(t *testing.T) {
			r, ban := newBanRig(t, false)
			ctx := context.Background()
			addr := netip.MustParseAddr
			ban("203.0.113.50", time.Hour, "before")
			ban("203.0.113.51", time.Hour, "lifted meanwhile")
			ban("2001:db8::52", 30*time.Minute, "before, banned again meanwhile")
			_, err := r.add(r.ch(time.Hour), "allow 443/tcp")
			r.must(err)
			ban("192.0.2.3", 2*time.Hour, "meanwhile")
			r.must(r.nft.Unban(ctx, []netip.Addr{addr("203.0.113.51")}))
			r.must(r.nft.Ban(ctx, []ruleset.Ban{{Addr: addr("2001:db8::52"), Timeout: 3 * time.Hour, Reason: "again", Replace: true}}))

			rollback := r.rollback
			if crash != "" {
				r.crashAt = crash
				if err := rollback(); !IsCrash(err) {
					t.Fatalf("no crash at %s: %v", crash, err)
				}
				r.advance(10 * time.Minute)
				// The next command finishes the rollback.
				r.must(r.do(func(context.Context, *Engine) error { return nil }))
			} else {
				r.must(rollback())
			}
			r.kernelIs("nftables", base)

			have := bansOf(t, r.nft)
			want := map[string]time.Duration{"203.0.113.50": time.Hour, "192.0.2.3": 2 * time.Hour, "2001:db8::52": 3 * time.Hour}
			if crash != "" {
				// The bans recorded when the first rollback began, with
				// the 10 minutes gone since taken off.
				for a, d := range want {
					want[a] = d - 10*time.Minute
				}
			}
			for a, left := range want {
				b, ok := have[a]
				if !ok {
					t.Errorf("%s is not banned after the rollback: %+v", a, have)
					continue
				}
				if b.Expires != left {
					t.Errorf("%s: %v left, want %v", a, b.Expires, left)
				}
			}
			if _, ok := have["203.0.113.51"]; ok {
				t.Errorf("the ban lifted meanwhile is back: %+v", have)
			}
			if b := have["192.0.2.3"]; b.Reason != "meanwhile" {
				t.Errorf("the ban made meanwhile lost its reason: %+v", b)
			}
			if _, err := readState(r.dir, rollbackBansFile); err == nil {
				t.Errorf("%s left behind after the rollback", rollbackBansFile)
			}
		})
	}
}

// A rollback cut short after the restore leaves the kernel with the
// snapshot's ban sets and the guard running: bans it makes before the
// rollback is finished (by the next command, the watchdog, a boot) are in
// force and must stay, as bans made while the change waited do; a ban
// lifted while the change waited stays lifted. The finished rollback
// restores the snapshot once more: it read only its record of the bans
// in force when it began, and lost the bans made since the cut.
func TestRollbackCutKeepsBansMadeAfterTheCut(t *testing.T) {
	r, ban := newBanRig(t, false)
	banAroundChange(r, ban)

	r.crashAt = "rollback-restored"
	if err := r.rollback(); !IsCrash(err) {
		t.Fatalf("no crash: %v", err)
	}
	r.advance(time.Minute)
	ban("198.51.100.9", time.Hour, "after the cut")
	ban("2001:db8::9", time.Hour, "after the cut")
	r.must(r.do(func(context.Context, *Engine) error { return nil }))
	r.kernelIs("nftables", base)

	have := bansOf(t, r.nft)
	for _, a := range []string{"203.0.113.50", "192.0.2.3", "198.51.100.9", "2001:db8::9"} {
		if _, ok := have[a]; !ok {
			t.Errorf("%s is not banned after the finished rollback: %+v", a, have)
		}
	}
	if b := have["198.51.100.9"]; b.Reason != "after the cut" || b.Expires != time.Hour {
		t.Errorf("the ban made after the cut: %+v", b)
	}
	if _, ok := have["203.0.113.51"]; ok {
		t.Errorf("the ban lifted while the change waited is back: %+v", have)
	}
}

// A backend that can restore the snapshot leaving its ban sets as they
// are (nftables, when the change kept their definitions) is asked to:
// the bans made and lifted while the change waited are then as they are,
// with their own time left, and none is read or loaded again (with
// 200,000 bans that took seconds). Cut by kill -9 at any step, the next
// command finishes it the same way. When its restore fails, the rollback
// restores the snapshot whole and puts back the bans in force.
func TestRollbackKeepsBanSets(t *testing.T) {
	for _, crash := range []string{"", "rollback-marked", "rollback-restored", "rollback-kernel", "rollback-records", "keep-fails"} {
		t.Run("crash-"+crash, func(t *testing.T) {
			r, ban := newBanRig(t, true)
			banAroundChange(r, ban)

			rollback := r.rollback
			r.nft.Calls = nil
			switch crash {
			case "":
				r.must(rollback())
			case "keep-fails":
				r.nft.Fail = func(op string) error {
					if op == "restore-keeping-bans" {
						return errors.New("refused")
					}
					return nil
				}
				r.must(rollback())
			default:
				r.crashAt = crash
				if err := rollback(); !IsCrash(err) {
					t.Fatalf("no crash at %s: %v", crash, err)
				}
				r.crashAt = ""
				r.must(r.do(func(context.Context, *Engine) error { return nil }))
			}
			r.kernelIs("nftables", base)
			if crash != "keep-fails" {
				for _, c := range r.nft.Calls {
					if c == "bans" || c == "ban" || c == "restore" {
						t.Errorf("the rollback called %q: the ban sets were read or loaded again (calls %v)", c, r.nft.Calls)
					}
				}
			}
			have := bansOf(t, r.nft)
			for a, left := range map[string]time.Duration{"203.0.113.50": time.Hour, "192.0.2.3": 2 * time.Hour} {
				if b, ok := have[a]; !ok || b.Expires != left {
					t.Errorf("%s after the rollback: %+v (want %v left)", a, b, left)
				}
			}
			if _, ok := have["203.0.113.51"]; ok {
				t.Errorf("the ban lifted meanwhile is back: %+v", have)
			}
			if _, err := LoadPending(r.dir); !errors.Is(err, ErrNoPending) {
				t.Errorf("pending after the rollback: %v", err)
			}
		})
	}
}

// A rollback puts back the saved copies of file blocklists as they were
// when the unconfirmed change was applied: that apply read the list files
// again and saved what it loaded, the rollback restores the kernel's
// older sets, and a saved copy left newer than the kernel made status say
// "changed outside moat" and an update compare against what the kernel
// does not hold. A cut after the restore (kill -9) still restores them.
func TestRollbackRestoresFileListCopies(t *testing.T) {
	for _, c := range []struct {
		crash string
		keep  bool
	}{{"", false}, {"rollback-restored", false}, {"rollback-kernel", false}, {"", true}, {"rollback-restored", true}} {
		crash := c.crash
		t.Run(fmt.Sprintf("crash-%s-keep-%v", crash, c.keep), func(t *testing.T) {
			r := newRig(t)
			r.nft.KeepBanSets = c.keep
			list := filepath.Join(t.TempDir(), "local.netset")
			r.must(os.WriteFile(list, []byte("192.0.2.0/24\n"), 0o644))
			r.write(base + "blocklist local file " + list + "\n")
			_, err := r.enable(r.ch(0))
			r.must(err)
			r.must(os.WriteFile(list, []byte("198.51.100.0/24\n"), 0o644))
			_, err = r.add(r.ch(time.Hour), "allow 443/tcp")
			r.must(err)
			if got := r.setPrefixes(r.nft, "bl4_local"); len(got) != 1 || got[0].String() != "198.51.100.0/24" {
				t.Fatalf("the change did not load the edited list: %v", got)
			}
			r.must(os.WriteFile(list, []byte("203.0.113.0/24\n"), 0o644))
			rollback := r.rollback
			if crash != "" {
				r.crashAt = crash
				if err := rollback(); !IsCrash(err) {
					t.Fatalf("no crash at %s: %v", crash, err)
				}
				r.must(r.do(func(context.Context, *Engine) error { return nil }))
			} else {
				r.must(rollback())
			}
			if got := r.setPrefixes(r.nft, "bl4_local"); len(got) != 1 || got[0].String() != "192.0.2.0/24" {
				t.Fatalf("the rollback left bl4_local = %v", got)
			}
			m, err := blocklist.ReadMeta(r.dir, "local")
			r.must(err)
			l, ok, err := blocklist.ReadCache(r.dir, "local", m)
			if err != nil || !ok {
				t.Fatalf("saved copy: %v %v", ok, err)
			}
			if got := l.Prefixes(); len(got) != 1 || got[0].String() != "192.0.2.0/24" {
				t.Errorf("the saved copy after the rollback holds %v, the kernel 192.0.2.0/24", got)
			}
		})
	}
}

// pending.bans is the only record of the bans made while a change waited
// once its rollback was cut after the restore. A broken record cannot
// give them back: the rollback still finishes, keeps the bans the kernel
// holds, and says loudly that the record's are lost. A record whose time
// left is absurd (hostile, or a broken write) neither overflows nor loses
// the ban: it is bounded by moat's longest duration.
func TestRollbackCutWithBrokenBansRecord(t *testing.T) {
	for _, tc := range []struct {
		name, record string
	}{
		{"corrupt", "{\"id\": \"x\", \"bans\": [ {\"addr\": \"192.0.2."},
		{"huge-left", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := enabledRig(t)
			ctx := context.Background()
			_, err := r.add(r.ch(time.Hour), "allow 443/tcp")
			r.must(err)
			r.must(r.nft.Ban(ctx, []ruleset.Ban{{Addr: netip.MustParseAddr("192.0.2.3"), Timeout: time.Hour, Reason: "meanwhile"}}))
			r.crashAt = "rollback-restored"
			if err := r.rollback(); !IsCrash(err) {
				t.Fatalf("no crash: %v", err)
			}
			path := filepath.Join(r.dir, rollbackBansFile)
			record := tc.record
			if record == "" {
				p, err := LoadPending(r.dir)
				r.must(err)
				record = fmt.Sprintf(`{"id": %q, "taken": %q, "bans": [{"addr": "192.0.2.3", "left_ms": 9223372036854775807, "reason": "huge"}]}`,
					p.ID, r.now.Format(time.RFC3339Nano))
			}
			r.must(os.WriteFile(path, []byte(record), 0o600))
			r.must(r.nft.Ban(ctx, []ruleset.Ban{{Addr: netip.MustParseAddr("198.51.100.9"), Timeout: time.Hour, Reason: "after the cut"}}))
			r.warnings = nil
			r.must(r.do(func(context.Context, *Engine) error { return nil }))
			r.kernelIs("nftables", base)
			have := bansOf(t, r.nft)
			if _, ok := have["198.51.100.9"]; !ok {
				t.Errorf("the ban in the kernel is gone: %+v", have)
			}
			warned := slices.ContainsFunc(r.warnings, func(w string) bool { return strings.Contains(w, "pending.bans is unreadable") })
			switch tc.name {
			case "corrupt":
				// Once: the rollback reads the record for the bans and
				// for the login exemptions.
				if n := len(slices.DeleteFunc(slices.Clone(r.warnings), func(w string) bool { return !strings.Contains(w, "pending.bans is unreadable") })); n != 1 {
					t.Errorf("the lost record was reported %d times, want once: %q", n, r.warnings)
				}
			case "huge-left":
				if warned {
					t.Errorf("a readable record reported lost: %q", r.warnings)
				}
				if b, ok := have["192.0.2.3"]; !ok || b.Expires != 100*365*24*time.Hour {
					t.Errorf("the recorded ban with a huge time left: %+v (all: %+v)", b, have)
				}
			}
		})
	}
}

// newBanRig is a rig with moat enabled on base, the nftables fake keeping
// its ban sets through a restore when keep is set, and a function that
// bans an address (its time left and reason) in that fake.
func newBanRig(t *testing.T, keep bool) (*rig, func(a string, d time.Duration, why string)) {
	t.Helper()
	r := newRig(t)
	r.nft.KeepBanSets = keep
	r.write(base)
	_, err := r.enable(r.ch(0))
	r.must(err)
	return r, func(a string, d time.Duration, why string) {
		r.must(r.nft.Ban(context.Background(), []ruleset.Ban{{Addr: netip.MustParseAddr(a), Timeout: d, Reason: why}}))
	}
}

// banAroundChange bans 203.0.113.50 and 203.0.113.51 (an hour each),
// applies a change waiting an hour for its confirmation, then, while it
// waits, bans 192.0.2.3 (two hours) and lifts the ban of 203.0.113.51.
func banAroundChange(r *rig, ban func(a string, d time.Duration, why string)) {
	ban("203.0.113.50", time.Hour, "before")
	ban("203.0.113.51", time.Hour, "lifted meanwhile")
	_, err := r.add(r.ch(time.Hour), "allow 443/tcp")
	r.must(err)
	ban("192.0.2.3", 2*time.Hour, "meanwhile")
	r.must(r.nft.Unban(context.Background(), []netip.Addr{netip.MustParseAddr("203.0.113.51")}))
}

// rollback asks for a rollback of the change waiting, as 'moat rollback'.
func (r *rig) rollback() error {
	return r.do(func(ctx context.Context, e *Engine) error { _, err := e.Rollback(ctx, "", "test"); return err })
}
