package statedir

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func newDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	if err := Ensure(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestEnsureCreates0700(t *testing.T) {
	dir := newDir(t)
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("%v %v", fi.Mode(), err)
	}
	f, err := OpenFile(dir, "x", os.O_CREATE|os.O_WRONLY, Perm)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "x")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v", fi.Mode())
	}
}

func wantUnsafe(t *testing.T, err error, words ...string) {
	t.Helper()
	var u *UnsafeError
	if !errors.As(err, &u) {
		t.Fatalf("want an unsafe-directory error, got %v", err)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

// A state directory others can write to is refused, with the fix; nothing
// is created in it.
func TestRefuseWritableDir(t *testing.T) {
	for _, mode := range []os.FileMode{0o777, 0o770, 0o702} {
		dir := newDir(t)
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		wantUnsafe(t, Check(dir), dir, "writable by group or others", "chmod 0700 "+dir)
		_, err := OpenFile(dir, "guard.journal", os.O_CREATE|os.O_WRONLY|os.O_APPEND, Perm)
		wantUnsafe(t, err, dir)
		wantUnsafe(t, WriteFile(dir, "guard.json", []byte("{}")), dir)
		if _, err := TryLock(dir, "lock"); err == nil {
			t.Error("locked in an unsafe directory")
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("mode %v: files created: %v", mode, entries)
		}
	}
}

func TestRefuseForeignOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	dir := newDir(t)
	if err := os.Chown(dir, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	wantUnsafe(t, Check(dir), "owned by uid 1000", "chown root:root")
}

func TestRefuseWritableAncestor(t *testing.T) {
	top := t.TempDir()
	mid := filepath.Join(top, "open")
	dir := filepath.Join(mid, "state")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(mid, 0o777); err != nil {
		t.Fatal(err)
	}
	wantUnsafe(t, Check(dir), mid, "above the state directory")
	// With the sticky bit (like /tmp), others cannot rename our directory.
	if err := os.Chmod(mid, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := Check(dir); err != nil {
		t.Fatal(err)
	}
}

// A symbolic link planted in the state directory is never followed: not to
// read, not to append, not to lock; an atomic write replaces the link.
func TestNoFollow(t *testing.T) {
	dir := newDir(t)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"moat.log", "guard.journal", "guard.json", "lock"} {
		if err := os.Symlink(victim, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := OpenFile(dir, "moat.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, Perm)
	wantUnsafe(t, err, "symbolic link", "moat.log")
	_, err = ReadFile(dir, "guard.json")
	wantUnsafe(t, err, "symbolic link")
	_, err = TryLock(dir, "lock")
	wantUnsafe(t, err, "symbolic link")
	if err := WriteFile(dir, "guard.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(victim); string(data) != "precious\n" {
		t.Fatalf("the link's target was written: %q", data)
	}
	if fi, _ := os.Stat(victim); fi.Mode().Perm() != 0o644 {
		t.Fatalf("the link's target changed mode: %v", fi.Mode())
	}
}

// A FIFO planted in the state directory neither hangs moat nor is used.
func TestRefuseFIFO(t *testing.T) {
	dir := newDir(t)
	if err := syscall.Mkfifo(filepath.Join(dir, "guard.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ReadFile(dir, "guard.json")
	wantUnsafe(t, err, "not a regular file")
}

func TestBadNames(t *testing.T) {
	dir := newDir(t)
	for _, n := range []string{"", ".", "..", "../x", "a/b"} {
		if _, err := OpenFile(dir, n, os.O_RDONLY, 0); err == nil {
			t.Errorf("opened %q", n)
		}
	}
}

// The second locker learns the holder's PID; after Unlock it gets it.
func TestLockNamesHolder(t *testing.T) {
	dir := newDir(t)
	l, err := TryLock(dir, "guard.lock")
	if err != nil {
		t.Fatal(err)
	}
	if pid, ok := Held(dir, "guard.lock"); !ok || pid != os.Getpid() {
		t.Fatalf("Held = %d, %v; want %d, true", pid, ok, os.Getpid())
	}
	if pid, ok := Held(dir, "other.lock"); ok || pid != 0 {
		t.Fatalf("Held of a missing lock = %d, %v", pid, ok)
	}
	_, err = TryLock(dir, "guard.lock")
	var held *HeldError
	if !errors.As(err, &held) || held.PID != os.Getpid() || !strings.Contains(err.Error(), "PID "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("want held by %d, got %v", os.Getpid(), err)
	}
	done := make(chan *Lock)
	var waitedFor atomic.Int64
	go func() {
		l2, err := WaitLock(dir, "guard.lock", func(pid int) { waitedFor.Store(int64(pid)) })
		if err != nil {
			t.Error(err)
		}
		done <- l2
	}()
	// Unlock only once the waiter waits, so the callback is certain.
	for i := 0; waitedFor.Load() == 0 && i < 1000; i++ {
		select {
		case l2 := <-done:
			t.Fatalf("took a held lock: %v", l2)
		default:
		}
		time.Sleep(time.Millisecond)
	}
	l.Unlock()
	l2 := <-done
	if int(waitedFor.Load()) != os.Getpid() {
		t.Errorf("waiting callback got PID %d", waitedFor.Load())
	}
	l2.Unlock()
	if pid, ok := Held(dir, "guard.lock"); ok {
		t.Fatalf("Held after Unlock = %d, true", pid)
	}
	if l3, err := TryLock(dir, "guard.lock"); err != nil {
		t.Fatal(err)
	} else {
		l3.Unlock()
	}
}

// A small state file is indented for the admin; a large one is compact.
func TestMarshalJSON(t *testing.T) {
	small, err := MarshalJSON(map[string]string{"a": "b"})
	if err != nil || string(small) != "{\n  \"a\": \"b\"\n}" {
		t.Fatalf("small: %q, %v; want indented", small, err)
	}
	large, err := MarshalJSON(map[string]string{"a": strings.Repeat("x", 64<<10), "b": "c"})
	if err != nil || strings.Contains(string(large), "\n") || len(large) < 64<<10 {
		t.Fatalf("large: %d bytes, newline %v, %v; want compact", len(large), strings.Contains(string(large), "\n"), err)
	}
}

// A state file is read into one buffer of its size: io.ReadAll alone grew
// its buffer by copies (4.5 MB allocated for a 1.8 MB element record).
func TestReadFileOneBuffer(t *testing.T) {
	dir := newDir(t)
	data := []byte(strings.Repeat("2001:db8:ffff:ffff::/64 0123456789abcdef\n", 50_000))
	if err := WriteFile(dir, "big", data); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	got, err := ReadFile(dir, "big")
	runtime.ReadMemStats(&after)
	if err != nil || string(got) != string(data) {
		t.Fatalf("ReadFile: %d bytes, %v", len(got), err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > uint64(len(data))*5/4 {
		t.Errorf("reading %d bytes allocated %d", len(data), n)
	}
}

// A directory where a record goes (damage, or planted): the write failed
// with rename's "file exists", which names no fix, and 'moat confirm'
// (saving for boot) said only that. It is refused as the reads refuse
// it: "is not a regular file (fix: rm -r PATH)", and leaves no temporary
// file. A symbolic link there is still replaced, not followed.
func TestWriteOverDirectoryNamed(t *testing.T) {
	dir := newDir(t)
	for _, write := range []func(string) error{
		func(n string) error { return WriteFile(dir, n, []byte("{}")) },
		func(n string) error { return WriteFileSyncDirLater(dir, n, []byte("{}")) },
		func(n string) error { return WriteCache(dir, n, []byte("{}")) },
	} {
		path := filepath.Join(dir, "saved.json")
		if err := os.MkdirAll(filepath.Join(path, "x"), 0o700); err != nil {
			t.Fatal(err)
		}
		err := write("saved.json")
		var ue *UnsafeError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "is not a regular file") || !strings.Contains(err.Error(), "rm -r "+path) {
			t.Errorf("write over a directory: %v", err)
		}
		if err := os.RemoveAll(path); err != nil {
			t.Fatal(err)
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".tmp") {
				t.Errorf("left: %s", e.Name())
			}
		}
	}
}
