package guard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// runFile is held locked (flock) by a running guard for its whole life and
// holds its PID. The kernel drops the lock when the process dies, even by
// kill -9, so a stale file never passes for a running guard.
const runFile = "guard.pid"

// ErrRunning says another guard already follows the log with this state.
var ErrRunning = errors.New("another moat guard is running")

// HoldRunning marks this process as the running guard of the state in dir
// until release is called (or the process ends). A second guard on the
// same state gets ErrRunning, naming the first one's PID.
func HoldRunning(dir string) (release func() error, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("guard: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, runFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("guard: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := readPID(f)
		return nil, errors.Join(fmt.Errorf("%w (pid %d)", ErrRunning, pid), f.Close())
	}
	if err := writePID(f, os.Getpid()); err != nil {
		return nil, errors.Join(fmt.Errorf("guard: write %s: %w", f.Name(), err), f.Close())
	}
	return func() error {
		// Empty the file first: a reader between the two steps must not
		// see the PID of a guard that is stopping.
		return errors.Join(f.Truncate(0), syscall.Flock(int(f.Fd()), syscall.LOCK_UN), f.Close())
	}, nil
}

// Running reports whether a guard holds the state in dir, and its PID.
func Running(dir string) (pid int, ok bool) {
	f, err := os.Open(filepath.Join(dir, runFile))
	if err != nil {
		return 0, false
	}
	defer func() { _ = f.Close() }() // read-only: nothing to lose
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		// Nobody holds it: no guard runs.
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return 0, false
	}
	pid, _ = readPID(f) // 0 while a starting guard has not written it yet
	return pid, true
}

func readPID(f *os.File) (int, error) {
	buf := make([]byte, 32)
	n, err := f.ReadAt(buf, 0)
	if n == 0 {
		return 0, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return strconv.Atoi(strings.TrimSpace(string(buf[:n])))
}

func writePID(f *os.File, pid int) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(pid)+"\n"), 0); err != nil {
		return err
	}
	return f.Sync()
}
