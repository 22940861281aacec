package engine

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// memoBase is a policy whose address rules cover two of their own
// (lines 3 and 5), then port rules.
const memoBase = "default deny incoming\ndeny from 198.51.100.0/24\ndeny from 198.51.100.7\ndeny from 2001:db8::/32\n" +
	"allow from 2001:db8::5\nallow 22/tcp\n"

// coveredLines is "line<by" of each covered rule.
func coveredLines(cs []ruleset.Covered) string {
	var out []string
	for _, c := range cs {
		out = append(out, c.String())
	}
	return strings.Join(out, "\n")
}

// wantCovered checks res.Covered against a whole search of the file.
func (r *rig) wantCovered(res *Result) {
	r.t.Helper()
	p, err := policy.NewDocument(r.conf, []byte(r.file())).Policy(nil)
	r.must(err)
	if got, want := coveredLines(res.Covered), coveredLines(ruleset.Shadowed(p)); got != want {
		r.t.Fatalf("covered:\n%s\nwant:\n%s", got, want)
	}
}

func (r *rig) memoInode() uint64 {
	r.t.Helper()
	fi, err := os.Stat(filepath.Join(r.dir, coveredMemoFile))
	r.must(err)
	return fi.Sys().(*syscall.Stat_t).Ino
}

func (r *rig) deleteLast() (*Result, error) {
	var res *Result
	err := r.do(func(ctx context.Context, e *Engine) error {
		var err error
		res, err = e.Edit(ctx, r.ch(0), func(d *policy.Document) (string, bool, error) {
			line, err := d.DeleteRule(d.RuleCount())
			return "Rule deleted: " + line, true, err
		})
		return err
	})
	return res, err
}

// An edit of a port rule at the end uses the memo (its file is not
// rewritten) and warns of the same covered rules as a whole search; a
// line of the memo's part changed by hand between two commands makes the
// next one search again, and warn of what the change covers.
func TestCoveredMemoEdits(t *testing.T) {
	r := newRig(t)
	r.write(memoBase)
	res, err := r.enable(r.ch(0))
	r.must(err)
	r.wantCovered(res)
	if len(res.Covered) != 2 {
		t.Fatalf("covered %q: want lines 3 and 5", coveredLines(res.Covered))
	}
	ino := r.memoInode()
	for _, line := range []string{"allow 80/tcp", "allow 22/tcp", "deny in on eth0"} {
		res, err = r.add(r.ch(0), line)
		r.must(err)
		r.wantCovered(res)
		if r.memoInode() != ino {
			t.Fatalf("after %q the memo was made again: the edit searched the address rules", line)
		}
	}
	res, err = r.deleteLast()
	r.must(err)
	r.wantCovered(res)
	if r.memoInode() != ino {
		t.Fatal("after a delete the memo was made again")
	}
	// By hand: line 2 now covers line 4's network too.
	r.write(strings.Replace(r.file(), "deny from 2001:db8::/32", "deny from 2001:db8::/31", 1))
	r.write(strings.Replace(r.file(), "deny from 198.51.100.0/24", "deny from 2001:db8::/30", 1))
	res, err = r.add(r.ch(0), "allow 443/tcp")
	r.must(err)
	r.wantCovered(res)
	if !strings.Contains(coveredLines(res.Covered), ":4: 'deny from 2001:db8::/31' never matches: line 2") {
		t.Fatalf("covered %q: the changed line's cover is missing", coveredLines(res.Covered))
	}
	// An address rule at the end: searched whole.
	res, err = r.add(r.ch(0), "deny from 2001:db8::9")
	r.must(err)
	r.wantCovered(res)
}

