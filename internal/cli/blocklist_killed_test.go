package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/blocklist"
	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/statedir"
)

// An update killed after the kernel took a new list but before its saved
// copy was written leaves the kernel with the new list, the saved copy
// with the old one, and the update's marker: the next update loads its
// list even though the list equals the saved copy, and removes the
// marker. Without the marker the same update changes nothing (the
// comparison with the saved copy is what makes an update cheap).
func TestBlocklistUpdateAfterKilledUpdate(t *testing.T) {
	r, list, write := newFileListRig(t, "nftables")
	saved, copies := savedCopies(t, r)
	marker := filepath.Join(r.state, updatingMarker)
	for _, killed := range []bool{true, false} {
		write(list, "198.51.100.0/24\n")
		if out, code := r.moat("blocklist", "update"); code != 0 {
			t.Fatalf("update: %d\n%s", code, out)
		}
		if _, err := os.Lstat(marker); err == nil {
			t.Fatal("a finished update left its marker")
		}
		// The kill: the old saved copy, and the marker.
		for n, data := range copies {
			write(filepath.Join(saved, n), string(data))
		}
		if killed {
			write(marker, "bad\n")
		}
		write(list, "192.0.2.0/24\n")
		out, code := r.moat("blocklist", "update")
		if code != 0 {
			t.Fatalf("update back: %d\n%s", code, out)
		}
		got := r.fakes["nftables"].Loaded()
		back := strings.Contains(got, "192.0.2.0/24") && !strings.Contains(got, "198.51.100.0/24")
		if killed && !back {
			t.Errorf("after the killed update, an update back to the old list left the kernel with:\n%s\n(the update said %s)", got, out)
		}
		if !killed && back {
			t.Errorf("without the marker the update loaded the list: the test proves nothing")
		}
		if _, err := os.Lstat(marker); err == nil {
			t.Errorf("the marker is still there after the update (killed %v)", killed)
		}
		// A reload makes all agree again for the next round.
		if out, code := r.moat("reload"); code != 0 {
			t.Fatalf("reload: %d\n%s", code, out)
		}
	}
}

// After an update killed between the kernel batch and the saved copy, an
// update whose read fails (the list file gone, a fetch error) changes
// nothing and keeps the marker: the one after it, with the source back at
// the old contents, still loads them. The same fault twice.
func TestBlocklistFailedReadAfterKilledUpdate(t *testing.T) {
	r, list, write := newFileListRig(t, "nftables")
	saved, copies := savedCopies(t, r)
	marker := filepath.Join(r.state, updatingMarker)
	write(list, "198.51.100.0/24\n")
	if out, code := r.moat("blocklist", "update"); code != 0 {
		t.Fatalf("update: %d\n%s", code, out)
	}
	for n, data := range copies { // the kill: the old copy and the marker
		write(filepath.Join(saved, n), string(data))
	}
	write(marker, "bad\n")
	for i := 0; i < 2; i++ {
		if err := os.Remove(list); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if out, code := r.moat("blocklist", "update"); code == 0 {
			t.Fatalf("an update of a missing list file succeeded:\n%s", out)
		}
		if _, err := os.Lstat(marker); err != nil {
			t.Fatalf("a failed update removed the marker: %v", err)
		}
	}
	write(list, "192.0.2.0/24\n")
	out, code := r.moat("blocklist", "update")
	if code != 0 {
		t.Fatalf("update back: %d\n%s", code, out)
	}
	if got := r.fakes["nftables"].Loaded(); !strings.Contains(got, "192.0.2.0/24") || strings.Contains(got, "198.51.100.0/24") {
		t.Errorf("the update back to the old list left the kernel with:\n%s\n(it said %s)", got, out)
	}
	if _, err := os.Lstat(marker); err == nil {
		t.Errorf("the marker is still there")
	}
}

// An update killed after its apply wrote the applied record but before
// the journal was removed (and at the other steps of its apply) is
// undone by the next command: the undo puts back the record of before,
// so the record the next update reads before its repair is not the one
// in force once it holds the lock. That update must load its list all
// the same: the apply it would see "while the file was read" is its own
// undo, not another command's (which Refresh refuses:
// TestRefreshRefusesFileListReadBeforeAnApply). The file stays at the
// killed update's list, or goes back to the old one. Both backends.
func TestBlocklistUpdateAfterKilledApply(t *testing.T) {
	for _, b := range []string{"nftables", "iptables"} {
		for _, step := range []string{"intent", "kernel", "applied", "saved", "done"} {
			for _, back := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/back=%v", b, step, back), func(t *testing.T) {
					r, list, write := newFileListRig(t, b)
					write(list, "198.51.100.0/24\n")
					r.now = r.now.Add(time.Second)
					r.crashAt = step
					r.moat("blocklist", "update")
					if !r.crashed {
						t.Fatalf("the update never reached step %s", step)
					}
					want, gone := "198.51.100.0/24", "192.0.2.0/24"
					if back {
						write(list, "192.0.2.0/24\n")
						want, gone = gone, want
					}
					r.now = r.now.Add(time.Second)
					out, code := r.moat("blocklist", "update")
					if code != 0 {
						t.Fatalf("the update after one killed at %s failed: %d\n%s", step, code, out)
					}
					if got := r.fakes[b].Loaded(); !strings.Contains(got, want) || strings.Contains(got, gone) {
						t.Errorf("after the update the kernel holds:\n%s\nwant %s, not %s (the update said %s)", got, want, gone, out)
					}
					if _, err := os.Lstat(filepath.Join(r.state, engine.IntentFile)); err == nil {
						t.Errorf("the journal is still there")
					}
					if out, code := r.moat("status"); code != 0 || strings.Contains(out, "changed outside moat") {
						t.Errorf("status: %d\n%s", code, out)
					}
				})
			}
		}
	}
}

