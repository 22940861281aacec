package cli

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/setstore"
	"github.com/moat-fw/moat/internal/statedir"
)

// A rule added by hand to moat's table after the generations proved the
// table to be what moat committed, but before the fingerprint was read
// from the kernel, is in that fingerprint: it must not be recorded, or the
// next command, finding the same generation (or the same fingerprint),
// would take the hand-made rule for moat's.
func TestFingerprintNotRecordedAfterHandChange(t *testing.T) {
	needRootAnd(t, "nft")
	ns := labtest.NS(t, "moatfp")
	p, err := policy.NewDocument("moat.conf", []byte("default deny incoming\nallow 22/tcp\n")).Policy(policy.ParseServices(nil))
	if err != nil {
		t.Fatal(err)
	}
	rs := ruleset.Compile(p)
	dir := t.TempDir()
	a := &app{stateDir: dir, out: io.Discard, errOut: io.Discard, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	st := appliedState{Known: true, Backend: "nftables", Policy: "x", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	b := &nft.Backend{Run: execrun.Exec, Read: nft.NetlinkReader{}, Netlink: true}
	fingerprintHook = func() {
		if _, err := execrun.Exec(context.Background(), []byte("add rule inet moat input tcp dport 6000 accept\n"), "nft", "-f", "-"); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { fingerprintHook = nil })
	err = ns.Do(func() error {
		if err := b.Apply(context.Background(), rs); err != nil { // a whole load
			return err
		}
		a.recordFingerprint(context.Background(), b, st, verifiedGen{})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := statedir.ReadFile(dir, fingerprintFile); err == nil {
		t.Error("a fingerprint read after a hand change was recorded")
	}
}

// A first enable (a whole rewrite of moat's table from an empty kernel)
// records the fingerprint from what it loaded, without reading its policy
// sets back (the dump was 30% of an enable at 100,000 networks), and that
// fingerprint is the one the kernel's table gives. With a set element
// added by hand right after the commit, the generations no longer prove
// the table moat's: the sets are read back, and the hand-made element is
// drift, so nothing is recorded.
func TestWholeCommitFingerprintFromLoaded(t *testing.T) {
	for _, hand := range []bool{false, true} {
		r := newNftRig(t, "default deny incoming\nallow 22/tcp\ndeny from 192.0.2.7\ndeny from 198.51.100.0/24\ndeny from 2001:db8::/64\n")
		ns, rs, dir, a, st, b, logs := r.ns, r.rs, r.dir, r.a, r.st, r.b, r.logs
		var want string
		err := ns.Do(func() error {
			if err := b.Apply(context.Background(), rs); err != nil {
				return err
			}
			if !b.LastCommitWhole() {
				t.Error("the first apply was not a whole rewrite")
			}
			if hand {
				set := ""
				for _, s := range rs.Sets {
					if strings.Contains(s.Name, "deny_src4") && len(s.Entries) > 0 {
						set = s.Name
					}
				}
				if set == "" {
					t.Fatalf("no IPv4 deny set in %+v", rs.Sets)
				}
				if _, err := execrun.Exec(context.Background(), nil, "nft", "add", "element", "inet", "moat", set, "{ 192.0.2.2 }"); err != nil {
					return err
				}
			}
			a.recordFingerprint(context.Background(), b, st, verifiedGen{})
			k, err := a.kernelFingerprint(context.Background(), b)
			want = k.Fingerprint
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		data, err := statedir.ReadFile(dir, fingerprintFile)
		if hand {
			if err == nil {
				t.Errorf("a fingerprint was recorded with an element added by hand after the commit: %s", data)
			}
			continue
		}
		if err != nil {
			t.Fatalf("no fingerprint recorded: %v", err)
		}
		var rec kernelRecord
		if err := json.Unmarshal(data, &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Fingerprint != want || want == "" {
			t.Errorf("recorded fingerprint %q, the kernel's table gives %q", rec.Fingerprint, want)
		}
		if !strings.Contains(logs.String(), "taken from what moat loaded") {
			t.Errorf("the fingerprint after a whole commit was read back from the kernel:\n%s", logs.String())
		}
	}
}

// The fingerprint of what moat loaded is read back right after the commit
// (AfterCommit), while the engine's records are synced. It is what the
// kernel's table gives. A rule added by hand after it was read and before
// it is recorded moved the generation: it is not taken then, the
// generations no longer prove the table moat's, and nothing is recorded.
func TestAheadFingerprint(t *testing.T) {
	for _, hand := range []bool{false, true} {
		r := newNftRig(t, "default deny incoming\nallow 22/tcp\ndeny from 192.0.2.7\n")
		ns, rs, dir, a, st, b := r.ns, r.rs, r.dir, r.a, r.st, r.b
		b.AfterCommit = func(ctx context.Context) { a.startAhead(ctx, b) }
		var want string
		err := ns.Do(func() error {
			if err := b.Apply(context.Background(), rs); err != nil { // a whole load
				return err
			}
			ah := a.ahead
			if ah == nil {
				t.Fatal("no fingerprint taken after the commit")
			}
			k, err := a.kernelFingerprint(context.Background(), b)
			if err != nil {
				return err
			}
			if !ah.ok || ah.fp != k.Fingerprint {
				t.Errorf("fingerprint read ahead: %q (ok %v), the kernel's table gives %q", ah.fp, ah.ok, k.Fingerprint)
			}
			want = k.Fingerprint
			if hand {
				if _, err := execrun.Exec(context.Background(), []byte("add rule inet moat input tcp dport 6000 accept\n"), "nft", "-f", "-"); err != nil {
					return err
				}
			}
			a.recordFingerprint(context.Background(), b, st, verifiedGen{})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		data, err := statedir.ReadFile(dir, fingerprintFile)
		if hand {
			if err == nil {
				t.Errorf("a fingerprint was recorded with a rule added by hand after it was read: %s", data)
			}
			continue
		}
		var rec kernelRecord
		if err != nil || json.Unmarshal(data, &rec) != nil {
			t.Fatalf("no fingerprint recorded: %v", err)
		}
		if rec.Fingerprint != want {
			t.Errorf("recorded fingerprint %q, the kernel's table gives %q", rec.Fingerprint, want)
		}
	}
}

// A rule added by hand between moat's commit and the fingerprint read
// right after it (AfterCommit) moves the generation past the commit's:
// the fingerprint read then is not taken for moat's, and nothing is
// recorded.
func TestAheadFingerprintAfterHandChange(t *testing.T) {
	r := newNftRig(t, "default deny incoming\nallow 22/tcp\ndeny from 192.0.2.7\n")
	ns, rs, dir, a, st, b := r.ns, r.rs, r.dir, r.a, r.st, r.b
	b.AfterCommit = func(ctx context.Context) {
		if _, err := execrun.Exec(ctx, []byte("add rule inet moat input tcp dport 6000 accept\n"), "nft", "-f", "-"); err != nil {
			t.Error(err)
		}
		a.startAhead(ctx, b)
	}
	err := ns.Do(func() error {
		if err := b.Apply(context.Background(), rs); err != nil { // a whole load
			return err
		}
		if a.ahead == nil || a.ahead.ok {
			t.Errorf("the fingerprint read after a hand change was taken for moat's: %+v", a.ahead)
		}
		a.recordFingerprint(context.Background(), b, st, verifiedGen{})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if data, err := statedir.ReadFile(dir, fingerprintFile); err == nil {
		t.Errorf("a fingerprint was recorded with a rule added by hand before it was read: %s", data)
	}
}

// nftRig is a network namespace of the test's, a policy compiled from
// text, a state directory and an app and nftables backend over them, as
// the fingerprint tests use them.
type nftRig struct {
	ns   *lab.NS
	rs   *ruleset.Ruleset
	dir  string
	logs *strings.Builder
	a    *app
	st   appliedState
	b    *nft.Backend
}

func newNftRig(t *testing.T, text string) *nftRig {
	t.Helper()
	needRootAnd(t, "nft")
	p, err := policy.NewDocument("moat.conf", []byte(text)).Policy(policy.ParseServices(nil))
	if err != nil {
		t.Fatal(err)
	}
	r := &nftRig{ns: labtest.NS(t, "moatfp"), rs: ruleset.Compile(p), dir: t.TempDir(), logs: &strings.Builder{}}
	r.a = &app{stateDir: r.dir, out: io.Discard, errOut: io.Discard, log: slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	r.st = appliedState{Known: true, Backend: "nftables", Policy: text, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	r.b = &nft.Backend{Run: execrun.Exec, Read: nft.NetlinkReader{}, Netlink: true, Elements: setstore.Dir{Path: r.dir, Prefix: "nft-set."}}
	return r
}
