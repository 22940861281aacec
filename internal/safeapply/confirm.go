package safeapply

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/statedir"
)

// Restorer puts moat's kernel state back to a snapshot.
type Restorer interface {
	Restore(ctx context.Context, snap []byte) error
}

// RestoreFunc adapts a function to Restorer.
type RestoreFunc func(ctx context.Context, snap []byte) error

// Restore calls f.
func (f RestoreFunc) Restore(ctx context.Context, snap []byte) error { return f(ctx, snap) }

// Pending is an applied change waiting for `moat confirm`.
type Pending struct {
	ID          string    `json:"id"`
	Backend     string    `json:"backend"`
	Deadline    time.Time `json:"deadline"`
	Created     time.Time `json:"created"`
	WatchdogPID int       `json:"watchdog_pid"`
	BootID      string    `json:"boot_id"`
	PolicyPath  string    `json:"policy_path"`
	// HadPolicy is false when there was no policy file before the change.
	HadPolicy bool `json:"had_policy"`
	// PrevBackend had moat's rules before the change ("" if none).
	PrevBackend string `json:"prev_backend"`
	// Persist: on confirm, save the policy for boot.
	Persist bool `json:"persist"`
}

// Outcome is how the last pending change ended.
type Outcome struct {
	ID      string    `json:"id"`
	Outcome string    `json:"outcome"` // "confirmed" or "rolled back"
	Time    time.Time `json:"time"`
}

const outcomeFile = "last-outcome.json"

// writeOutcome records how change id ended, for the command waiting for
// it and for 'moat confirm' after a rollback.
func writeOutcome(dir, id, outcome string) error {
	data, err := json.Marshal(Outcome{ID: id, Outcome: outcome, Time: time.Now()})
	if err == nil {
		err = statedir.WriteFile(dir, outcomeFile, data)
	}
	if err != nil {
		return fmt.Errorf("record that the change was %s: %w", outcome, err)
	}
	return nil
}

// LastOutcome reads how the last pending change ended.
func LastOutcome(dir string) (*Outcome, error) {
	data, err := statedir.ReadFile(dir, outcomeFile)
	if err != nil {
		return nil, err
	}
	var o Outcome
	if err := json.Unmarshal(data, &o); err != nil {
		return nil, err
	}
	return &o, nil
}

const (
	pendingFile  = "pending.json"
	snapshotFile = "pending.snapshot"
	policyFile   = "pending.policy"
	lockFile     = "lock"
	// LogFile is where the watchdog writes what it did.
	LogFile = "moat.log"
)

// ErrNoPending means there is no change waiting for confirmation.
var ErrNoPending = errors.New("no change is waiting for confirmation")

func bootID() string {
	data, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(data))
}

// lock takes the state directory's lock, so a confirm and a rollback
// firing at the same moment cannot interleave.
func lock(dir string) (func(), error) {
	l, err := statedir.WaitLock(dir, lockFile, nil)
	if err != nil {
		return nil, fmt.Errorf("lock state: %w", err)
	}
	return l.Unlock, nil
}

// LoadPending returns the change waiting for confirmation, or ErrNoPending.
// A pending change from an earlier boot is stale: nothing can roll it back
// any more, and the boot loaded the saved ruleset anyway.
func LoadPending(dir string) (*Pending, error) {
	data, err := statedir.ReadFile(dir, pendingFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoPending
	}
	if err != nil {
		return nil, fmt.Errorf("read pending change: %w", err)
	}
	var p Pending
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("read pending change: %w", err)
	}
	if p.BootID != bootID() {
		if err := clearPending(dir); err != nil {
			return nil, err
		}
		return nil, ErrNoPending
	}
	return &p, nil
}

