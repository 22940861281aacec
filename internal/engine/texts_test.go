package engine

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
	"github.com/moat-fw/moat/internal/statetext"
)

// storeAll sends every policy text to a file of its own for the test.
func storeAll(t *testing.T) {
	old := statetext.InlineMax
	statetext.InlineMax = 1
	t.Cleanup(func() { statetext.InlineMax = old })
}

// texts lists the text files of the state directory.
func texts(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if statetext.IsName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

// The state machine's tests, with every policy text in a file of its own
// (as a large policy's is): kill -9 at every step, corrupt files, the
// same fault twice, confirm and rollback.
func TestStoredTexts(t *testing.T) {
	storeAll(t)
	for name, fn := range map[string]func(*testing.T){
		"KillAtEveryStep":                 TestKillAtEveryStep,
		"CorruptStateFiles":               TestCorruptStateFiles,
		"SameFaultTwice":                  TestSameFaultTwice,
		"DisableAfterInterruptedEdit":     TestDisableAfterInterruptedEdit,
		"UnconfirmedChangesLeaveNoTrace":  TestUnconfirmedChangesLeaveNoTrace,
		"RollbackOnFullDisk":              TestRollbackOnFullDisk,
		"RebootDropsUnconfirmedChange":    TestRebootDropsUnconfirmedChange,
		"DisableDropsUnconfirmedChange":   TestDisableDropsUnconfirmedChange,
		"FullDiskAfterKernelUndoesAtOnce": TestFullDiskAfterKernelUndoesAtOnce,
		"RestoreTwiceStaysFailClosed":     TestRestoreTwiceStaysFailClosed,
		"WatchdogRollsBackWhenRecordLost": TestWatchdogRollsBackWhenRecordLost,
	} {
		t.Run(name, fn)
	}
}

// The records name their texts instead of holding them; only the texts a
// record names are kept; disable leaves none.
func TestStoredTextsOnDisk(t *testing.T) {
	storeAll(t)
	r := enabledRig(t)
	for _, line := range []string{"allow 443/tcp", "allow 80/tcp", "deny from 192.0.2.7"} {
		_, err := r.add(r.ch(0), line)
		r.must(err)
	}
	want := r.file()
	for _, f := range []string{AppliedFile, savedFile} {
		data, err := os.ReadFile(filepath.Join(r.dir, f))
		r.must(err)
		if strings.Contains(string(data), "allow 443/tcp") {
			t.Errorf("%s holds the policy:\n%s", f, data)
		}
		if !strings.Contains(string(data), `"policy_file"`) {
			t.Errorf("%s names no text file:\n%s", f, data)
		}
	}
	if got := texts(t, r.dir); !slices.Equal(got, []string{statetext.Name(statetext.Hash(want))}) {
		t.Errorf("texts kept: %q, want only the applied one", got)
	}
	a, err := decodeFresh(t, r.dir)
	if err != nil || a.Policy != want || a.PolicyFile != "" {
		t.Fatalf("applied: %+v %v", a, err)
	}
	s, err := safeapply.LoadSaved(r.dir)
	if err != nil || s.Policy != want || s.PolicyFile != "" {
		t.Fatalf("saved: %+v %v", s, err)
	}
	// A text changed on disk is refused, not applied: the record is
	// unknown, and the next change writes a good one.
	path := filepath.Join(r.dir, statetext.Name(statetext.Hash(want)))
	r.must(os.WriteFile(path, []byte("default allow incoming\n"), 0o600))
	if _, err := decodeFresh(t, r.dir); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("a changed text was read: %v", err)
	}
	if _, err := safeapply.LoadSaved(r.dir); err == nil {
		t.Error("a changed saved text was read")
	}
	_, err = r.add(r.ch(0), "allow 8080/tcp")
	r.must(err)
	if a, err := decodeFresh(t, r.dir); err != nil || a.Policy != r.file() {
		t.Errorf("after the next change: %+v %v", a, err)
	}
	r.must(r.disable())
	if got := texts(t, r.dir); len(got) > 0 {
		t.Errorf("texts left after disable: %q", got)
	}
}

