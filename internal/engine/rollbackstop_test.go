package engine

import (
	"context"
	"errors"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// 'moat rollback' killed once it removed the pending change's record but
// before it told the watchdog to stop: the watchdog, finding the record
// gone and no outcome for its change, waits for the deadline and then
// rolls back again the copy it read (the snapshot gone, the policy file
// put back over whatever was edited since). Found under load by
// TestKillSettlingAPendingChange ("watchdog process left behind"). The
// watchdog is stopped before the record goes, so a kill anywhere after
// leaves none.
func TestRollbackKilledAfterClearingStopsWatchdog(t *testing.T) {
	r := newRig(t)
	var procs []*exec.Cmd
	t.Cleanup(func() {
		for _, c := range procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	r.eng.o.StartWatchdog = func(id string) (int, error) {
		// A stand-in with the watchdog's arguments.
		c := exec.Command("/bin/sh", "-c", "sleep 30", "watchdog", id)
		if err := c.Start(); err != nil {
			return 0, err
		}
		procs = append(procs, c)
		time.Sleep(50 * time.Millisecond) // let it exec
		return c.Process.Pid, nil
	}
	r.write(base)
	_, err := r.enable(r.ch(0))
	r.must(err)
	res, err := r.add(r.ch(time.Minute), "allow 443/tcp")
	r.must(err)
	if !res.Pending.Watchdog.Alive() {
		t.Fatal("the watchdog is not recognized")
	}
	r.crashAt = "rollback-cleared"
	if err := r.rollback(); !IsCrash(err) {
		t.Fatalf("the rollback was not killed after clearing the record: %v", err)
	}
	if _, err := LoadPending(r.dir); !errors.Is(err, ErrNoPending) {
		t.Fatalf("the record is still there: %v", err)
	}
	r.backAtBase()
	done := make(chan error, 1)
	go func() { done <- procs[0].Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Errorf("the watchdog ended otherwise than stopped: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watchdog was not told to stop: it rolls back its copy again at the deadline")
	}
	procs = nil
}

// The same for the undo of a command killed after it armed its change:
// the next command's repair drops the armed change (its records, then
// its outcome). Killed between the records' removal and the watchdog's
// stop, nothing stopped the watchdog any more (the journal's next undo
// finds no armed change), and it rolled back its copy at the deadline.
func TestUndoOfArmedChangeKilledAfterClearingStopsWatchdog(t *testing.T) {
	r := newRig(t)
	var procs []*exec.Cmd
	t.Cleanup(func() {
		for _, c := range procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	r.eng.o.StartWatchdog = func(id string) (int, error) {
		c := exec.Command("/bin/sh", "-c", "sleep 30", "watchdog", id)
		if err := c.Start(); err != nil {
			return 0, err
		}
		procs = append(procs, c)
		time.Sleep(50 * time.Millisecond) // let it exec
		return c.Process.Pid, nil
	}
	r.write(base)
	_, err := r.enable(r.ch(0))
	r.must(err)
	r.crashAt = "kernel" // the change armed and in the kernel
	if _, err := r.add(r.ch(time.Minute), "allow 443/tcp"); !IsCrash(err) {
		t.Fatalf("the change was not killed after the kernel took it: %v", err)
	}
	if len(procs) != 1 {
		t.Fatalf("%d watchdogs started", len(procs))
	}
	r.crashAt = "armed-dropped"
	if err := r.do(func(context.Context, *Engine) error { return nil }); !IsCrash(err) {
		t.Fatalf("the undo was not killed after dropping the armed change: %v", err)
	}
	if _, err := LoadPending(r.dir); !errors.Is(err, ErrNoPending) {
		t.Fatalf("the record is still there: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- procs[0].Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Errorf("the watchdog ended otherwise than stopped: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watchdog was not told to stop: it rolls back its copy again at the deadline")
	}
	procs = nil
	r.must(r.do(func(context.Context, *Engine) error { return nil })) // the journal's undo, again
	r.backAtBase()
}

// The same for 'moat disable' with a change waiting: killed once the
// pending record was cleared, before the outcome and the watchdog's stop,
// the watchdog was left, and at the deadline loaded the policy of before
// the change (its snapshot gone) on top of the disable.
func TestDisableKilledAfterClearingStopsWatchdog(t *testing.T) {
	r := newRig(t)
	var procs []*exec.Cmd
	t.Cleanup(func() {
		for _, c := range procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	r.eng.o.StartWatchdog = func(id string) (int, error) {
		c := exec.Command("/bin/sh", "-c", "sleep 30", "watchdog", id)
		if err := c.Start(); err != nil {
			return 0, err
		}
		procs = append(procs, c)
		time.Sleep(50 * time.Millisecond) // let it exec
		return c.Process.Pid, nil
	}
	r.write(base)
	_, err := r.enable(r.ch(0))
	r.must(err)
	r.waiting()
	r.crashAt = "disable-pending-cleared"
	ctx := context.Background()
	unlock, err := r.eng.LockToRemove(ctx, "moat disable")
	r.must(err)
	err = r.eng.Disable(ctx)
	unlock()
	if !IsCrash(err) {
		t.Fatalf("disable was not killed after clearing the record: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- procs[0].Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Errorf("the watchdog ended otherwise than stopped: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watchdog was not told to stop: it rolls back its copy on top of the disable at the deadline")
	}
	procs = nil
}