// newFileListRig is a rig with moat enabled under backend on a policy
// with one file blocklist, "bad", whose file (list) holds 192.0.2.0/24;
// write writes a file, failing the test if it cannot.
func newFileListRig(t *testing.T, backend string) (r *smRig, list string, write func(name, data string)) {
	t.Helper()
	r = newSMRig(t, backend, 1)
	list = filepath.Join(t.TempDir(), "bad.netset")
	write = func(name, data string) {
		t.Helper()
		if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(list, "192.0.2.0/24\n")
	write(r.conf, "default deny incoming\nallow 22/tcp\nblocklist bad file "+list+"\n")
	if out, code := r.moat("--backend", backend, "enable"); code != 0 {
		t.Fatalf("enable: %d\n%s", code, out)
	}
	return r, list, write
}

// savedCopies reads the saved copy of the list "bad" (its two files, by
// name) in the folder of saved copies, saved, so that a test can put it
// back as an update killed before writing it leaves it.
func savedCopies(t *testing.T, r *smRig) (saved string, copies map[string][]byte) {
	t.Helper()
	saved = filepath.Join(r.state, blocklist.Dir)
	copies = map[string][]byte{}
	for _, n := range []string{"bad.list", "bad.json"} {
		data, err := os.ReadFile(filepath.Join(saved, n))
		if err != nil {
			t.Fatal(err)
		}
		copies[n] = data
	}
	return saved, copies
}

// An update writes its marker holding the blocklists' lock, not moat's
// state lock: a command running at the same time (a reload, a ban, an
// allow) removed the marker's temporary file in its repair, as a file a
// kill left, and the update failed ("rename .blocklist-update.pending.N.tmp
// ...: no such file or directory"; found by running updates with other
// commands at once). A marker's temporary file is removed only when no
// update holds the blocklists' lock: by the next update, or the next
// command once none runs.
func TestMarkerTempOfRunningUpdateKept(t *testing.T) {
	r, _, write := newFileListRig(t, "nftables")
	tmp := filepath.Join(r.state, "."+updatingMarker+".123.tmp")
	l, err := statedir.TryLock(r.state, blocklist.LockFile) // the update runs
	if err != nil {
		t.Fatal(err)
	}
	write(tmp, "bad\n") // and writes its marker
	if out, code := r.moat("allow", "80/tcp"); code != 0 {
		t.Fatalf("allow: %d\n%s", code, out)
	}
	if _, err := os.Stat(tmp); err != nil {
		t.Fatalf("the marker a running update writes was removed under it: %v", err)
	}
	l.Unlock() // the update was killed: its temporary file is left
	for _, next := range [][]string{{"blocklist", "update"}, {"reload"}} {
		write(tmp, "bad\n")
		if out, code := r.moat(next...); code != 0 {
			t.Fatalf("%v: %d\n%s", next, code, out)
		}
		if _, err := os.Stat(tmp); !os.IsNotExist(err) {
			t.Errorf("the marker's temporary file a killed update left is still there after %v: %v", next, err)
		}
	}
}

// A command that applies a policy with a file blocklist saves the list's
// copy and metadata holding moat's state lock (no update ever ran, so the
// blocklists' lock file is not there): what a kill during those writes
// left beside them stayed after the next command's repair (found by
// e2e's TestKillDuringBlocklistSwap: ".b.json.N.tmp" after 15 kills).
func TestCopyTempsLeftWithoutUpdateRemoved(t *testing.T) {
	r, _, write := newFileListRig(t, "nftables")
	if _, err := os.Lstat(filepath.Join(r.state, blocklist.LockFile)); err == nil {
		t.Fatal("the blocklists' lock file is there: the test needs a state no update ran in")
	}
	var temps []string
	for _, n := range []string{".bad.json.123.tmp", ".bad.list.456.tmp"} {
		tmp := filepath.Join(r.state, blocklist.Dir, n)
		write(tmp, "torn")
		temps = append(temps, tmp)
	}
	if out, code := r.moat("reload"); code != 0 {
		t.Fatalf("reload: %d\n%s", code, out)
	}
	for _, tmp := range temps {
		if _, err := os.Stat(tmp); !os.IsNotExist(err) {
			t.Errorf("%s left by a killed apply is still there after the next command: %v", tmp, err)
		}
	}
}
