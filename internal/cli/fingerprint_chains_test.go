package cli

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/drift"
	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/statedir"
)

// The fingerprint after an edit reads back only the chains the edit's
// netlink patch wrote (and moat_sync) and takes the others from the
// record the command verified: it is the fingerprint a whole read of
// the kernel gives, edit after edit (a rule added, deleted, a default
// changed: a base chain's policy). A rule added by hand to a chain the
// edit does not write, between the verification and the commit, moves
// the generation: nothing is taken from the record, and the hand rule
// is found (drift), never recorded as moat's. The test fails when the
// chains an edit wrote are taken from the record (tried: chainsKnown
// ignoring what the commit wrote).
func TestFingerprintChainsFromRecord(t *testing.T) {
	policies := []string{
		"default deny incoming\nallow 22/tcp\n",
		"default deny incoming\nallow 22/tcp\nallow 8080/tcp\n",
		"default deny incoming\nallow 22/tcp\n",
		"default deny incoming\nallow 22/tcp\nallow 53/udp\n",
		"default allow incoming\nallow 22/tcp\nallow 53/udp\n",
		"default allow incoming\nallow 22/tcp\nallow 53/udp\ndeny out 25/tcp\n",
		"default deny incoming\nallow 22/tcp\n",
	}
	for _, hand := range []bool{false, true} {
		r := newNftRig(t, policies[0])
		ns, dir, b := r.ns, r.dir, r.b
		for i, text := range policies {
			// Each step a command of its own: a new app verifies the
			// record the last one wrote, applies, records.
			logs := &strings.Builder{}
			a := &app{stateDir: dir, out: io.Discard, errOut: io.Discard, log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
			b.AfterCommit = func(ctx context.Context) { a.startAhead(ctx, b) }
			p, err := policy.NewDocument("moat.conf", []byte(text)).Policy(policy.ParseServices(nil))
			if err != nil {
				t.Fatal(err)
			}
			rs := ruleset.Compile(p)
			var want string
			err = ns.Do(func() error {
				if i > 0 && !a.unchangedSinceApply(context.Background(), b, r.st, false) {
					t.Fatalf("step %d: the record the last step wrote was not verified", i)
				}
				if i > 0 && a.readChains(a.verified.fp) == nil {
					t.Errorf("step %d: no chains kept for the record", i)
				}
				if hand && i == 3 {
					// Verified; then a rule by hand in a chain this edit
					// (input) does not write.
					if _, err := execrun.Exec(context.Background(), []byte("add rule inet moat output_udp udp dport 9999 accept\n"), "nft", "-f", "-"); err != nil {
						return err
					}
				}
				if err := b.Apply(context.Background(), rs); err != nil {
					return err
				}
				a.recordFingerprint(context.Background(), b, r.st, verifiedGen{})
				k, err := a.kernelFingerprint(context.Background(), b)
				want = k.Fingerprint
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			data, err := statedir.ReadFile(dir, fingerprintFile)
			if hand && i == 3 {
				if err == nil {
					t.Fatalf("step %d: a fingerprint was recorded with a rule added by hand before the commit: %s", i, data)
				}
				break
			}
			if err != nil {
				t.Fatalf("step %d: no fingerprint recorded: %v\n%s", i, err, logs)
			}
			var rec kernelRecord
			if err := json.Unmarshal(data, &rec); err != nil {
				t.Fatal(err)
			}
			if rec.Fingerprint != want || want == "" {
				t.Errorf("step %d: recorded fingerprint %q, a whole read of the kernel gives %q\n%s", i, rec.Fingerprint, want, logs)
			}
			if len(a.readChains(rec.Fingerprint)) == 0 {
				t.Errorf("step %d: no chains kept", i)
			}
			if i > 0 && !strings.Contains(logs.String(), `chains read back" read=`) || i > 0 && strings.Contains(logs.String(), `"from the record"=0`) {
				t.Errorf("step %d: no chain taken from the record:\n%s", i, logs)
			}
		}
	}
}

// The chains file gives back what was kept, bytes of any kind included;
// a damaged file, one cut short or one of another fingerprint gives
// nothing (every chain is then read); chains over the bound are not kept.
func TestChainsFile(t *testing.T) {
	dir := t.TempDir()
	a := &app{stateDir: dir, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	chains := map[string]drift.Chain{
		"input":     {Head: "hook input priority 0 policy drop", Rules: []drift.Rule{{Tag: "L1", Verdict: "accept", Body: "tcp dport 22 accept"}, {Body: "comment \"\xff\x00\n\""}}},
		"moat_sync": {Rules: []drift.Rule{{Verdict: "return", Body: "return"}}},
		"empty":     {},
	}
	a.writeChains("fp1", chains)
	got := a.readChains("fp1")
	if len(got) != 3 || got["input"].Rules[1].Body != "comment \"\xff\x00\n\"" || got["input"].Head != chains["input"].Head || len(got["empty"].Rules) != 0 || got["moat_sync"].Rules[0].Verdict != "return" {
		t.Errorf("readChains = %+v", got)
	}
	if a.readChains("fp2") != nil {
		t.Error("chains of another fingerprint used")
	}
	data := encodeChains(kernelChains{fp: "fp1", chains: chains})
	for n := range len(data) {
		if _, err := decodeChains(data[:n]); err == nil {
			t.Fatalf("cut at %d of %d: decoded", n, len(data))
		}
	}
	if _, err := decodeChains(append(data, 0)); err == nil {
		t.Error("trailing byte: decoded")
	}
	a.writeChains("fp1", nil)
	if a.readChains("fp1") != nil {
		t.Error("removed chains read")
	}
	l := &drift.Layout{Chains: map[string]*drift.Chain{"input": {Rules: []drift.Rule{{Body: strings.Repeat("x", maxRecordedChains+1)}}}}}
	if c := recordableChains(l); c != nil {
		t.Error("chains over the bound kept")
	}
}

// FuzzDecodeChains: no panic, and what decodes encodes back to itself.
func FuzzDecodeChains(f *testing.F) {
	f.Add(encodeChains(kernelChains{fp: "x", chains: map[string]drift.Chain{"input": {Head: "h", Rules: []drift.Rule{{Tag: "t", Verdict: "v", Body: "b"}}}}}))
	f.Add([]byte("MOATCHN1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := decodeChains(data)
		if err != nil {
			return
		}
		again, err := decodeChains(encodeChains(k))
		if err != nil || again.fp != k.fp || len(again.chains) != len(k.chains) {
			t.Errorf("decoded %+v, re-encoded gives %+v (%v)", k, again, err)
		}
	})
}

// The chains kept in kernel-chains are taken only while the generations
// prove that nothing but the edit's own patch was committed since the
// verification. A rule added by hand to a chain the patch does not write
// (output_udp: the edit writes input), at each moment of the edit: right
// after the commit, before the read-back (AfterCommit); after the
// read-back, before the record (takeAhead); and, for a command that
// commits nothing, after the verification. Each time the hand rule is
// found (drift): no fingerprint is recorded that would vouch for the
// hand rule as moat's.
func TestFingerprintChainsHandChangeWindows(t *testing.T) {
	const p0 = "default deny incoming\nallow 22/tcp\n"
	hand := []byte("add rule inet moat output_udp udp dport 9999 accept\n")
	for _, when := range []string{"after-commit", "after-readback", "no-commit"} {
		t.Run(when, func(t *testing.T) {
			r := newNftRig(t, p0)
			ns, dir, b := r.ns, r.dir, r.b
			compile := func(text string) *ruleset.Ruleset {
				p, err := policy.NewDocument("moat.conf", []byte(text)).Policy(policy.ParseServices(nil))
				if err != nil {
					t.Fatal(err)
				}
				return ruleset.Compile(p)
			}
			// The first command: a whole load, its fingerprint and chains
			// kept.
			err := ns.Do(func() error {
				if err := b.Apply(context.Background(), r.rs); err != nil {
					return err
				}
				r.a.recordFingerprint(context.Background(), b, r.st, verifiedGen{})
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			next := p0 + "allow 8080/tcp\n"
			if when == "no-commit" {
				next = p0
			}
			logs := &strings.Builder{}
			a := &app{stateDir: dir, out: io.Discard, errOut: io.Discard, log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
			addHand := func() {
				if _, err := execrun.Exec(context.Background(), hand, "nft", "-f", "-"); err != nil {
					t.Error(err)
				}
			}
			b.AfterCommit = func(ctx context.Context) {
				if when == "after-commit" {
					addHand()
				}
				a.startAhead(ctx, b)
				if when == "after-readback" {
					addHand()
				}
			}
			var whole string
			err = ns.Do(func() error {
				if !a.unchangedSinceApply(context.Background(), b, r.st, false) || a.readChains(a.verified.fp) == nil {
					t.Fatal("the first command's record and chains were not verified")
				}
				if when == "no-commit" {
					addHand()
				}
				if err := b.Apply(context.Background(), compile(next)); err != nil {
					return err
				}
				if w, ok := b.LastCommitChains(); when != "no-commit" && (!ok || slices.Contains(w, "output_udp")) {
					t.Fatalf("the edit was not a netlink patch leaving output_udp alone: %v %v", w, ok)
				}
				a.recordFingerprint(context.Background(), b, r.st, verifiedGen{})
				k, err := a.kernelFingerprint(context.Background(), b)
				whole = k.Fingerprint
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			// Read back after the hand rule: nothing taken from the file.
			// (Read back before it, the chains were taken rightly; the
			// generation moved before the record.)
			if when != "after-readback" && strings.Contains(logs.String(), `"from the record"=`) && !strings.Contains(logs.String(), `"from the record"=0`) {
				t.Errorf("chains taken from kernel-chains after a hand change:\n%s", logs)
			}
			// The hand rule is drift: no fingerprint may vouch for it.
			if data, err := statedir.ReadFile(dir, fingerprintFile); err == nil {
				t.Errorf("a fingerprint was recorded with a rule added by hand (a whole read gives %q): %s\n%s", whole, data, logs)
			}
		})
	}
}