func clearPending(dir string) error {
	var errs []error
	for _, f := range []string{pendingFile, snapshotFile, policyFile} {
		if err := statedir.Remove(dir, f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("clear pending change: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Arm records what to go back to (the kernel snapshot and the policy file
// as it was) and starts a watchdog: a separate process in its own session,
// so the terminal closing, SIGHUP, or the caller being killed do not stop
// it. self is the moat binary; args are the global flags it needs
// (state directory).
func Arm(dir string, p *Pending, snapshot, oldPolicy []byte, wait time.Duration, self string, args []string) (*Pending, error) {
	unlock, err := lock(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if old, err := LoadPending(dir); err == nil {
		return nil, fmt.Errorf("a change applied at %s is still waiting for confirmation: run 'moat confirm' or 'moat rollback' first", old.Created.Format(time.TimeOnly))
	}
	idb := make([]byte, 8)
	if _, err := rand.Read(idb); err != nil {
		return nil, fmt.Errorf("change id: %w", err)
	}
	p.ID, p.Created, p.Deadline, p.BootID = hex.EncodeToString(idb), time.Now(), time.Now().Add(wait), bootID()
	if err := statedir.WriteFile(dir, snapshotFile, snapshot); err != nil {
		return nil, fmt.Errorf("save snapshot: %w", err)
	}
	if err := statedir.WriteFile(dir, policyFile, oldPolicy); err != nil {
		return nil, fmt.Errorf("save policy: %w", err)
	}
	logf, err := statedir.OpenFile(dir, LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, statedir.Perm)
	if err != nil {
		return nil, fmt.Errorf("watchdog log: %w", err)
	}
	// The watchdog has its own descriptor once started; ours only goes.
	defer func() { _ = logf.Close() }()
	cmd := exec.Command(self, append(append([]string{}, args...), "watchdog", p.ID)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start rollback watchdog: %w", err)
	}
	p.WatchdogPID = cmd.Process.Pid
	if err := cmd.Process.Release(); err != nil {
		return nil, errors.Join(fmt.Errorf("start rollback watchdog: %w", err), stopWatchdog(p))
	}
	data, err := json.MarshalIndent(p, "", "  ")
	if err == nil {
		err = statedir.WriteFile(dir, pendingFile, data)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("save pending change: %w", err), stopWatchdog(p))
	}
	return p, nil
}

// Confirm keeps the change: the rollback is disarmed.
func Confirm(dir string) (*Pending, error) {
	unlock, err := lock(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	p, err := LoadPending(dir)
	if err != nil {
		return nil, err
	}
	if err := clearPending(dir); err != nil {
		return nil, err
	}
	if err := errors.Join(stopWatchdog(p), writeOutcome(dir, p.ID, "confirmed")); err != nil {
		return p, fmt.Errorf("confirmed, but: %w", err)
	}
	return p, nil
}

// Disarm drops a pending change without restoring anything (the change
// failed to apply, or moat's rules were removed altogether).
func Disarm(dir string) error {
	unlock, err := lock(dir)
	if err != nil {
		return err
	}
	defer unlock()
	p, err := LoadPending(dir)
	if err != nil {
		return nil
	}
	if err := clearPending(dir); err != nil {
		return err
	}
	return stopWatchdog(p)
}

// stopWatchdog ends the watchdog of p; one that is gone already is fine
// (and one that lives on finds no pending change and exits by itself).
func stopWatchdog(p *Pending) error {
	if p.WatchdogPID > 0 && p.WatchdogPID != os.Getpid() {
		if err := syscall.Kill(p.WatchdogPID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("stop the rollback watchdog (pid %d): %w", p.WatchdogPID, err)
		}
	}
	return nil
}

// Rollback restores the state before the pending change (kernel and policy
// file) and disarms the watchdog. id, when set, must match the pending
// change (the watchdog only rolls back its own).
func Rollback(ctx context.Context, dir, id string, r Restorer, log *slog.Logger) (*Pending, error) {
	unlock, err := lock(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	p, err := LoadPending(dir)
	if err != nil {
		return nil, err
	}
	if id != "" && p.ID != id {
		return nil, ErrNoPending
	}
	snap, err := statedir.ReadFile(dir, snapshotFile)
	if err != nil {
		return nil, fmt.Errorf("rollback: read snapshot: %w", err)
	}
	if err := r.Restore(ctx, snap); err != nil {
		return nil, fmt.Errorf("rollback: %w", err)
	}
	old, err := statedir.ReadFile(dir, policyFile)
	if err != nil {
		return nil, fmt.Errorf("rollback: read saved policy: %w", err)
	}
	// Keep the unconfirmed policy beside the restored one, so the admin's
	// edits are not lost.
	if cur, err := policy.ReadFile(p.PolicyPath); err == nil && string(cur) != string(old) {
		if err := atomicfile.WriteFile(p.PolicyPath+".unconfirmed", cur, 0o644); err != nil {
			log.Warn("could not keep the unconfirmed policy", "err", err)
		}
	}
	if p.HadPolicy {
		if err := atomicfile.WriteFile(p.PolicyPath, old, 0o644); err != nil {
			return nil, fmt.Errorf("rollback: restore %s: %w", p.PolicyPath, err)
		}
	} else if err := os.Remove(p.PolicyPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("rollback: remove %s: %w", p.PolicyPath, err)
	}
	if err := clearPending(dir); err != nil {
		return nil, fmt.Errorf("rollback: %w", err)
	}
	var stopErr error
	if id == "" {
		stopErr = stopWatchdog(p)
	}
	if err := errors.Join(stopErr, writeOutcome(dir, p.ID, "rolled back")); err != nil {
		log.Warn("rolled back, but", "err", err)
	}
	log.Warn("rolled back an unconfirmed change", "applied", p.Created.Format(time.RFC3339), "deadline", p.Deadline.Format(time.RFC3339),
		"backend", p.Backend, "policy", p.PolicyPath, "unconfirmed_policy_kept_in", p.PolicyPath+".unconfirmed")
	return p, nil
}

// Watch is the watchdog: it waits for the deadline of change id and rolls
// it back unless it was confirmed or rolled back meanwhile.
func Watch(ctx context.Context, dir, id string, r Restorer, log *slog.Logger) error {
	for {
		p, err := LoadPending(dir)
		if err != nil || p.ID != id {
			return nil // confirmed or rolled back: nothing to do
		}
		left := time.Until(p.Deadline)
		if left <= 0 {
			_, err := Rollback(ctx, dir, id, r, log)
			if errors.Is(err, ErrNoPending) {
				return nil
			}
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(left, 200*time.Millisecond)):
		}
	}
}
