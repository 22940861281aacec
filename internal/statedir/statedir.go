// Package statedir opens files in moat's state directory (/var/lib/moat)
// safely. moat runs as root and trusts what it reads there (saved rulesets,
// pending rollbacks, ban history), so:
//
//   - the directory and every directory above it must belong to root (or to
//     the user running moat) and be writable by nobody else (a world-writable
//     ancestor is accepted only with the sticky bit, as /tmp has);
//   - the directory is created 0700, files 0600;
//   - no file in it is opened through a symbolic link (O_NOFOLLOW), and only
//     regular files are read or written.
//
// Every writer of the state directory goes through this package.
package statedir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/boundedfile"
)

// Perm is the mode of files moat creates in its state directory.
const Perm = 0o600

// UnsafeError says why a state directory (or a file in it) is refused.
type UnsafeError struct {
	Path   string
	Reason string
	Fix    string
}

func (e *UnsafeError) Error() string {
	s := "unsafe state directory: " + e.Path + " " + e.Reason
	if e.Fix != "" {
		s += " (fix: " + e.Fix + ")"
	}
	return s
}

// Ensure creates dir (0700, with missing parents 0755) if it does not exist,
// then checks it as Check does.
func Ensure(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
		// MkdirAll applies the umask; make sure of 0700.
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
	}
	return Check(dir)
}

// Check refuses a state directory that someone other than root (or the
// user running moat) could change: owned by another user, writable by group
// or others, or below such a directory.
func Check(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("state directory %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if !fi.IsDir() {
		return &UnsafeError{Path: abs, Reason: "is not a directory"}
	}
	if err := checkOwner(abs, fi, "chown root:root "+abs); err != nil {
		return err
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return &UnsafeError{Path: abs, Reason: fmt.Sprintf("is writable by group or others (mode %04o)", fi.Mode().Perm()),
			Fix: "chmod 0700 " + abs}
	}
	// Every directory above: another user able to rename or replace an
	// ancestor could swap the state directory for one of theirs.
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		pi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("state directory %s: %w", abs, err)
		}
		if err := checkOwner(p, pi, "chown root "+p); err != nil {
			err.(*UnsafeError).Reason += ", above the state directory " + abs
			return err
		}
		if pi.Mode().Perm()&0o022 != 0 && pi.Mode()&os.ModeSticky == 0 {
			return &UnsafeError{Path: p, Reason: fmt.Sprintf("is writable by group or others (mode %04o) and lies above the state directory %s", pi.Mode().Perm(), abs),
				Fix: "chmod go-w " + p + ", or use another --state-dir"}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func checkOwner(path string, fi os.FileInfo, fix string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return &UnsafeError{Path: path, Reason: fmt.Sprintf("is owned by uid %d, not root", st.Uid), Fix: fix}
	}
	return nil
}

// OpenFile opens name inside dir without following a symbolic link, after
// checking dir (created if missing when flag has O_CREATE). New files get
// mode perm. Only regular files are opened.
func OpenFile(dir, name string, flag int, perm os.FileMode) (*os.File, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	check := Check
	if flag&os.O_CREATE != 0 {
		check = Ensure
	}
	if err := check(dir); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, name)
	// O_NONBLOCK: a FIFO planted here must not hang moat; it is refused below.
	f, _, err := boundedfile.OpenFile(path, flag|syscall.O_NOFOLLOW, perm)
	if errors.Is(err, syscall.ELOOP) {
		return nil, &UnsafeError{Path: path, Reason: "is a symbolic link; moat does not follow links in its state directory",
			Fix: "rm " + path}
	}
	if errors.Is(err, boundedfile.ErrNotRegular) {
		return nil, &UnsafeError{Path: path, Reason: "is not a regular file", Fix: "rm " + path}
	}
	if err != nil {
		return nil, err
	}
	if err := setBlocking(f); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	return f, nil
}

func setBlocking(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.SetNonblock(int(fd), false) }); err != nil {
		return err
	}
	return serr
}

func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return fmt.Errorf("state file name %q: want a plain file name", name)
	}
	return nil
}