// State files written by the version before (every text inside its JSON
// record) still load, and an interrupted change it journaled is undone.
func TestOldStateFilesLoad(t *testing.T) {
	r := newRig(t)
	big := base + strings.Repeat("deny from 192.0.2.9\n", 1) // any text: the old format held them all inline
	r.write(big)
	_, err := r.enable(r.ch(0))
	r.must(err)
	r.crashAt = "saved"
	if _, err := r.add(r.ch(0), "allow 443/tcp"); !IsCrash(err) {
		t.Fatalf("no crash: %v", err)
	}
	// What the version before wrote: the same records, texts inline.
	for _, f := range []string{AppliedFile, savedFile, IntentFile} {
		data, err := os.ReadFile(filepath.Join(r.dir, f))
		r.must(err)
		if strings.Contains(string(data), "policy_file") || strings.Contains(string(data), "prev_file_stored") {
			t.Fatalf("%s is not in the old format:\n%s", f, data)
		}
	}
	in, err := LoadIntent(r.dir)
	r.must(err)
	if string(in.PrevFile) != big || in.Prev == nil || in.Prev.Policy != big {
		t.Fatalf("old intent: %+v", in)
	}
	// The new version (texts in files) repairs and carries on.
	storeAll(t)
	appliedMemo.put(nil, Applied{})
	r.eng = r.newEngine()
	_, err = r.add(r.ch(0), "allow 80/tcp")
	r.must(err)
	want := big + "allow 80/tcp\n"
	if r.file() != want {
		t.Errorf("file:\n%s\nwant:\n%s", r.file(), want)
	}
	r.kernelIs("nftables", want)
	if a, err := decodeFresh(t, r.dir); err != nil || a.Policy != want {
		t.Errorf("applied: %+v %v", a, err)
	}
	if s, err := safeapply.LoadSaved(r.dir); err != nil || s.Policy != want {
		t.Errorf("saved: %+v %v", s, err)
	}
	// And a saved.json of the old format restores at boot.
	r2 := newRig(t)
	r2.write(base)
	statetext.InlineMax = 1 << 30
	_, err = r2.enable(r2.ch(0))
	r2.must(err)
	statetext.InlineMax = 1
	r2.must(r2.do(func(ctx context.Context, e *Engine) error {
		r2.must(e.Disable(ctx))
		return nil
	}))
	r2.must(safeapply.Save(r2.dir, safeapply.Saved{Backend: "nftables", Policy: base, Source: r2.conf}))
	data, _ := os.ReadFile(filepath.Join(r2.dir, savedFile))
	var old map[string]any
	r2.must(json.Unmarshal(data, &old))
	if old["policy_file"] == nil {
		t.Fatalf("saved.json not in files: %s", data)
	}
	statetext.InlineMax = 1 << 30
	r2.must(safeapply.Save(r2.dir, safeapply.Saved{Backend: "nftables", Policy: base, Source: r2.conf}))
	statetext.InlineMax = 1
	r2.must(r2.do(func(ctx context.Context, e *Engine) error {
		_, err := e.Restore(ctx, r2.ch(0))
		return err
	}))
	r2.kernelIs("nftables", base)
}

// saved.json is not written again when it would hold what it holds.
func TestSavedNotRewrittenWhenUnchanged(t *testing.T) {
	for _, stored := range []bool{false, true} {
		t.Run(map[bool]string{false: "inline", true: "stored"}[stored], func(t *testing.T) {
			if stored {
				storeAll(t)
			}
			r := enabledRig(t)
			ino := func() uint64 {
				fi, err := os.Stat(filepath.Join(r.dir, savedFile))
				r.must(err)
				return fi.Sys().(*syscall.Stat_t).Ino
			}
			before := ino()
			r.advance(time.Minute)
			_, err := r.enable(r.ch(0))
			r.must(err)
			if ino() != before {
				t.Error("saved.json written again with the same contents")
			}
			_, err = r.add(r.ch(0), "allow 443/tcp")
			r.must(err)
			if ino() == before {
				t.Error("saved.json not written for a changed policy")
			}
			s, err := safeapply.LoadSaved(r.dir)
			if err != nil || s.Policy != r.file() {
				t.Errorf("saved: %+v %v", s, err)
			}
			// A text file that lost its text is written again.
			if stored {
				path := filepath.Join(r.dir, statetext.Name(statetext.Hash(r.file())))
				r.must(os.Remove(path))
				_, err = r.enable(r.ch(0))
				r.must(err)
				if s, err := safeapply.LoadSaved(r.dir); err != nil || s.Policy != r.file() {
					t.Errorf("saved after its text was removed: %v", err)
				}
			}
		})
	}
}

