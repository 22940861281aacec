package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/moat-fw/moat/internal/statedir"
)

// bansLockFile is the lock between the writers of the ban sets that do
// not take the state lock (the guard) and the steps that read the ban
// sets and then replace them (a change of backend carries the bans over
// and removes the old backend's sets; a rollback reads the bans in force
// and restores the snapshot). A writer holds it shared for one ban call;
// those steps hold it exclusive from their read to their last write, so
// a ban lands either before the read (and is carried) or after the old
// sets went (and the writer finds the backend that holds moat's rules
// now). It dies with its process: a kill -9 never leaves it held.
const bansLockFile = "bans.lock"

// LockBans takes the bans lock, shared (a ban) or exclusive (a step that
// reads the ban sets and replaces them), waiting for it until ctx ends.
func LockBans(ctx context.Context, dir string, exclusive bool) (unlock func(), err error) {
	f, err := statedir.OpenFile(dir, bansLockFile, os.O_CREATE|os.O_RDWR, statedir.Perm)
	if err != nil {
		return nil, fmt.Errorf("bans lock: %w", err)
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("bans lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("bans lock %s: %w", f.Name(), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return func() { _ = f.Close() }, nil // closing releases the flock
}

// bansLockWait bounds the wait of a change for the bans lock.
const bansLockWait = 30 * time.Second

// HoldBans is holdBans for a caller that retries a change the guard's
// bans keep refusing (they move the ruleset generation): they wait until
// the returned function is called.
func (e *Engine) HoldBans(ctx context.Context) func() { return e.holdBans(ctx) }

// holdBans takes the bans lock exclusive for a step that reads the ban
// sets and replaces them. Without it (a state directory that refuses
// the file, a ban call holding it for more than bansLockWait) the step
// goes on, as it did before the lock, and the holds nested in it do not
// wait again: the firewall matters more than a ban made in that instant.
func (e *Engine) holdBans(ctx context.Context) func() {
	if e.bansHeld > 0 {
		e.bansHeld++
		return func() { e.bansHeld-- }
	}
	// A ban call holds the lock for milliseconds; one stuck in the
	// kernel must not stop a change of the firewall (a rollback).
	limit := bansLockWait
	if e.bansWait > 0 {
		limit = e.bansWait
	}
	wait, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	unlock, err := LockBans(wait, e.o.StateDir, true)
	if err != nil {
		e.warn(fmt.Sprintf("%v (waited up to %s): going on without it; a ban made by the guard at this instant may be lost", err, limit))
		// What this step does within it (the undo of a switch that
		// failed) goes on without it too, rather than wait again.
		e.bansHeld = 1
		return func() { e.bansHeld-- }
	}
	e.bansHeld = 1
	return func() {
		if e.bansHeld--; e.bansHeld == 0 {
			unlock()
		}
	}
}
