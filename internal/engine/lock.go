package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moat-fw/moat/internal/statedir"
)

// Lock serializes every command that changes moat's state: one flock on
// STATE_DIR/lock, held across read, modify, apply and write. A command
// that has to wait says for whom (the holder writes its PID and command
// line into the lock file). The lock dies with its process, so kill -9
// never leaves it stuck.
//
// After taking the lock, Lock finishes or undoes whatever an interrupted
// command left behind (Repair).
func (e *Engine) Lock(ctx context.Context, command string) (unlock func(), err error) {
	return e.lock(ctx, command, true)
}

// LockToRemove takes the lock without repairing anything first: for
// disable and reset, which remove moat's rules and state whatever they
// are, so a state that cannot be repaired never locks the admin out of
// the way back.
func (e *Engine) LockToRemove(ctx context.Context, command string) (unlock func(), err error) {
	return e.lock(ctx, command, false)
}

func (e *Engine) lock(ctx context.Context, command string, repair bool) (unlock func(), err error) {
	if e.lockf != nil {
		return nil, errors.New("moat's state lock is already held by this command")
	}
	dir := e.o.StateDir
	f, err := statedir.OpenFile(dir, lockFile, os.O_CREATE|os.O_RDWR, statedir.Perm)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", filepath.Join(dir, lockFile), err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		e.warn(fmt.Sprintf("waiting for %s to finish", holder(f)))
		if err := flockWait(ctx, f); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
	}
	owner := fmt.Sprintf("%d %s\n", os.Getpid(), command)
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(owner), 0)
	}
	e.lockf = f
	e.repairRolledBack = nil
	unlock = func() {
		if e.lockf != f {
			return
		}
		_ = f.Truncate(0)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
		e.lockf = nil
		e.repairRolledBack = nil
	}
	if !repair {
		return unlock, nil
	}
	if err := e.repair(ctx); err != nil {
		unlock()
		return nil, &repairError{fmt.Errorf("%w\n('moat disable' removes moat's rules and state whatever they are)", err)}
	}
	return unlock, nil
}

// repairError says that Lock took the lock but could not repair what an
// interrupted command left (and let the lock go).
type repairError struct{ err error }

func (r *repairError) Error() string { return r.err.Error() }
func (r *repairError) Unwrap() error { return r.err }

// IsRepairError says whether err is Lock's: it could not repair what an
// interrupted command left (a simulated kill is not one).
func IsRepairError(err error) bool {
	var r *repairError
	return errors.As(err, &r) && !IsCrash(err)
}

// flockWait blocks for the lock, giving up when ctx ends.
func flockWait(ctx context.Context, f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// holder describes who holds the lock: "PID 123 (moat allow 80/tcp)".
func holder(f *os.File) string {
	buf := make([]byte, 512)
	n, _ := f.ReadAt(buf, 0)
	line, _, _ := strings.Cut(string(buf[:n]), "\n")
	pid, cmd, _ := strings.Cut(line, " ")
	if _, err := strconv.Atoi(pid); err != nil {
		return "another moat command"
	}
	s := fmt.Sprintf("PID %s (%s)", pid, sanitize(cmd))
	if procState(pid) == "T" || procState(pid) == "t" {
		// It would never finish by itself: say how to let it.
		s += fmt.Sprintf(", which is STOPPED (SIGSTOP, Ctrl-Z or a debugger): 'kill -CONT %s' lets it finish; Ctrl-C gives up waiting", pid)
	}
	return s
}

// procState is the state letter of a process (/proc/PID/stat field 3),
// "" if it is gone.
func procState(pid string) string {
	data, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// sanitize keeps a command line printable (it is shown to the admin).
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

func (e *Engine) mustHoldLock() error {
	if e.lockf == nil {
		return errors.New("internal error: a state change without moat's state lock")
	}
	return nil
}

// NeedsRepair reports whether the state lock's repair (Lock) has work to
// do that can change the applied record: a journal of a command
// interrupted half way, or a change waiting for confirmation (its
// rollback may be due). A caller that reads the applied record before
// taking the lock (blocklist update) takes it first when so.
func NeedsRepair(dir string) bool {
	for _, name := range []string{IntentFile, pendingFile} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return true
		}
	}
	return false
}