// The records exactly as the version before statetext wrote them
// (testdata/state-015d496, written by that commit's engine: texts inline,
// the journal's policy file and saved.json base64) load, and the
// interrupted change they journal is undone by this version, which then
// applies the next change with its texts in files.
func TestStateFilesOfVersionBefore(t *testing.T) {
	storeAll(t)
	r := newRig(t)
	const fixtureSource = "/nonexistent/moat-fixture/moat.conf"
	old := "default deny incoming\nallow 22/tcp\n"
	r.must(os.MkdirAll(r.dir, 0o700))
	for _, f := range []string{AppliedFile, savedFile, IntentFile} {
		data, err := os.ReadFile(filepath.Join("testdata", "state-015d496", f))
		r.must(err)
		// The records name the policy file: this test's own.
		text := strings.ReplaceAll(string(data), fixtureSource, r.conf)
		if strings.Contains(text, `"path": "/nonexistent`) {
			t.Fatal("fixture path not replaced")
		}
		r.must(os.WriteFile(filepath.Join(r.dir, f), []byte(text), 0o600))
	}
	appliedMemo.put(nil, Applied{})
	a, err := LoadApplied(r.dir)
	if err != nil || a == nil || a.Policy != old || a.Backend != "nftables" || a.Source != r.conf {
		t.Fatalf("applied record of the version before: %+v %v", a, err)
	}
	s, err := safeapply.LoadSaved(r.dir)
	if err != nil || s.Policy != old {
		t.Fatalf("saved.json of the version before: %+v %v", s, err)
	}
	in, err := LoadIntent(r.dir)
	if err != nil || in == nil || string(in.PrevFile) != old || in.Prev.Policy != old || !strings.HasSuffix(in.Next.Policy, "allow 443/tcp\n") {
		t.Fatalf("journal of the version before: %+v %v", in, err)
	}
	// The interrupted change had written the file and loaded the kernel.
	r.write(old + "allow 443/tcp\n")
	r.must(r.nft.Apply(context.Background(), mustCompile(t, old+"allow 443/tcp\n", r.conf)))
	_, err = r.add(r.ch(0), "allow 80/tcp")
	r.must(err)
	want := old + "allow 80/tcp\n"
	if r.file() != want {
		t.Errorf("file after repair and change:\n%s", r.file())
	}
	r.kernelIs("nftables", want)
	if !strings.Contains(strings.Join(r.warnings, "\n"), "interrupted") {
		t.Errorf("the repair was not reported: %q", r.warnings)
	}
	if a, err := decodeFresh(t, r.dir); err != nil || a.Policy != want {
		t.Errorf("applied after: %+v %v", a, err)
	}
	if s, err := safeapply.LoadSaved(r.dir); err != nil || s.Policy != want {
		t.Errorf("saved after: %+v %v", s, err)
	}
	if got := texts(t, r.dir); !slices.Equal(got, []string{statetext.Name(statetext.Hash(want))}) {
		t.Errorf("texts: %q", got)
	}
}

func mustCompile(t *testing.T, text, conf string) *ruleset.Ruleset {
	t.Helper()
	p, err := policy.NewDocument(conf, []byte(text)).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	return ruleset.Compile(p)
}

// A reader without the lock (status, explain) that reads the applied
// record just before a change replaces it and removes the text it names
// reads the new record, not an error about a missing text.
func TestLoadAppliedDuringChange(t *testing.T) {
	storeAll(t)
	dir := t.TempDir()
	old := &Applied{Backend: "nftables", Policy: "allow 22/tcp\n", Time: time.Now().UTC()}
	if err := writeApplied(dir, old); err != nil {
		t.Fatal(err)
	}
	appliedMemo.put(nil, Applied{}) // a reader of another process
	next := &Applied{Backend: "nftables", Policy: "allow 22/tcp\nallow 80/tcp\n", Time: time.Now().UTC()}
	changes := 0
	appliedRead = func() {
		if changes++; changes == 1 {
			if err := writeApplied(dir, next); err != nil {
				t.Error(err)
			}
			if err := collectTexts(dir); err != nil {
				t.Error(err)
			}
			if n := len(texts(t, dir)); n != 1 {
				t.Errorf("%d texts after the change, want 1", n)
			}
		}
	}
	t.Cleanup(func() { appliedRead = nil })
	a, err := LoadApplied(dir)
	if err != nil {
		t.Fatal(err)
	}
	if a.Policy != next.Policy {
		t.Errorf("policy %q, want the new record's %q", a.Policy, next.Policy)
	}
	// A text missing for good is still an error, naming the record.
	appliedRead = nil
	appliedMemo.put(nil, Applied{})
	for _, name := range texts(t, dir) {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := LoadApplied(dir); err == nil || !strings.Contains(err.Error(), AppliedFile) {
		t.Errorf("text removed: err = %v", err)
	}
}
