package engine

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/blocklist"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

func (r *rig) setPrefixes(f *Fake, name string) []netip.Prefix {
	r.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rs == nil {
		r.t.Fatalf("%s holds nothing", f.Name())
	}
	s := f.rs.Set(name)
	if s == nil {
		r.t.Fatalf("%s has no set %s", f.Name(), name)
	}
	return s.Prefixes()
}

func (r *rig) refresh(lists map[string][]netip.Prefix) (*Result, error) {
	var res *Result
	err := r.do(func(ctx context.Context, e *Engine) error {
		var err error
		res, err = e.Refresh(ctx, r.ch(0), lists, nil)
		return err
	})
	return res, err
}

// Refresh loads new blocklist contents into what is applied: not the
// file's unapplied edits; nothing when moat is inactive; the kernel and
// the records unchanged when the backend refuses.
func TestRefreshBlocklists(t *testing.T) {
	r := newRig(t)
	list := filepath.Join(t.TempDir(), "local.netset")
	r.must(os.WriteFile(list, []byte("192.0.2.0/24\n"), 0o644))
	applied := "default deny incoming\nallow 22/tcp\nblocklist local file " + list + "\nblocklist drop url https://lists.example/drop.txt\n"
	r.write(applied)

	res, err := r.refresh(nil)
	if err != nil || !res.Inactive {
		t.Fatalf("inactive: %+v %v", res, err)
	}
	if _, err := r.enable(r.ch(0)); err != nil {
		t.Fatal(err)
	}
	if got := r.setPrefixes(r.nft, "bl4_local"); !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}) {
		t.Fatalf("bl4_local = %v", got)
	}
	if !slices.ContainsFunc(r.warnings, func(w string) bool { return strings.Contains(w, "blocklist drop: not fetched yet") }) {
		t.Errorf("no warning for the list never fetched: %v", r.warnings)
	}

	r.write(applied + "allow 80/tcp\n") // an edit not applied
	res, err = r.refresh(map[string][]netip.Prefix{"drop": {netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:bad::/48")}})
	if err != nil || res.Applied == nil {
		t.Fatalf("refresh: %+v %v", res, err)
	}
	if got := r.setPrefixes(r.nft, "bl6_drop"); len(got) != 1 || got[0].String() != "2001:db8:bad::/48" {
		t.Errorf("bl6_drop = %v", got)
	}
	if got := r.setPrefixes(r.nft, "bl4_local"); len(got) != 1 {
		t.Errorf("the file list was lost: %v", got)
	}
	r.nft.mu.Lock()
	for _, rule := range r.nft.rs.Chain(ruleset.Input).Rules {
		if rule.Origin.ID == "L5" {
			t.Errorf("the unapplied 'allow 80/tcp' was swept in")
		}
	}
	r.nft.mu.Unlock()
	if !strings.Contains(r.file(), "allow 80/tcp") {
		t.Errorf("the file was rewritten")
	}

	before := r.nft.Loaded()
	r.nft.Fail = refuse("apply", "kernel says no")
	if _, err := r.refresh(map[string][]netip.Prefix{"drop": {netip.MustParsePrefix("198.51.100.0/24")}}); err == nil || !strings.Contains(err.Error(), "kernel says no") {
		t.Errorf("a refused apply: %v", err)
	}
	if r.nft.Loaded() != before {
		t.Errorf("the kernel changed although the apply failed")
	}
}

// A refresh parses the applied policy with the engine's application
// profiles, as the apply did: a policy naming a profile used to fail
// with "the applied policy no longer parses".
func TestRefreshWithProfile(t *testing.T) {
	r := newRig(t)
	r.eng.o.Apps = policy.AppsFromPorts(map[string]string{"Web": "8080/tcp"})
	r.write("default deny incoming\nallow 22/tcp\nallow Web\nblocklist drop url https://lists.example/drop.txt\n")
	if _, err := r.enable(r.ch(0)); err != nil {
		t.Fatal(err)
	}
	res, err := r.refresh(map[string][]netip.Prefix{"drop": {netip.MustParsePrefix("203.0.113.0/24")}})
	if err != nil || res.Applied == nil {
		t.Fatalf("refresh: %+v %v", res, err)
	}
	if got := r.setPrefixes(r.nft, "bl4_drop"); len(got) != 1 || got[0].String() != "203.0.113.0/24" {
		t.Errorf("bl4_drop = %v", got)
	}
	if !strings.Contains(r.nft.Loaded(), "8080") {
		t.Errorf("the profile's port is not loaded: %s", r.nft.Loaded())
	}
}

// A refresh uses the caller's parse of the applied policy (parsed once
// per command) only when it is the very text and source applied under
// the lock: a parse taken before another command applied something else
// is not loaded.
func TestRefreshUsesCallersParse(t *testing.T) {
	r := newRig(t)
	applied := "default deny incoming\nallow 22/tcp\nblocklist drop url https://lists.example/drop.txt\n"
	r.write(applied)
	if _, err := r.enable(r.ch(0)); err != nil {
		t.Fatal(err)
	}
	a, err := LoadApplied(r.dir)
	if err != nil || a == nil {
		t.Fatalf("applied: %+v %v", a, err)
	}
	parse := func(text string) *policy.Policy {
		p, err := policy.NewDocument(a.Source, []byte(text)).Policy(nil)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	lists := map[string][]netip.Prefix{"drop": {netip.MustParsePrefix("203.0.113.0/24")}}
	refresh := func(pre *Parsed) *Result {
		var res *Result
		r.must(r.do(func(ctx context.Context, e *Engine) error {
			var err error
			res, err = e.Refresh(ctx, r.ch(0), lists, pre)
			return err
		}))
		if res.Applied == nil {
			t.Fatalf("refresh: %+v", res)
		}
		return res
	}

	same := &Parsed{Source: a.Source, Text: a.Policy, Policy: parse(a.Policy), Applied: a.Time}
	if res := refresh(same); res.Policy != same.Policy {
		t.Errorf("the applied policy was parsed again although the caller's parse is of the same text")
	}
	a, err = LoadApplied(r.dir)
	if err != nil || a == nil {
		t.Fatalf("applied: %+v %v", a, err)
	}

	// Parsed before the lock, applied by another command since: another
	// text, another source, or the same text applied again (a reload
	// after an application profile was edited: the parse, made with the
	// profiles of before, would load what that reload replaced).
	stale := applied + "allow 80/tcp\n"
	for _, pre := range []*Parsed{
		{Source: a.Source, Text: stale, Policy: parse(stale), Applied: a.Time},
		{Source: a.Source + ".other", Text: a.Policy, Policy: parse(a.Policy), Applied: a.Time},
		{Source: a.Source, Text: a.Policy, Policy: parse(stale), Applied: a.Time.Add(-time.Second)},
	} {
		if res := refresh(pre); res.Policy == pre.Policy {
			t.Errorf("a parse of another text or source was used: %q", pre.Source)
		}
		r.nft.mu.Lock()
		for _, rule := range r.nft.rs.Chain(ruleset.Input).Rules {
			if rule.Origin.ID == "L4" {
				t.Errorf("the stale parse's 'allow 80/tcp' was loaded")
			}
		}
		r.nft.mu.Unlock()
	}
	if got := r.setPrefixes(r.nft, "bl4_drop"); len(got) != 1 || got[0].String() != "203.0.113.0/24" {
		t.Errorf("bl4_drop = %v", got)
	}
}

// A list read from the source the caller's parse named is not loaded
// when the policy applied under the lock takes that list from another
// source: an update fetches while not holding the engine's lock, and a
// reload in that time that points the list elsewhere (another file,
// another URL) must not be overwritten with the old source's networks.
// Both with the caller's parse of the old applied text and with no parse
// (the CLI then read the lists from the policy file).
func TestRefreshRefusesListsOfAnotherSource(t *testing.T) {
	for _, withPre := range []bool{true, false} {
		t.Run(map[bool]string{true: "parsed", false: "file"}[withPre], func(t *testing.T) {
			r := newRig(t)
			dir := t.TempDir()
			a, b := filepath.Join(dir, "a.netset"), filepath.Join(dir, "b.netset")
			r.must(os.WriteFile(a, []byte("192.0.2.0/24\n"), 0o644))
			r.must(os.WriteFile(b, []byte("198.51.100.0/24\n2001:db8:b::/48\n"), 0o644))
			old := "default deny incoming\nallow 22/tcp\nblocklist drop file " + a + "\n"
			r.write(old)
			if _, err := r.enable(r.ch(0)); err != nil {
				t.Fatal(err)
			}
			applied, err := LoadApplied(r.dir)
			if err != nil || applied == nil {
				t.Fatalf("applied: %+v %v", applied, err)
			}
			p, err := policy.NewDocument(applied.Source, []byte(old)).Policy(nil)
			if err != nil {
				t.Fatal(err)
			}
			pre := &Parsed{Source: applied.Source, Text: applied.Policy, Policy: p}
			if !withPre {
				pre = &Parsed{Policy: p, FromFile: true}
			}
			// The update has read a (its networks changed), then another
			// command applies the list from b.
			r.write("default deny incoming\nallow 22/tcp\nblocklist drop file " + b + "\n")
			if _, err := r.enable(r.ch(0)); err != nil {
				t.Fatal(err)
			}
			stale := map[string][]netip.Prefix{"drop": {netip.MustParsePrefix("203.0.113.0/24")}}
			var res *Result
			err = r.do(func(ctx context.Context, e *Engine) error {
				var err error
				res, err = e.Refresh(ctx, r.ch(0), stale, pre)
				return err
			})
			if err == nil || !strings.Contains(err.Error(), "blocklist drop") {
				t.Errorf("a list of the old source was accepted: %+v %v", res, err)
			}
			if got := r.setPrefixes(r.nft, "bl4_drop"); len(got) != 1 || got[0].String() != "198.51.100.0/24" {
				t.Errorf("bl4_drop = %v, want b's 198.51.100.0/24", got)
			}
			if got := r.setPrefixes(r.nft, "bl6_drop"); len(got) != 1 || got[0].String() != "2001:db8:b::/48" {
				t.Errorf("bl6_drop = %v, want b's 2001:db8:b::/48", got)
			}
		})
	}
}

// A file list read by an update before it holds the lock is not loaded
// when a policy was applied since: that apply read the file again (its
// contents may be newer than the update's) and saved it. The same text
// and source applied again (a reload after editing the list) must not be
// undone by the update's older read.
func TestRefreshRefusesFileListReadBeforeAnApply(t *testing.T) {
	r := newRig(t)
	list := filepath.Join(t.TempDir(), "local.netset")
	r.must(os.WriteFile(list, []byte("192.0.2.0/24\n"), 0o644))
	text := "default deny incoming\nallow 22/tcp\nblocklist local file " + list + "\n"
	r.write(text)
	if _, err := r.enable(r.ch(0)); err != nil {
		t.Fatal(err)
	}
	applied, err := LoadApplied(r.dir)
	if err != nil || applied == nil {
		t.Fatalf("applied: %+v %v", applied, err)
	}
	p, err := policy.NewDocument(applied.Source, []byte(applied.Policy)).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	pre := &Parsed{Source: applied.Source, Text: applied.Policy, Policy: p, Applied: applied.Time}
	// The update read the file (now 198.51.100.0/24); the admin edits it
	// again and reloads before the update takes the lock.
	read := map[string][]netip.Prefix{"local": {netip.MustParsePrefix("198.51.100.0/24")}}
	r.must(os.WriteFile(list, []byte("203.0.113.0/24\n"), 0o644))
	r.advance(time.Second)
	if _, err := r.enable(r.ch(0)); err != nil {
		t.Fatal(err)
	}
	err = r.do(func(ctx context.Context, e *Engine) error {
		_, err := e.Refresh(ctx, r.ch(0), read, pre)
		return err
	})
	if err == nil {
		t.Errorf("the older read of the file list was loaded over the apply's")
	}
	if got := r.setPrefixes(r.nft, "bl4_local"); len(got) != 1 || got[0].String() != "203.0.113.0/24" {
		t.Errorf("bl4_local = %v, want the reload's 203.0.113.0/24", got)
	}
}

// The file lists' saved copies say what the kernel holds after an apply
// that fails (the kernel refuses it) or is killed before it is whole
// (undone by the next command): they were written before the kernel took
// the change, and after a refused apply an update found the list file
// equal to its copy and never loaded it, though the kernel held the old
// list.
func TestFailedApplyKeepsFileListCopies(t *testing.T) {
	for _, fault := range []string{"refused", "kernel", "switched", "applied"} {
		t.Run(fault, func(t *testing.T) {
			r := newRig(t)
			list := filepath.Join(t.TempDir(), "local.netset")
			r.must(os.WriteFile(list, []byte("192.0.2.0/24\n"), 0o644))
			r.write(base + "blocklist local file " + list + "\n")
			if _, err := r.enable(r.ch(0)); err != nil {
				t.Fatal(err)
			}
			r.must(os.WriteFile(list, []byte("198.51.100.0/24\n"), 0o644))
			if fault == "refused" {
				r.nft.Fail = refuse("apply", "kernel says no")
				if _, err := r.add(r.ch(0), "allow 443/tcp"); err == nil {
					t.Fatal("the refused apply succeeded")
				}
				r.nft.Fail = nil
			} else {
				r.crashAt = fault
				if _, err := r.add(r.ch(0), "allow 443/tcp"); !IsCrash(err) {
					t.Fatalf("no crash at %s: %v", fault, err)
				}
				r.crashAt = ""
				r.must(r.do(func(context.Context, *Engine) error { return nil })) // undoes it
			}
			// (The undo of a killed apply loads the policy of before,
			// reading the list file again.)
			kernel := r.setPrefixes(r.nft, "bl4_local")
			if fault == "refused" && (len(kernel) != 1 || kernel[0].String() != "192.0.2.0/24") {
				t.Fatalf("bl4_local = %v after the refused apply", kernel)
			}
			m, err := blocklist.ReadMeta(r.dir, "local")
			r.must(err)
			l, ok, err := blocklist.ReadCache(r.dir, "local", m)
			if err != nil || !ok {
				t.Fatalf("saved copy: %v %v", ok, err)
			}
			if got := l.Prefixes(); !slices.Equal(got, kernel) {
				t.Errorf("the saved copy holds %v, the kernel %v", got, kernel)
			}
		})
	}
}
