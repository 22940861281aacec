package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/blocklist"
	"github.com/moat-fw/moat/internal/gctune"
	"github.com/moat-fw/moat/internal/guard"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
	"github.com/moat-fw/moat/internal/statedir"
	"github.com/moat-fw/moat/internal/statetext"
)

// arm records what to go back to and starts the watchdog, before the
// kernel changes. The snapshot, the old policy and pending.json are
// written and fsynced first, the snapshot is read back and checked against
// its checksum, and only then is the watchdog started; it finds
// pending.json on its first look. Any failure leaves nothing armed.
func (e *Engine) arm(ctx context.Context, id string, pl plan, cur *current, next Backend, persist bool) (*Pending, error) {
	dir := e.o.StateDir
	var snap []byte
	prevName := ""
	if len(cur.kernel) > 0 {
		prevName = cur.kernel[0]
		prev, err := e.backend(prevName)
		if err != nil {
			return nil, err
		}
		if snap, err = prev.Snapshot(ctx); err != nil {
			return nil, fmt.Errorf("snapshot before --confirm: %w", err)
		}
	}
	// The file goes back to what is applied now, when moat knows it, so a
	// change that was not confirmed is gone for good (its text is kept as
	// FILE.unconfirmed); otherwise to what it was.
	oldPolicy, hadPolicy := pl.prevFile, pl.hadFile
	if cur.applied != nil && prevName != "" && !cur.applied.FailClosed {
		oldPolicy, hadPolicy = []byte(cur.applied.Policy), true
	}
	now := e.o.Now()
	p := &Pending{ID: id, Backend: next.Name(), PrevBackend: prevName, Prev: cur.applied, PolicyPath: pl.ch.Path, HadPolicy: hadPolicy,
		Persist: persist, Created: now, Deadline: now.Add(pl.ch.Confirm), DeadlineUptime: deadlineAt(e.o.Uptime(), pl.ch.Confirm), BootID: bootID(),
		SnapshotSHA256: Hash(snap), PolicySHA256: Hash(oldPolicy)}
	if err := writeState(dir, snapshotFile, snap); err != nil {
		return nil, fmt.Errorf("save snapshot: %w", err)
	}
	if err := writeState(dir, policyFile, oldPolicy); err != nil {
		return nil, fmt.Errorf("save policy: %w", err)
	}
	if err := writeState(dir, listCopiesFile, pl.listCopies); err != nil {
		return nil, fmt.Errorf("save the file blocklists' copies: %w", err)
	}
	if got, err := readState(dir, snapshotFile); err != nil || Hash(got) != p.SnapshotSHA256 {
		return nil, errors.Join(fmt.Errorf("the snapshot in %s does not read back as written", dir), err, clearPending(dir))
	}
	if err := writeJSON(dir, pendingFile, p); err != nil {
		return nil, errors.Join(fmt.Errorf("save pending change: %w", err), clearPending(dir))
	}
	if err := e.step("pending"); err != nil {
		return nil, err
	}
	if e.o.StartWatchdog != nil {
		pid, err := e.o.StartWatchdog(id)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("start the rollback watchdog: %w", err), clearPending(dir))
		}
		if pid > 0 {
			p.Watchdog = identify(pid, "watchdog", id)
			if p.Watchdog.Start == 0 {
				return nil, errors.Join(fmt.Errorf("the rollback watchdog (PID %d) died at once: see %s", pid, filepath.Join(dir, LogFile)), clearPending(dir))
			}
			if err := writeJSON(dir, pendingFile, p); err != nil {
				p.Watchdog.Stop()
				return nil, errors.Join(fmt.Errorf("save pending change: %w", err), clearPending(dir))
			}
		}
	}
	if err := e.step("armed"); err != nil {
		return nil, err
	}
	return p, nil
}

// left is how long p has before its deadline, on the engine's clocks.
func (e *Engine) left(p *Pending) time.Duration { return p.left(e.o.Now(), e.o.Uptime()) }

// disarm drops an armed rollback whose change never reached the kernel.
func (e *Engine) disarm(p *Pending) error {
	err := clearPending(e.o.StateDir)
	p.Watchdog.Stop()
	return err
}

// Confirm keeps the pending change: the watchdog is stopped, and the
// change is saved for boot when moat is enabled. After a rollback it says
// when the change was rolled back.
func (e *Engine) Confirm(ctx context.Context) (*Pending, error) {
	if err := e.mustHoldLock(); err != nil {
		return nil, err
	}
	dir := e.o.StateDir
	p, err := LoadPending(dir)
	if errors.Is(err, ErrNoPending) {
		if o, oerr := LastOutcome(dir); oerr == nil && o.Outcome == "rolled back" {
			return nil, fmt.Errorf("nothing to confirm: the change applied at %s was rolled back at %s (%s)",
				o.Applied.Local().Format(time.DateTime), o.Time.Local().Format(time.DateTime), o.Reason)
		}
	}
	if err != nil {
		return nil, err
	}
	return p, e.finishConfirm(p)
}

// finishConfirm marks p as confirming (from then on no rollback happens,
// and if moat dies, the next command finishes the confirmation), saves it
// for boot, and clears the pending state.
func (e *Engine) finishConfirm(p *Pending) error {
	dir := e.o.StateDir
	if p.State != stateConfirming {
		p.State = stateConfirming
		if err := writeJSON(dir, pendingFile, p); err != nil {
			return fmt.Errorf("confirm: %w", err)
		}
		if err := e.step("confirm-marked"); err != nil {
			return err
		}
	}
	p.Watchdog.Stop()
	a, err := LoadApplied(dir)
	if err != nil {
		// The watchdog is stopped and the kernel keeps the change: an
		// unreadable record must not leave it half confirmed (every
		// command would fail to finish it, and nothing would roll it
		// back). The next change writes a good record.
		saved := ""
		if p.Persist {
			saved = " and it is not saved for boot"
		}
		e.warn(fmt.Sprintf("%v: the change is kept, but what moat applied is unknown%s: 'moat reload' records it", err, saved))
		e.o.Log.Error("confirm: the applied record is unreadable; change kept", "err", err)
		a = nil
	}
	if a != nil && a.Pending == p.ID {
		if p.Persist {
			if err := safeapply.Save(dir, safeapply.Saved{Backend: a.Backend, Policy: a.Policy, Source: a.Source, Apps: appPorts(e.o.Apps)}); err != nil {
				return err
			}
		}
		a.Pending = ""
		if err := writeApplied(dir, a); err != nil {
			return err
		}
	}
	if err := e.step("confirm-saved"); err != nil {
		return err
	}
	if err := clearPending(dir); err != nil {
		return err
	}
	return writeOutcome(dir, Outcome{ID: p.ID, Outcome: "confirmed", Time: e.o.Now(), Applied: p.Created})
}