// The memo's file is checked: torn, changed, forged without the key (a
// memo hiding the covered rules), made by another build, or under a key
// others can read, it is not used; the warnings are a whole search's,
// and the file is made again.
func TestCoveredMemoFileChecked(t *testing.T) {
	memo := func(r *rig) string { return filepath.Join(r.dir, coveredMemoFile) }
	forge := func(r *rig, edit func(rec *coveredMemoRecord), key []byte) {
		data, err := os.ReadFile(memo(r))
		r.must(err)
		_, body, _ := strings.Cut(string(data), "\n")
		var rec coveredMemoRecord
		r.must(json.Unmarshal([]byte(body), &rec))
		edit(&rec)
		b, err := json.Marshal(rec)
		r.must(err)
		r.must(os.WriteFile(memo(r), []byte(hex.EncodeToString(memoMAC(key, string(b)))+"\n"+string(b)), 0o600))
	}
	hide := func(rec *coveredMemoRecord) { rec.Pairs = [][2]int{} }
	cases := map[string]func(r *rig){
		"torn": func(r *rig) {
			data, err := os.ReadFile(memo(r))
			r.must(err)
			r.must(os.WriteFile(memo(r), data[:len(data)/2], 0o600))
		},
		"a byte changed": func(r *rig) {
			data, err := os.ReadFile(memo(r))
			r.must(err)
			i := strings.Index(string(data), `"pairs":[[`) + len(`"pairs":[[`)
			data[i]++
			r.must(os.WriteFile(memo(r), data, 0o600))
		},
		"forged without the key": func(r *rig) { forge(r, hide, make([]byte, 32)) },
		"another build": func(r *rig) {
			forge(r, func(rec *coveredMemoRecord) { hide(rec); rec.Build += "x" }, coveredMemoKey(r.dir))
		},
		"another version": func(r *rig) {
			forge(r, func(rec *coveredMemoRecord) { hide(rec); rec.Version++ }, coveredMemoKey(r.dir))
		},
		"a key others can read": func(r *rig) {
			forge(r, hide, coveredMemoKey(r.dir))
			r.must(os.Chmod(filepath.Join(r.dir, coveredMemoKeyFile), 0o644))
		},
		"a short key": func(r *rig) {
			forge(r, hide, []byte("k"))
			r.must(os.WriteFile(filepath.Join(r.dir, coveredMemoKeyFile), []byte("k"), 0o600))
		},
		"not a file": func(r *rig) {
			r.must(os.Remove(memo(r)))
			r.must(os.Mkdir(memo(r), 0o700))
		},
	}
	for name, spoil := range cases {
		t.Run(name, func(t *testing.T) {
			r := newRig(t)
			r.write(memoBase)
			_, err := r.enable(r.ch(0))
			r.must(err)
			spoil(r)
			res, err := r.add(r.ch(0), "allow 80/tcp")
			r.must(err)
			r.wantCovered(res)
			if len(res.Covered) != 2 {
				t.Fatalf("covered %q: want lines 3 and 5", coveredLines(res.Covered))
			}
			if name == "not a file" {
				return
			}
			key := coveredMemoKey(r.dir)
			m := readCoveredMemo(r.dir, key)
			if m == nil || len(m.Pairs) != 2 {
				t.Fatalf("the memo was not made again: %+v", m)
			}
			if fi, err := os.Stat(filepath.Join(r.dir, coveredMemoKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("key file: %v, %v", fi, err)
			}
		})
	}
	// The forgery works when the key is known (the test can fail): the
	// MAC is what refuses the ones above.
	r := newRig(t)
	r.write(memoBase)
	_, err := r.enable(r.ch(0))
	r.must(err)
	forge(r, hide, coveredMemoKey(r.dir))
	res, err := r.add(r.ch(0), "allow 80/tcp")
	r.must(err)
	if len(res.Covered) != 0 {
		t.Fatalf("a memo under the key was not used: %q", coveredLines(res.Covered))
	}
}

// An apply that fails writes nothing of the covered-rule search: the
// search runs beside the apply and goes on after the command returned
// its error (let go of moat's lock, its process exiting), so a write of
// the memo or its key there happened unlocked, or was cut by the exit
// and left its temporary file in the state directory. A change that
// succeeds writes both.
func TestCoveredMemoNotWrittenByFailedApply(t *testing.T) {
	ended := make(chan struct{}, 8)
	searchEnded = func() {
		select {
		case ended <- struct{}{}:
		default:
		}
	}
	t.Cleanup(func() { searchEnded = nil })
	waitSearch := func(r *rig) {
		r.t.Helper()
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			r.t.Fatal("the covered-rule search never ended")
		}
	}
	written := func(r *rig) []string {
		r.t.Helper()
		entries, err := os.ReadDir(r.dir)
		r.must(err)
		var out []string
		for _, e := range entries {
			if strings.Contains(e.Name(), "covered-rules") {
				out = append(out, e.Name())
			}
		}
		return out
	}
	r := newRig(t)
	r.write(memoBase)
	r.nft.Fail = refuse("apply", "the kernel refused")
	if _, err := r.enable(r.ch(0)); err == nil {
		t.Fatal("enable succeeded with the kernel refusing")
	}
	waitSearch(r)
	if got := written(r); len(got) != 0 {
		t.Fatalf("a failed enable wrote %q", got)
	}
	r.nft.Fail = nil
	res, err := r.enable(r.ch(0))
	r.must(err)
	waitSearch(r)
	r.wantCovered(res)
	if got := written(r); !slices.Equal(got, []string{coveredMemoFile, coveredMemoKeyFile}) {
		t.Fatalf("after enable the state directory holds %q", got)
	}
	// An edit that fails after the search began leaves the memo as it was.
	ino := r.memoInode()
	r.nft.Fail = refuse("apply", "the kernel refused")
	if _, err := r.add(r.ch(0), "deny from 203.0.113.9"); err == nil {
		t.Fatal("an edit succeeded with the kernel refusing")
	}
	waitSearch(r)
	if r.memoInode() != ino {
		t.Fatal("a failed edit wrote the memo")
	}
}