// ReadFile reads name in dir (not through a link). A missing file is an
// error that satisfies errors.Is(err, os.ErrNotExist).
func ReadFile(dir, name string) ([]byte, error) {
	f, err := OpenFile(dir, name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read only
	// Room for the whole file at once (io.ReadAll alone grows by copies:
	// a 1.8 MB record made 4.5 MB of allocations).
	size := int64(0)
	if st, err := f.Stat(); err == nil && st.Size() > 0 && st.Size() < 1<<30 {
		size = st.Size()
	}
	buf := bytes.NewBuffer(make([]byte, 0, size+bytes.MinRead))
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// notReplaceable turns the error of a write whose target is there but is
// neither a regular file nor a link (a directory: damage, or planted)
// into the error the reads give, which names the fix; rename's "file
// exists" named none.
func notReplaceable(path string, err error) error {
	if err == nil {
		return nil
	}
	if fi, lerr := os.Lstat(path); lerr == nil && !fi.Mode().IsRegular() && fi.Mode()&os.ModeSymlink == 0 {
		return &UnsafeError{Path: path, Reason: "is not a regular file", Fix: "rm -r " + path}
	}
	return err
}

// WriteFile replaces name in dir atomically (a new file beside it, fsynced,
// renamed over it), mode 0600. A symbolic link at name is replaced, never
// followed.
func WriteFile(dir, name string, data []byte) error {
	if err := validName(name); err != nil {
		return err
	}
	if err := Ensure(dir); err != nil {
		return err
	}
	return notReplaceable(filepath.Join(dir, name), atomicfile.WriteFile(filepath.Join(dir, name), data, Perm))
}

// WriteFileSyncDirLater is WriteFile leaving the directory's sync to the
// caller (SyncDir, or a WriteFile into dir right after, which syncs it):
// see atomicfile.WriteFileSyncDirLater.
func WriteFileSyncDirLater(dir, name string, data []byte) error {
	if err := validName(name); err != nil {
		return err
	}
	if err := Ensure(dir); err != nil {
		return err
	}
	return notReplaceable(filepath.Join(dir, name), atomicfile.WriteFileSyncDirLater(filepath.Join(dir, name), data, Perm))
}

// Prepare is WriteFileSyncDirLater up to the rename: the file is written
// and synced beside name, and put in place by its Commit (then SyncDir).
func Prepare(dir, name string, data []byte) (*atomicfile.Prepared, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if err := Ensure(dir); err != nil {
		return nil, err
	}
	return atomicfile.Prepare(filepath.Join(dir, name), data, Perm)
}

// SyncDir makes the renames done in dir durable.
func SyncDir(dir string) error {
	return atomicfile.SyncDir(dir)
}

// WriteCache is WriteFile without the fsyncs (atomicfile.WriteCache): for
// a file that may be old, empty or missing after a power failure because
// its reader checks it and rebuilds it (kernel-fingerprint.json).
func WriteCache(dir, name string, data []byte) error {
	if err := validName(name); err != nil {
		return err
	}
	if err := Ensure(dir); err != nil {
		return err
	}
	return notReplaceable(filepath.Join(dir, name), atomicfile.WriteCache(filepath.Join(dir, name), data, Perm))
}

// MarshalJSON is a state file's text for v: indented for the admin's eyes
// when small (under 64 KiB), compact when large (indenting a 100,000-line
// policy cost a pass over megabytes).
func MarshalJSON(v any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(data) < 64<<10 {
		var buf bytes.Buffer
		if json.Indent(&buf, data, "", "  ") == nil {
			data = buf.Bytes()
		}
	}
	return data, nil
}

// Remove removes name in dir (a link is removed, not its target); a missing
// file is not an error.
func Remove(dir, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Lock is an exclusive flock(2) on a file in the state directory, with the
// holder's PID written in it.
type Lock struct {
	f *os.File
}

// HeldError says that another process holds a lock.
type HeldError struct {
	Path string
	PID  int // 0 if the holder has not written its PID yet
}

func (e *HeldError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("%s is held by PID %d", e.Path, e.PID)
	}
	return e.Path + " is held by another process"
}

// TryLock takes the lock name in dir, or fails at once with a *HeldError
// naming the PID that holds it.
func TryLock(dir, name string) (*Lock, error) {
	return lock(dir, name, nil, false)
}

// WaitLock takes the lock name in dir, waiting while another process holds
// it; waiting (if not nil) is called once, with the holder's PID, before
// waiting.
func WaitLock(dir, name string, waiting func(pid int)) (*Lock, error) {
	return lock(dir, name, waiting, true)
}

func lock(dir, name string, waiting func(int), wait bool) (*Lock, error) {
	f, err := OpenFile(dir, name, os.O_CREATE|os.O_RDWR, Perm)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", filepath.Join(dir, name), err)
	}
	err = flock(f, syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		held := &HeldError{Path: f.Name(), PID: readPID(f)}
		if !wait {
			return nil, errors.Join(held, f.Close())
		}
		if waiting != nil {
			waiting(held.PID)
		}
		err = flock(f, syscall.LOCK_EX)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("lock %s: %w", f.Name(), err), f.Close())
	}
	// The PID, for whoever finds the lock held (a courtesy: the lock
	// itself is the flock).
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Held reports whether a process holds the lock name in dir, and its PID
// (0 while it has not written it yet). It creates nothing and takes
// nothing: a lock file left by a dead holder is not held.
func Held(dir, name string) (pid int, held bool) {
	f, err := OpenFile(dir, name, os.O_RDONLY, 0)
	if err != nil {
		return 0, false
	}
	defer func() { _ = f.Close() }() // read only; closing drops our lock
	if err := flock(f, syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		return 0, false // nobody holds it
	}
	return readPID(f), true
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

func readPID(f *os.File) int {
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// Unlock releases the lock. The file stays (removing it would let two
// processes lock two different files).
func (l *Lock) Unlock() {
	if l == nil || l.f == nil {
		return
	}
	// Closing the descriptor releases the flock whatever the first two
	// say; the PID is only a courtesy.
	_ = l.f.Truncate(0)
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	_ = l.f.Close()
	l.f = nil
}