// Rollback restores the state before the pending change (kernel, policy
// file, records) and stops the watchdog. id, when set, must match the
// pending change (the watchdog only rolls back its own). reason goes into
// the outcome ("moat rollback", "deadline").
//
// If the repair run by this command's Lock rolled the change back already
// (its deadline had passed, or a rollback cut short was finished), what
// was asked is done: that change is returned with no error. With no
// change waiting, the error (ErrNoPending) says when the last one was
// rolled back, as Confirm does.
func (e *Engine) Rollback(ctx context.Context, id, reason string) (*Pending, error) {
	if err := e.mustHoldLock(); err != nil {
		return nil, err
	}
	p, err := LoadPending(e.o.StateDir)
	if errors.Is(err, ErrNoPending) {
		if r := e.repairRolledBack; r != nil && (id == "" || r.ID == id) {
			return r, nil
		}
		if o, oerr := LastOutcome(e.o.StateDir); oerr == nil && o.Outcome == "rolled back" && (id == "" || o.ID == id) {
			return nil, fmt.Errorf("%w: the change applied at %s was rolled back at %s (%s)", ErrNoPending,
				o.Applied.Local().Format(time.DateTime), o.Time.Local().Format(time.DateTime), o.Reason)
		}
	}
	if err != nil {
		return nil, err
	}
	if id != "" && p.ID != id {
		return nil, ErrNoPending
	}
	return e.rollback(ctx, p, id, reason)
}

// rollback rolls p back (Rollback, after reading it).
func (e *Engine) rollback(ctx context.Context, p *Pending, id, reason string) (*Pending, error) {
	dir := e.o.StateDir
	if p.State == stateConfirming {
		return nil, errors.New("the pending change is being confirmed")
	}
	// Writes to the state directory may fail (a full disk): the kernel
	// goes back first whatever they do, since the admin may be locked
	// out. The mark only lets the next command finish a rollback that
	// was cut short; without it, the deadline still rolls it back.
	if p.State != stateRollingBack {
		p.State = stateRollingBack
		if err := writeJSON(dir, pendingFile, p); err != nil {
			e.warn(fmt.Sprintf("rollback: %v (rolling back anyway)", err))
			e.o.Log.Error("rollback: cannot mark the pending change; rolling back anyway", "err", err)
		}
		if err := e.step("rollback-marked"); err != nil {
			return nil, err
		}
	}
	record, err := e.restoreKernel(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("rollback: %w", err)
	}
	if err := e.step("rollback-kernel"); err != nil {
		return nil, err
	}
	if err := e.restoreFile(p); err != nil {
		return nil, fmt.Errorf("rollback: %w", err)
	}
	if err := writeApplied(dir, record); err != nil {
		// The record would still claim the unconfirmed change: no record
		// ("moat's rules without a record") is the truth told less well.
		e.warn(fmt.Sprintf("rollback: %v; removing %s instead", err, filepath.Join(dir, AppliedFile)))
		if rerr := removeState(dir, AppliedFile); rerr != nil {
			return nil, fmt.Errorf("rollback: %w", errors.Join(err, rerr))
		}
	}
	if err := e.step("rollback-records"); err != nil {
		return nil, err
	}
	// The watchdog stops before the record goes: one that finds the
	// record gone and no outcome for its change rolls back the copy it
	// read at the deadline (a rollback killed between the two left it
	// waiting to roll back, again, what was rolled back already). Killed
	// once it is stopped, the change stays marked "rolling back" and the
	// next command finishes the rollback.
	if id == "" {
		p.Watchdog.Stop()
	}
	if err := clearPending(dir); err != nil {
		return nil, fmt.Errorf("rollback: %w", err)
	}
	if err := e.step("rollback-cleared"); err != nil {
		return nil, err
	}
	e.o.Log.Warn("rolled back an unconfirmed change", "applied", p.Created.Format(time.RFC3339), "deadline", p.Deadline.Format(time.RFC3339),
		"reason", reason, "backend", p.Backend, "policy", p.PolicyPath, "unconfirmed_policy_kept_in", p.PolicyPath+".unconfirmed")
	if err := writeOutcome(dir, Outcome{ID: p.ID, Outcome: "rolled back", Time: e.o.Now(), Applied: p.Created, Reason: reason}); err != nil {
		// The rollback itself is done; only 'moat confirm' cannot say when.
		e.warn(err.Error())
		e.o.Log.Error("rollback done, outcome not recorded", "err", err)
	}
	return p, nil
}