// The build a memo names is the executable itself: two moat packages
// built without the repository's data (-buildvcs=false) have the same
// version, "(devel)", and a moat whose search finds more took the memo
// of the one before it (hiding the covered rules it finds). The same
// executable keeps its ID; one that cannot be named never matches.
func TestBuildIDNamesTheExecutable(t *testing.T) {
	dir := t.TempDir()
	// Written an hour ago (the kernel's file times move by its clock
	// tick: a file rewritten within one could keep its times).
	stat := func(name, text string) *unix.Stat_t {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, time.Now().Add(-time.Hour), time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return &st
	}
	release := &debug.BuildInfo{Main: debug.Module{Path: "github.com/moat-fw/moat", Version: "(devel)"}}
	old, upgraded := stat("moat-1.0", "moat 1.0"), stat("moat-1.1", "moat 1.1")
	if buildIDOf(release, old) == buildIDOf(release, upgraded) {
		t.Fatalf("two executables have the build ID %q", buildIDOf(release, old))
	}
	p := filepath.Join(dir, "moat-1.0")
	if err := os.WriteFile(p, []byte("moat 1.1"), 0o755); err != nil {
		t.Fatal(err)
	}
	var again unix.Stat_t
	if err := unix.Stat(p, &again); err != nil {
		t.Fatal(err)
	}
	if again.Ino != old.Ino {
		t.Fatal("not rewritten in place")
	}
	if buildIDOf(release, old) == buildIDOf(release, &again) {
		t.Fatal("an executable rewritten in place kept its build ID")
	}
	if a, b := buildIDOf(release, old), buildIDOf(release, old); a != b {
		t.Fatalf("one executable has two build IDs: %q, %q", a, b)
	}
	if a, b := buildIDOf(release, nil), buildIDOf(release, nil); a == b {
		t.Fatalf("an executable that cannot be named has one build ID: %q", a)
	}
	if a, b := buildID(), buildID(); a != b || !strings.Contains(a, " exe ") {
		t.Fatalf("the test's build ID %q, then %q", a, b)
	}
}
