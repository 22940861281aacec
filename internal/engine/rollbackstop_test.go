package engine

import (
	"context"
	"errors"
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
	r := enabledRig(t)
	w := r.standInWatchdogs()
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
	w.stopped("it rolls back its copy again at the deadline")
}

// The same for the undo of a command killed after it armed its change:
// the next command's repair drops the armed change (its records, then
// its outcome). Killed between the records' removal and the watchdog's
// stop, nothing stopped the watchdog any more (the journal's next undo
// finds no armed change), and it rolled back its copy at the deadline.
func TestUndoOfArmedChangeKilledAfterClearingStopsWatchdog(t *testing.T) {
	r := enabledRig(t)
	w := r.standInWatchdogs()
	r.crashAt = "kernel" // the change armed and in the kernel
	if _, err := r.add(r.ch(time.Minute), "allow 443/tcp"); !IsCrash(err) {
		t.Fatalf("the change was not killed after the kernel took it: %v", err)
	}
	if len(w.procs) != 1 {
		t.Fatalf("%d watchdogs started", len(w.procs))
	}
	r.crashAt = "armed-dropped"
	if err := r.do(func(context.Context, *Engine) error { return nil }); !IsCrash(err) {
		t.Fatalf("the undo was not killed after dropping the armed change: %v", err)
	}
	if _, err := LoadPending(r.dir); !errors.Is(err, ErrNoPending) {
		t.Fatalf("the record is still there: %v", err)
	}
	w.stopped("it rolls back its copy again at the deadline")
	r.must(r.do(func(context.Context, *Engine) error { return nil })) // the journal's undo, again
	r.backAtBase()
}

// The same for 'moat disable' with a change waiting: killed once the
// pending record was cleared, before the outcome and the watchdog's stop,
// the watchdog was left, and at the deadline loaded the policy of before
// the change (its snapshot gone) on top of the disable.
func TestDisableKilledAfterClearingStopsWatchdog(t *testing.T) {
	r := enabledRig(t)
	w := r.standInWatchdogs()
	r.waiting()
	r.crashAt = "disable-pending-cleared"
	err := r.disable()
	if !IsCrash(err) {
		t.Fatalf("disable was not killed after clearing the record: %v", err)
	}
	w.stopped("it rolls back its copy on top of the disable at the deadline")
}