// restoreKernel puts moat's rules back as they were before p, and returns
// the applied record that goes with them. The snapshot is used only if it
// matches its checksum; otherwise the applied record of before, then the
// ruleset saved for boot, then the fail-closed ruleset. Never "leave it".
func (e *Engine) restoreKernel(ctx context.Context, p *Pending) (*Applied, error) {
	dir := e.o.StateDir
	// No ban may land between the read of the bans in force and the
	// restore that replaces the ban sets.
	defer e.holdBans(ctx)()
	if p.PrevBackend == "" {
		// Nothing of moat's was loaded before: remove what the change put in.
		return nil, e.removeExcept(ctx)
	}
	// The port scan trap's exemptions of the logins made while the change
	// waited (the guard put them in the backend the change loaded): the
	// snapshot's login sets are those of before.
	// Those recorded by a rollback of p cut after its restore (the
	// kernel's login sets are the snapshot's since) are kept.
	_, recLogins, _ := e.recordedBans(p.ID)
	logins := e.liveLogins(ctx, recLogins, p.Backend)
	var errs []error
	snap, err := readState(dir, snapshotFile)
	if err == nil && Hash(snap) != p.SnapshotSHA256 {
		err = fmt.Errorf("%s does not match its checksum", filepath.Join(dir, snapshotFile))
	}
	if err == nil {
		var prev Backend
		if prev, err = e.backend(p.PrevBackend); err == nil {
			if e.restoreKeepingBans(ctx, p, prev, snap) {
				e.restoreNote(prev)
				if err = e.step("rollback-restored"); err != nil {
					return nil, err
				}
				e.putLogins(ctx, prev, logins)
				e.restoreListCopies()
				if err = e.removeExcept(ctx, prev.Name()); err == nil {
					return p.Prev, nil
				}
			}
		}
		if err == nil {
			live, known, since := e.bansInForce(ctx, p, logins)
			if err = prev.Restore(ctx, snap); err == nil {
				e.restoreNote(prev)
				if err = e.step("rollback-restored"); err != nil {
					return nil, err
				}
				if known {
					e.keepBans(ctx, prev, live, since)
				}
				e.putLogins(ctx, prev, logins)
				e.restoreListCopies()
				if err = e.removeExcept(ctx, prev.Name()); err == nil {
					return p.Prev, nil
				}
			}
		}
	}
	errs = append(errs, fmt.Errorf("restore the snapshot: %w", err))
	e.warn(fmt.Sprintf("rollback: cannot restore the snapshot (%v); loading the previous policy instead", err))
	// Each fallback loads its backend with the ban sets it has (empty
	// after a change of backend) and removes moat's rules, ban sets
	// included, from the others: the bans in force are read (and
	// recorded in pending.bans, so that a kill after the load still puts
	// them back) before, and put back after, as the snapshot's restore
	// does.
	live, known, since := e.bansInForce(ctx, p, logins)
	loaded := func(name string) error {
		if err := e.step("rollback-fallback-loaded"); err != nil {
			return err
		}
		if b, err := e.backend(name); err == nil {
			if known {
				e.keepBans(ctx, b, live, since)
			}
			e.putLogins(ctx, b, logins)
		}
		return nil
	}
	if p.Prev != nil {
		err := e.applyText(ctx, p.Prev.Backend, p.Prev.Policy, p.Prev.Source)
		if err == nil {
			return p.Prev, loaded(p.Prev.Backend)
		}
		errs = append(errs, fmt.Errorf("load the previous policy: %w", err))
	}
	if s, err := safeapply.LoadSaved(dir); err == nil {
		if err = e.applyText(ctx, s.Backend, s.Policy, s.Source); err == nil {
			e.warn("rollback: loaded the ruleset saved for boot")
			return &Applied{Backend: s.Backend, Policy: s.Policy, Source: s.Source, Time: e.o.Now().UTC(), Setting: e.settingOf(s.Policy)}, loaded(s.Backend)
		}
		errs = append(errs, fmt.Errorf("load the saved ruleset: %w", err))
	} else {
		errs = append(errs, err)
	}
	reason := errors.Join(errs...).Error()
	rec, err := e.loadFailClosed(ctx, reason, p.PolicyPath)
	if err != nil {
		return nil, errors.Join(append(errs, err)...)
	}
	e.warn("rollback: nothing else could be loaded: moat is FAIL-CLOSED (only SSH comes in)")
	return rec, loaded(rec.Backend)
}

// restoreNote warns of what a snapshot's restore could not read or put
// back (ipt.Backend.RestoreNote: a table iptables cannot print).
func (e *Engine) restoreNote(b Backend) {
	if n, ok := b.(interface{ RestoreNote() string }); ok && n.RestoreNote() != "" {
		e.warn("rollback: " + n.RestoreNote())
	}
}

// settingOf is the 'backend' line of a policy text.
func (e *Engine) settingOf(text string) string {
	p, err := e.policyOf(policy.NewDocument("saved", []byte(text)))
	if err != nil {
		return ""
	}
	return string(p.Backend)
}

// loadFailClosed loads the fail-closed ruleset (auto backend) and returns
// its record; it never touches saved.json.
func (e *Engine) loadFailClosed(ctx context.Context, reason, path string) (*Applied, error) {
	text := e.o.FailClosedPolicy()
	b, err := e.backend("auto")
	if err != nil {
		return nil, err
	}
	if err := e.applyText(ctx, b.Name(), text, path); err != nil {
		return nil, fmt.Errorf("load the fail-closed ruleset: %w", err)
	}
	return &Applied{Backend: b.Name(), Policy: text, Source: path, Time: e.o.Now().UTC(), FailClosed: true, FailReason: reason}, nil
}

// restoreFile puts the policy file back as it was before p, keeping the
// unconfirmed one beside it.
func (e *Engine) restoreFile(p *Pending) error {
	dir := e.o.StateDir
	old, err := readState(dir, policyFile)
	if err == nil && Hash(old) != p.PolicySHA256 {
		err = errors.New("does not match its checksum")
	}
	if err != nil {
		if p.Prev == nil {
			e.warn(fmt.Sprintf("rollback: the saved policy %s is unusable (%v): %s is left as it is", filepath.Join(dir, policyFile), err, p.PolicyPath))
			return nil
		}
		e.warn(fmt.Sprintf("rollback: the saved policy %s is unusable (%v): %s gets the policy applied before", filepath.Join(dir, policyFile), err, p.PolicyPath))
		old = []byte(p.Prev.Policy)
	}
	cur, err := policy.ReadFile(p.PolicyPath)
	if err == nil && string(cur) != string(old) {
		if err := atomicfile.WriteFile(p.PolicyPath+".unconfirmed", cur, 0o600); err != nil {
			e.warn(fmt.Sprintf("could not keep the unconfirmed policy: %v", err))
		}
	}
	if p.HadPolicy {
		doc := policy.NewDocument(p.PolicyPath, old)
		if err := doc.Write(); err != nil {
			return err
		}
		return nil
	}
	if err := os.Remove(p.PolicyPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", p.PolicyPath, err)
	}
	return nil
}

// Watch is the watchdog: it waits for the deadline of change id and then
// rolls it back, unless it was confirmed or rolled back meanwhile. The
// arming command writes pending.json before starting it; if it is not
// there (yet), Watch looks again for a few seconds before it concludes
// that the change is settled.
//
// Once it has read its change, it keeps that copy: if pending.json then
// becomes unreadable or disappears without the change being confirmed or
// rolled back (no outcome for it), the copy is rolled back at the deadline
// (a damaged or deleted record used to make it give up, leaving the
// unconfirmed change in force for good).
func (e *Engine) Watch(ctx context.Context, id string) error {
	var missingSince time.Time
	var known *Pending
	lost := false // logged that the record is gone
	retry := time.Second
	for {
		p, err := LoadPending(e.o.StateDir)
		if err == nil && p.ID == id {
			known = p
		}
		settled := false
		if err == nil && p.ID != id {
			settled = true // another change is pending: this one is settled
		} else if err != nil {
			if o, oerr := LastOutcome(e.o.StateDir); oerr == nil && o.ID == id {
				settled = true
			}
		}
		switch {
		case settled:
			return nil
		case known != nil:
			missingSince = time.Time{}
			if err != nil && !lost {
				lost = true
				e.o.Log.Error("watchdog: the pending change's record is unreadable or gone; rolling back from the copy read earlier at the deadline", "err", err)
			}
			if e.left(known) <= 0 {
				err := e.expire(ctx, known)
				if err == nil || IsCrash(err) || ctx.Err() != nil {
					return err
				}
				// The rollback failed (a backend refused, a disk error):
				// the admin may be locked out, so keep trying.
				e.o.Log.Error("watchdog: rollback failed; trying again", "err", err, "in", retry)
				if err := sleep(ctx, retry); err != nil {
					return err
				}
				retry = min(2*retry, 30*time.Second)
				continue
			}
			if err := sleep(ctx, min(e.left(known), 200*time.Millisecond)); err != nil {
				return err
			}
			continue
		case !errors.Is(err, ErrNoPending):
			e.o.Log.Error("watchdog: read the pending change", "err", err)
		}
		if missingSince.IsZero() {
			missingSince = time.Now()
		} else if time.Since(missingSince) > 10*time.Second {
			return nil
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(max(d, time.Millisecond)):
		return nil
	}
}

// expire rolls back change known.ID at its deadline, under the lock. If
// its record is unreadable or gone and it was neither confirmed nor rolled
// back, the copy the watchdog read is rolled back.
func (e *Engine) expire(ctx context.Context, known *Pending) error {
	id := known.ID
	unlock, err := e.Lock(ctx, "moat watchdog "+id)
	if err != nil && ctx.Err() == nil && e.lockIsJunk() {
		// The lock file is a directory, a FIFO or a link: every command
		// refuses it, so none can be racing; the rollback must not wait
		// for an admin to notice. A fresh lock file replaces it.
		path := filepath.Join(e.o.StateDir, lockFile)
		e.o.Log.Error("watchdog: the lock file is not a regular file; replacing it to roll back", "path", path, "err", err)
		e.warn(fmt.Sprintf("%s is not a regular file (%v): replaced, to roll back the change applied at %s", path, err, known.Created.Local().Format(time.TimeOnly)))
		if rerr := removeState(e.o.StateDir, lockFile); rerr != nil {
			return errors.Join(err, rerr)
		}
		unlock, err = e.Lock(ctx, "moat watchdog "+id)
	}
	if IsRepairError(err) && ctx.Err() == nil {
		// What an interrupted command left cannot be repaired (its
		// journal is unreadable, the kernel refused its undo): every
		// command refuses to run until an admin sees to it, but the
		// rollback must not wait for that. It puts the kernel and the
		// policy file back to before the change, which the command that
		// armed it (the only one that runs while a change waits) would
		// have been undone to as well; the journal stays, named.
		e.o.Log.Error("watchdog: rolling back without repairing what an interrupted command left", "err", err)
		e.warn(fmt.Sprintf("%v: rolling back the change applied at %s all the same", err, known.Created.Local().Format(time.TimeOnly)))
		unlock, err = e.LockToRemove(ctx, "moat watchdog "+id)
	}
	if err != nil {
		return err
	}
	defer unlock()
	p, err := LoadPending(e.o.StateDir)
	if err == nil {
		if p.ID != id {
			return nil
		}
		known = p
	} else if o, oerr := LastOutcome(e.o.StateDir); oerr == nil && o.ID == id {
		return nil
	} else {
		e.warn(fmt.Sprintf("the record of the change applied at %s is unreadable or gone (%v): rolling back what the watchdog read of it",
			known.Created.Local().Format(time.TimeOnly), err))
	}
	if _, err := e.rollback(ctx, known, id, "not confirmed by the deadline"); err != nil && !errors.Is(err, ErrNoPending) {
		return err
	}
	return nil
}

// lockIsJunk reports whether the lock file is there but not a regular
// file.
func (e *Engine) lockIsJunk() bool {
	fi, err := os.Lstat(filepath.Join(e.o.StateDir, lockFile))
	return err == nil && !fi.Mode().IsRegular()
}

// repair runs under the lock before every state change: it undoes a change
// whose command died half way (the intent journal), and rolls back a
// pending change whose deadline has passed (its watchdog was killed, or
// is about to act).
func (e *Engine) repair(ctx context.Context) error {
	dir := e.o.StateDir
	in, err := LoadIntent(dir)
	if err != nil {
		return fmt.Errorf("%w: a moat command was interrupted and its journal is unreadable; check moat's rules and remove it", err)
	}
	e.removePrepared(in)
	if in != nil {
		// An undo, as a rollback below, may load a whole policy and put
		// back every ban in force: a small edit main started on one
		// processor (gctune.StartSerial) gets them back first.
		gctune.Parallel()
		if err := e.undo(ctx, in); err != nil {
			return fmt.Errorf("undo the interrupted '%s' (PID %d, %s): %w", sanitize(in.Command), in.PID, in.Time.Local().Format(time.DateTime), err)
		}
		e.warn(fmt.Sprintf("'%s' (PID %d, %s) was interrupted half way: undone, moat's rules, %s and its records are as before it",
			sanitize(in.Command), in.PID, in.Time.Local().Format(time.DateTime), in.Path))
	}
	if sp, err := loadStalePending(dir); err != nil {
		e.warn(fmt.Sprintf("%v: ignored", err))
	} else if sp != nil {
		if err := e.dropStale(sp); err != nil {
			return fmt.Errorf("the change applied at %s was waiting for confirmation when the system restarted: %w",
				sp.Created.Local().Format(time.DateTime), err)
		}
	}
	p, err := LoadPending(dir)
	switch {
	case err != nil:
	case p.State == stateConfirming:
		if err := e.finishConfirm(p); err != nil {
			return fmt.Errorf("finish the interrupted confirmation: %w", err)
		}
	case p.State == stateRollingBack:
		gctune.Parallel()
		if _, err := e.Rollback(ctx, p.ID, "moat rollback (finished after an interruption)"); err != nil {
			return fmt.Errorf("finish the interrupted rollback: %w", err)
		}
		e.repairRolledBack = p
		e.warn(fmt.Sprintf("the interrupted rollback of the change applied at %s is finished", p.Created.Local().Format(time.TimeOnly)))
	case e.left(p) <= 0:
		gctune.Parallel()
		if _, err := e.Rollback(ctx, p.ID, "not confirmed by the deadline"); err != nil {
			return err
		}
		e.repairRolledBack = p
		e.warn(fmt.Sprintf("the change applied at %s was not confirmed by its deadline: rolled back", p.Created.Local().Format(time.TimeOnly)))
	case p.Watchdog.PID > 0 && p.Watchdog.PID != os.Getpid() && !p.Watchdog.Alive() && e.o.StartWatchdog != nil:
		e.rearm(p)
	}
	return nil
}

// rearm starts a new watchdog for a pending change whose watchdog is gone
// (kill -9, the OOM killer, a 'pkill moat'): nothing else would roll the
// change back at its deadline.
func (e *Engine) rearm(p *Pending) {
	old := p.Watchdog.PID
	pid, err := e.o.StartWatchdog(p.ID)
	if err == nil && pid > 0 {
		p.Watchdog = identify(pid, "watchdog", p.ID)
		if p.Watchdog.Start == 0 {
			err = fmt.Errorf("the new watchdog (PID %d) died at once: see %s", pid, filepath.Join(e.o.StateDir, LogFile))
		} else {
			err = writeJSON(e.o.StateDir, pendingFile, p)
		}
	}
	if err != nil {
		e.warn(fmt.Sprintf("the rollback watchdog (PID %d) of the change applied at %s is gone and could not be restarted (%v): run 'moat rollback' or 'moat confirm'",
			old, p.Created.Local().Format(time.TimeOnly), err))
		return
	}
	e.warn(fmt.Sprintf("the rollback watchdog (PID %d) of the change applied at %s was gone: a new one (PID %d) rolls it back in %s unless 'moat confirm' is run",
		old, p.Created.Local().Format(time.TimeOnly), pid, e.left(p).Round(time.Second)))
}

// dropStale ends a pending change of an earlier boot. The restart
// ended it unconfirmed: the boot loaded the ruleset saved before it (or
// nothing), so only the policy file and the records still hold it. They go
// back to what they were before the change, as a rollback at the deadline
// would have left them (the unconfirmed text is kept as FILE.unconfirmed);
// the kernel is left to what the boot loaded. A confirmation that the
// restart cut short is finished instead.
func (e *Engine) dropStale(p *Pending) error {
	if p.State == stateConfirming {
		return e.finishConfirm(p)
	}
	dir := e.o.StateDir
	if err := e.restoreFile(p); err != nil {
		return err
	}
	a, err := LoadApplied(dir)
	if err == nil && a != nil && a.Pending == p.ID {
		err = writeApplied(dir, p.Prev)
	}
	if err != nil {
		return err
	}
	if err := clearPending(dir); err != nil {
		return err
	}
	reason := "the system restarted before it was confirmed"
	e.o.Log.Warn("dropped an unconfirmed change", "applied", p.Created.Format(time.RFC3339), "reason", reason,
		"policy", p.PolicyPath, "unconfirmed_policy_kept_in", p.PolicyPath+".unconfirmed")
	e.warn(fmt.Sprintf("the change applied at %s was not confirmed before the system restarted: %s is back as it was before it (the unconfirmed one is kept as %s.unconfirmed)",
		p.Created.Local().Format(time.DateTime), p.PolicyPath, p.PolicyPath))
	return writeOutcome(dir, Outcome{ID: p.ID, Outcome: "rolled back", Time: e.o.Now(), Applied: p.Created, Reason: reason})
}

// removePrepared removes what a command killed half way left prepared
// beside the records (writeIntent, and apply's prepareRecords: written
// while the kernel took the change, renamed after it; every other record
// and Options.OtherRecords, written through a temporary file) and beside
// the policy files (Options.PolicyPath, the one its journal in says it
// wrote, the pending change's, and their .unconfirmed copies, which a
// rollback writes with no journal): nothing reads them and nothing
// renames them later. A journal killed before its
// rename leaves no journal (in nil), only its temporary file; a policy
// text (statetext) written for a record leaves its own. Under
// moat's lock no other command writes these names. A file that cannot be
// removed is only logged: it is hidden and harmless.
func (e *Engine) removePrepared(in *Intent) {
	errs := []error{atomicfile.RemovePrepared(e.o.StateDir, func(name string) bool {
		return name == IntentFile || name == AppliedFile || name == savedFile || statetext.IsName(name) ||
			name == pendingFile || name == snapshotFile || name == policyFile || name == rollbackBansFile ||
			name == listCopiesFile || name == outcomeFile || name == coveredMemoFile || name == coveredMemoKeyFile || slices.Contains(e.o.OtherRecords, name) ||
			slices.ContainsFunc(e.o.OtherRecordPrefixes, func(p string) bool { return strings.HasPrefix(name, p) })
	})}
	// The policy files: the command's, the one the journal says it
	// wrote, and the one a rollback of the pending change writes (with
	// its .unconfirmed copy; a rollback keeps no journal).
	paths := []string{e.o.PolicyPath}
	if in != nil && in.FileChanged {
		paths = append(paths, in.Path)
	}
	if p, err := readPending(e.o.StateDir); err == nil {
		paths = append(paths, p.PolicyPath)
	}
	slices.Sort(paths)
	for _, path := range slices.Compact(paths) {
		if path == "" {
			continue
		}
		errs = append(errs, policy.RemovePrepared(path),
			atomicfile.RemoveHidden(filepath.Dir(path), "."+filepath.Base(path)+".unconfirmed.", ".tmp"))
	}
	// The blocklists' copies and an update's marker: an update writes
	// them holding its own lock alone; when none runs, no write is in
	// progress. A command that applies a policy with a blocklist writes
	// the copies too (holding the state lock): with no update ever run,
	// the lock file is not there, and what such a command killed half way
	// left stayed.
	_, lerr := os.Lstat(filepath.Join(e.o.StateDir, blocklist.LockFile))
	_, derr := os.Lstat(filepath.Join(e.o.StateDir, blocklist.Dir))
	if lerr == nil || derr == nil {
		if l, err := statedir.TryLock(e.o.StateDir, blocklist.LockFile); err == nil {
			errs = append(errs, blocklist.RemoveLeftTemps(e.o.StateDir))
			l.Unlock()
		}
	}
	if err := errors.Join(errs...); err != nil {
		e.o.Log.Warn("files prepared by an interrupted command", "err", err)
	}
}

// undoFile puts the policy file back as the intent says it was before.
func (e *Engine) undoFile(in *Intent) error {
	if in.HadFile {
		return policy.NewDocument(in.Path, in.PrevFile).Write()
	}
	if err := os.Remove(in.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// undo puts everything back as the intent says it was before.
func (e *Engine) undo(ctx context.Context, in *Intent) error {
	dir := e.o.StateDir
	// The undo of a change of backend carries the bans in force back to
	// the old one (those the change carried over, recorded, and those
	// made since in the new one's ban sets), read before anything is
	// removed.
	var carried, logins []ruleset.Ban
	switched := in.Prev != nil && in.Next != nil && in.Prev.Backend != in.Next.Backend
	if switched {
		defer e.holdBans(ctx)()
		rec, recLogins, _ := e.recordedBans(switchID(in))
		carried = e.liveBans(ctx, rec, in.Next.Backend)
		logins = e.liveLogins(ctx, recLogins, in.Next.Backend, in.Prev.Backend)
	}
	// The change the command armed stays waiting until the kernel is
	// back: if the undo is refused (the kernel, a policy of before that
	// no longer compiles), its watchdog still rolls it back from its
	// snapshot at the deadline; a kill before it is cleared undoes again.
	var armed *Pending
	if in.Pending != "" {
		if p, err := LoadPending(dir); err == nil && p.ID == in.Pending {
			armed = p
		}
	}
	if in.Prev != nil {
		if len(carried) > 0 || len(logins) > 0 {
			// A kill from here on finds the bans again (the record
			// takes the place of the armed change's, which the undo
			// drops).
			e.recordBans("change of backend", switchID(in), carried, logins)
			if err := e.step("undo-bans-recorded"); err != nil {
				return err
			}
		}
		if err := e.applyText(ctx, in.Prev.Backend, in.Prev.Policy, in.Prev.Source); err != nil {
			return err
		}
		if len(carried) > 0 {
			if err := e.step("undo-applied"); err != nil {
				return err
			}
			if prev, err := e.backend(in.Prev.Backend); err == nil {
				e.putBans(ctx, prev, carried)
			}
		}
		if prev, err := e.backend(in.Prev.Backend); err == nil {
			e.putLogins(ctx, prev, logins)
		}
	} else if err := e.removeExcept(ctx); err != nil {
		return err
	}
	if armed != nil {
		if err := e.dropArmed(armed, in, switched); err != nil {
			return err
		}
	}
	if in.FileChanged {
		if err := e.undoFile(in); err != nil {
			return err
		}
	}
	if err := writeApplied(dir, in.Prev); err != nil {
		return err
	}
	if in.PrevSaved != nil {
		if err := writeState(dir, savedFile, in.PrevSaved); err != nil {
			return err
		}
	} else if err := removeState(dir, savedFile); err != nil {
		return err
	}
	if switched {
		if err := e.dropSwitchBans(in); err != nil {
			return err
		}
	}
	return removeState(dir, IntentFile)
}

// dropArmed ends the change the undone command armed, once the kernel is
// back as before it: its records go (pending.bans only when it is not the
// record of the bans an undone change of backend carries), its watchdog
// stops, and the outcome says it was rolled back.
func (e *Engine) dropArmed(p *Pending, in *Intent, switched bool) error {
	dir := e.o.StateDir
	files := []string{pendingFile, snapshotFile, policyFile, listCopiesFile}
	if !switched {
		files = append(files, rollbackBansFile)
	} else if _, _, ok := e.recordedBans(switchID(in)); !ok {
		files = append(files, rollbackBansFile)
	}
	// Stopped before its record goes (as a rollback stops it): a
	// watchdog that finds the record gone and no outcome rolls back the
	// copy it read at the deadline. Killed once it is stopped, the
	// journal is still there and the next command undoes again.
	p.Watchdog.Stop()
	var errs []error
	for _, f := range files {
		errs = append(errs, removeState(dir, f))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := e.step("armed-dropped"); err != nil {
		return err
	}
	return writeOutcome(dir, Outcome{ID: p.ID, Outcome: "rolled back", Time: e.o.Now(), Applied: p.Created,
		Reason: "the command that applied it was interrupted"})
}

// Restore loads the ruleset saved for boot. If it is missing or broken,
// it loads the fail-closed ruleset instead (only SSH comes in), records
// that loudly, leaves saved.json as it is, and returns an error: a second
// restore fails closed again until an admin applies a good policy.
func (e *Engine) Restore(ctx context.Context, ch Change) (*Result, error) {
	if err := e.mustHoldLock(); err != nil {
		return nil, err
	}
	cur, err := e.current(ctx)
	if err != nil {
		return nil, err
	}
	saved, err := safeapply.LoadSaved(e.o.StateDir)
	var p *policy.Policy
	var doc *policy.Document
	if err == nil {
		doc = policy.NewDocument("saved:"+saved.Source, []byte(saved.Policy))
		if saved.Apps != nil {
			// The profiles as they were when the ruleset was saved.
			doc.Apps = policy.AppsFromPorts(saved.Apps)
		}
		if p, err = e.policyOf(doc); err == nil {
			p.Source = saved.Source // the file to edit, named in the kernel
		}
	}
	if err == nil {
		res, aerr := e.apply(ctx, cur, plan{ch: ch, doc: doc, p: p, backend: saved.Backend, save: saveNever, source: saved.Source, restore: true}, &Result{Policy: p})
		// A good saved ruleset that would cut a live SSH session is
		// refused like any change (nothing applied, exit 3): it is not
		// broken, and failing closed instead would drop every other
		// service and record it as unreadable.
		var lockout *safeapply.LockoutError
		if aerr == nil || IsCrash(aerr) || errors.As(aerr, &lockout) {
			return res, aerr
		}
		err = aerr
		if cur, err = e.current(ctx); err != nil {
			return nil, errors.Join(aerr, err)
		}
		err = aerr
	}
	failErr := err
	text := e.o.FailClosedPolicy()
	fdoc := policy.NewDocument("fail-closed", []byte(text))
	fp, perr := fdoc.Policy(nil)
	if perr != nil {
		return nil, errors.Join(failErr, perr)
	}
	fp.Source = ch.Path
	ch.Force = true // at boot no session exists to protect
	res, aerr := e.apply(ctx, cur, plan{ch: ch, doc: fdoc, p: fp, backend: "auto", save: saveNever, source: ch.Path, failReason: failErr.Error()}, &Result{Policy: fp})
	if aerr != nil {
		return nil, fmt.Errorf("restore failed (%v) and so did the fail-closed ruleset: %w", failErr, aerr)
	}
	return res, &FailClosedError{Reason: failErr, Policy: text}
}

// FailClosedError says that restore loaded the fail-closed ruleset.
type FailClosedError struct {
	Reason error
	Policy string
}

func (f *FailClosedError) Error() string {
	return fmt.Sprintf("restore failed, loaded the fail-closed ruleset instead (SSH open, everything else incoming dropped):\n  %v\n%s",
		f.Reason, f.Policy)
}

func (f *FailClosedError) Unwrap() error { return f.Reason }

// banSetKeeper is a backend that can restore a snapshot leaving its ban
// sets as they are (nftables, when the snapshot and the kernel define
// them alike). kept false: nothing was done.
type banSetKeeper interface {
	RestoreKeepingBans(ctx context.Context, snap []byte) (kept bool, err error)
}

// restoreKeepingBans restores snap leaving the ban sets as they are, when
// the change kept the backend and the backend can: the bans made and
// lifted while the change waited are then as they are without reading or
// loading any (with 200,000 bans, reading and loading them again took
// seconds). Not after a rollback cut after its restore of the other kind
// (pending.bans holds the bans in force then: the ban sets were
// restored empty, and only that record refills them). false: nothing
// was done (the restore that refills the ban sets follows).
func (e *Engine) restoreKeepingBans(ctx context.Context, p *Pending, prev Backend, snap []byte) bool {
	k, ok := prev.(banSetKeeper)
	if !ok || p.Backend != p.PrevBackend {
		return false
	}
	if _, err := readState(e.o.StateDir, rollbackBansFile); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	kept, err := k.RestoreKeepingBans(ctx, snap)
	if err != nil {
		e.o.Log.Warn("rollback: restoring the snapshot with the ban sets kept failed; restoring them too", "err", err)
		return false
	}
	return kept
}

// banKeeper is a backend whose ban sets can be read and written (both
// real backends).
type banKeeper interface {
	Bans(ctx context.Context) ([]ruleset.Ban, error)
	Ban(ctx context.Context, bans []ruleset.Ban) error
	Unban(ctx context.Context, addrs []netip.Addr) error
}

// rollbackBans is the bans in force when a rollback began (pending.bans),
// and the port scan trap's login exemptions then (a kill after the
// restore, which brings back the login sets of before, must not lose the
// exemption of an admin who logged in while the change waited).
type rollbackBans struct {
	ID     string           `json:"id"` // the pending change's
	Taken  time.Time        `json:"taken"`
	Bans   []rollbackBanRec `json:"bans"`
	Logins []rollbackBanRec `json:"logins,omitempty"`
}

type rollbackBanRec struct {
	Addr   netip.Addr `json:"addr"`
	LeftMS int64      `json:"left_ms"`
	Reason string     `json:"reason,omitempty"`
}

// bansInForce gives the bans in force before the rollback of p: those
// recorded by a rollback of p that was cut short after it restored the
// snapshot (the kernel holds the snapshot's bans since), else those in
// the ban sets of the backend the unconfirmed change loaded, recorded
// first. known is false when they cannot be read (then the snapshot's
// bans are what the rollback leaves). With the record, since is what the
// kernel's ban sets hold now (both backends'): the bans made after the
// cut (the guard ran on) are among them, and keepBans keeps those that
// the snapshot does not hold. logins (the login exemptions in force) are
// recorded with the bans.
func (e *Engine) bansInForce(ctx context.Context, p *Pending, logins []ruleset.Ban) (bans []ruleset.Ban, known bool, since *cutBans) {
	if rec, _, taken, ok := e.recordedBansAt(p.ID); ok {
		since = &cutBans{began: taken}
		for _, name := range []string{p.PrevBackend, p.Backend} {
			if b, err := e.backend(name); err == nil {
				if k, ok := b.(banKeeper); ok {
					if now, err := k.Bans(ctx); err == nil {
						since.bans = append(since.bans, now...)
					}
				}
			}
			if p.Backend == p.PrevBackend {
				break
			}
		}
		return rec, true, since
	}
	b, err := e.backend(p.Backend)
	if err != nil {
		return nil, false, nil
	}
	k, ok := b.(banKeeper)
	if !ok {
		return nil, false, nil
	}
	if bans, err = k.Bans(ctx); err != nil {
		e.warn(fmt.Sprintf("rollback: cannot read the bans in force (%v): the bans are those from before the change", err))
		return nil, false, nil
	}
	e.recordBans("rollback", p.ID, bans, logins)
	return bans, true, nil
}

// keepBans makes the ban sets of a restored snapshot hold the bans that
// were in force just before the rollback, with the time they had left: a
// rollback undoes a change of policy, not the bans made or lifted while
// it waited for 'moat confirm' (the guard's, 'moat ban', 'moat unban',
// the port scan trap's). The snapshot's bans are those of its time, with
// the time they had left then. since (a rollback finished after a cut):
// the ban sets before this restore; those of its bans the snapshot does
// not hold were made after the cut and are kept too. Those it holds that
// were lifted while the change waited are the snapshot's copies, unless
// the guard's history (or the record of 'moat ban') says they were banned
// again since the rollback began (after the cut: the guard finds the
// address in the set and the kernel keeps the copy): kept then, with the
// time the history gives them.
func (e *Engine) keepBans(ctx context.Context, b Backend, live []ruleset.Ban, since *cutBans) {
	k, ok := b.(banKeeper)
	if !ok {
		return
	}
	restored, err := k.Bans(ctx)
	if err != nil {
		e.warn(fmt.Sprintf("rollback: cannot read the restored bans (%v): the bans are those from before the change", err))
		return
	}
	inLive := make(map[netip.Addr]bool, len(live))
	for _, ban := range live {
		inLive[ban.Addr.Unmap()] = true
	}
	inRestored := make(map[netip.Addr]bool, len(restored))
	for _, ban := range restored {
		inRestored[ban.Addr.Unmap()] = true
	}
	var again []netip.Addr // lifted meanwhile, in the kernel after the cut
	for _, ban := range since.list() {
		a := ban.Addr.Unmap()
		switch {
		case inLive[a]:
		case !inRestored[a]:
			inLive[a] = true
			live = append(live, ban)
		default:
			again = append(again, a)
		}
	}
	if len(again) > 0 {
		live = append(live, e.bannedSince(again, since.began)...)
		for _, ban := range live {
			inLive[ban.Addr.Unmap()] = true
		}
	}
	var lifted []netip.Addr
	for _, ban := range restored {
		if a := ban.Addr.Unmap(); !inLive[a] {
			lifted = append(lifted, a)
		}
	}
	put := make([]ruleset.Ban, 0, len(live))
	for _, ban := range live {
		a := ban.Addr.Unmap()
		left := ban.Expires
		if left <= 0 {
			left = ban.Timeout
		}
		put = append(put, ruleset.Ban{Addr: a, Timeout: left, Reason: ban.Reason, Replace: inRestored[a]})
	}
	if err := k.Unban(ctx, lifted); err != nil {
		e.warn(fmt.Sprintf("rollback: could not lift again the %d bans lifted while the change waited: %v", len(lifted), err))
	}
	if err := k.Ban(ctx, put); err != nil {
		e.warn(fmt.Sprintf("rollback: could not put back the %d bans in force before it: %v (the guard puts its own back when it starts)", len(put), err))
	}
}

// maxGuardHistory bounds the guard.json bannedSince reads (200,000
// addresses take 35 MB).
var maxGuardHistory int64 = 256 << 20

// cutBans is what the kernel's ban sets held when a rollback cut short
// is finished, and when the cut rollback began (its record's time).
type cutBans struct {
	bans  []ruleset.Ban
	began time.Time
}

func (c *cutBans) list() []ruleset.Ban {
	if c == nil {
		return nil
	}
	return c.bans
}

// bannedSince gives those of addrs that the guard's history (its bans,
// the records of 'moat ban') says were banned at or after began and are still
// banned, with the time the history gives them. An unreadable history
// gives none (they stay lifted, as before), with a warning.
func (e *Engine) bannedSince(addrs []netip.Addr, began time.Time) []ruleset.Ban {
	// Only the records of addrs are kept, and a history past the bound
	// is not read: guard.json may be huge, or not what the guard wrote.
	recs, err := guard.LookupHistory(e.o.StateDir, addrs, maxGuardHistory)
	if err != nil {
		e.warn(fmt.Sprintf("rollback: cannot read the guard's history (%v): bans lifted while the change waited and made again after the cut stay lifted", err))
		return nil
	}
	now := e.o.Now()
	var out []ruleset.Ban
	for _, a := range addrs {
		r := recs[a]
		if r == nil || r.LastBan.Before(began) || !r.Until.After(now.Add(time.Second)) {
			continue
		}
		out = append(out, ruleset.Ban{Addr: a, Timeout: min(r.Until.Sub(now), maxRecordedLeft), Reason: ruleset.CleanReason(r.Reason)})
	}
	return out
}

// restoreListCopies puts back the saved copies of the file lists as they
// were before the unconfirmed change (its apply saved what it read), so
// that they say what the restored sets hold: else status would find the
// sets "changed outside moat" and an update would compare its lists with
// copies the kernel does not hold (TestRollbackRestoresFileListCopies).
// A change armed by an older moat kept none: nothing to put back.
func (e *Engine) restoreListCopies() {
	data, err := readState(e.o.StateDir, listCopiesFile)
	if err != nil || len(data) == 0 {
		return
	}
	if err := blocklist.RestoreFileCopies(e.o.StateDir, data); err != nil {
		e.warn(fmt.Sprintf("rollback: %v", err))
	}
}
