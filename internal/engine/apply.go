package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/blocklist"
	"github.com/moat-fw/moat/internal/gctune"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
	"github.com/moat-fw/moat/internal/statedir"
)

// Change is what a command asks of the engine.
type Change struct {
	// Command is the command line, for the journal and messages.
	Command string
	// Path is the policy file.
	Path string
	// Backend is an explicit backend (--backend); "" keeps the applied one
	// unless the policy's 'backend' line changed.
	Backend string
	// Force applies even if it cuts a live SSH session.
	Force bool
	// Confirm, when set, arms a rollback after this long unless Confirm.
	Confirm time.Duration
}

// check refuses a request that cannot mean what it says: a negative
// --confirm used to apply the change at once, with no rollback armed, and
// save it for boot.
func (ch Change) check() error {
	if ch.Confirm < 0 {
		return fmt.Errorf("--confirm %s: want a positive duration such as 60s; nothing changed", ch.Confirm)
	}
	return nil
}

// Result says what a change did.
type Result struct {
	// Message is what the edit said ("Rule added: ...").
	Message string
	// Unchanged: the edit changed nothing (nothing written or applied).
	Unchanged bool
	// Applied is what is now in the kernel (nil: nothing was applied).
	Applied *Applied
	// Inactive: moat's rules are not loaded, only the file changed.
	Inactive bool
	// FailClosed: moat runs the fail-closed ruleset; only the file changed.
	FailClosed *Applied
	// Switched is the backend moat's rules were moved away from ("" none).
	Switched string
	// Pending is the armed confirmation (nil: none).
	Pending *Pending
	// Persisted: the policy was saved for boot.
	Persisted bool
	// Policy is the policy the file now holds. Once an apply compiled it,
	// its rules are released (ReleaseRules: NumRules is 0 after): even
	// held compact, 100,000 rules are megabytes the command would hold
	// while the kernel loads the ruleset. Rules and Covered say what
	// callers need of them.
	Policy *policy.Policy
	// Rules is how many rules the policy has.
	Rules int
	// Covered are the policy's rules that an earlier rule covers, so they
	// never match (ruleset.Shadowed); filled by Edit and Enable.
	Covered []ruleset.Covered
	// wantCovered: Covered is to be filled (Edit, Enable).
	wantCovered bool
	// memoDir is the state directory that keeps the covered-rule
	// search's memo (coveredMemoFile; "" none).
	memoDir string
}

// bigPolicy is the number of rules from which an apply collects its
// garbage once the rules are released (about 3 MB of rules).
const bigPolicy = 10000

// noteRules records what callers need of the policy's rules, when no
// apply does (an edit while moat is inactive or fail-closed).
func (res *Result) noteRules(p *policy.Policy) {
	res.Rules = p.NumRules()
	var keep func()
	res.Covered, keep = shadowedKept(res.memoDir, p)
	if keep != nil {
		keep()
	}
}

// ruleWork is what an apply does with the policy's rules beside its
// main path: the search for covered rules (when wanted) starts with the
// apply, beside compiling, checking and loading; once the apply released
// the rules and the search is done, a large policy's garbage is
// collected (the heap may grow to twice what was live at the last
// collection, when the rules were; the kernel load then grows from what
// is left).
type ruleWork struct {
	release func()
	// wait is the search's result, once the apply succeeded: it writes
	// the search's memo (shadowedKept's keep), holding the lock.
	wait func() []ruleset.Covered
}

// coveredFound is the covered-rule search's result and what keeps it.
type coveredFound struct {
	covered []ruleset.Covered
	keep    func()
}

// searchEnded, when set (tests), is called as an apply's covered-rule
// search ends, whether or not anything waits for it.
var searchEnded func()

func (res *Result) startRuleWork(p *policy.Policy) ruleWork {
	rules := p.RulesOnly()
	released := make(chan struct{})
	done := make(chan coveredFound, 1)
	go func() {
		var found coveredFound
		if res.wantCovered {
			found.covered, found.keep = shadowedKept(res.memoDir, rules)
		}
		n := rules.NumRules()
		rules = nil
		<-released
		// Not when the collector runs only at a memory limit (an edit,
		// gctune.Short): the limit bounds the peak already, and this
		// collection cost an edit of 100,000 rules about 5 ms of CPU.
		if n >= bigPolicy && !gctune.Limited() {
			runtime.GC()
		}
		if searchEnded != nil && res.wantCovered {
			searchEnded()
		}
		done <- found
	}()
	var once sync.Once
	return ruleWork{
		release: func() { once.Do(func() { close(released) }) },
		wait: func() []ruleset.Covered {
			found := <-done
			if found.keep != nil {
				found.keep()
			}
			return found.covered
		},
	}
}

// saveMode says whether an apply updates the ruleset saved for boot.
type saveMode int

const (
	saveIfEnabled saveMode = iota // when one is saved already
	saveAlways                    // moat enable
	saveNever                     // moat restore, fail-closed
)

// plan is one apply.
type plan struct {
	ch  Change
	doc *policy.Document // the new policy text
	p   *policy.Policy
	// backend, when set, is used as is (restore).
	backend string
	// prevFile is the file's contents before; hadFile false if none.
	prevFile  []byte
	hadFile   bool
	writeFile bool
	save      saveMode
	source    string
	// failReason makes this the fail-closed ruleset.
	failReason string
	// restore: 'moat restore' (at boot no session can exist yet).
	restore bool
	// listCopies: with --confirm, the saved copies of the file lists
	// before this apply saves its own (blocklist.FileCopies).
	listCopies []byte
}

// current is the state an apply starts from.
type current struct {
	applied *Applied
	kernel  []string
}

func (e *Engine) current(ctx context.Context) (*current, error) {
	a, err := LoadApplied(e.o.StateDir)
	if err != nil {
		// Unreadable: what is applied is unknown. Say so; the apply that
		// follows writes a good record.
		e.warn(fmt.Sprintf("%v: what moat applied is unknown; this change replaces the record", err))
		a = nil
	}
	k, err := e.kernel(ctx)
	if err != nil {
		return nil, err
	}
	return &current{applied: a, kernel: k}, nil
}

// readPolicy reads the policy file and whether it exists.
// The contents before are the bytes read (no copy of a 2.6 MB policy
// made again from its lines) where they are what doc.Bytes gives: lines,
// each ended by a newline (policy.SameAsBytes). The document's lines are
// those bytes (policy.ReadDocumentData): nothing changes them.
func readPolicy(path string) (*policy.Document, []byte, bool, error) {
	doc, data, err := policy.ReadDocumentData(path)
	if err != nil {
		return nil, nil, false, err
	}
	_, statErr := os.Stat(path)
	if !policy.SameAsBytes(doc, data) {
		data = doc.Bytes()
	}
	return doc, data, statErr == nil, nil
}

// Edit changes the policy file with edit and, when moat is active, applies
// the result, all under the lock the caller holds. edit returns the
// message to print and whether it changed anything. Nothing is written or
// applied if the edited policy is invalid or the apply is refused.
func (e *Engine) Edit(ctx context.Context, ch Change, edit func(*policy.Document) (string, bool, error)) (*Result, error) {
	if err := e.mustHoldLock(); err != nil {
		return nil, err
	}
	if err := ch.check(); err != nil {
		return nil, err
	}
	doc, prev, had, err := readPolicy(ch.Path)
	if err != nil {
		return nil, err
	}
	doc.Apps = e.o.Apps // so that edits find rules that name profiles
	msg, changed, err := edit(doc)
	if err != nil {
		return nil, err
	}
	if !changed {
		return &Result{Message: msg, Unchanged: true}, nil
	}
	p, err := e.policyOf(doc)
	if err != nil {
		return nil, fmt.Errorf("the change would make the policy invalid, nothing changed:\n%w", err)
	}
	cur, err := e.current(ctx)
	if err != nil {
		return nil, err
	}
	res := &Result{Message: msg, Policy: p, wantCovered: true, memoDir: e.o.StateDir}
	switch {
	case len(cur.kernel) == 0:
		res.Inactive = true
	case cur.applied != nil && cur.applied.FailClosed:
		res.FailClosed = cur.applied
	default:
		return e.apply(ctx, cur, plan{ch: ch, doc: doc, p: p, prevFile: prev, hadFile: had, writeFile: true, save: saveIfEnabled, source: ch.Path}, res)
	}
	res.noteRules(p)
	if err := doc.Write(); err != nil {
		return nil, err
	}
	return res, nil
}

// Enable applies the policy file and saves it for boot.
func (e *Engine) Enable(ctx context.Context, ch Change) (*Result, error) {
	if err := e.mustHoldLock(); err != nil {
		return nil, err
	}
	if err := ch.check(); err != nil {
		return nil, err
	}
	doc, prev, had, err := readPolicy(ch.Path)
	if err != nil {
		return nil, err
	}
	p, err := e.policyOf(doc)
	if err != nil {
		return nil, err
	}
	cur, err := e.current(ctx)
	if err != nil {
		return nil, err
	}
	res := &Result{Policy: p, wantCovered: true, memoDir: e.o.StateDir}
	return e.apply(ctx, cur, plan{ch: ch, doc: doc, p: p, prevFile: prev, hadFile: had, save: saveAlways, source: ch.Path}, res)
}

// Reload applies the policy file again if moat is active (Inactive
// otherwise).
func (e *Engine) Reload(ctx context.Context, ch Change) (*Result, error) {
	if err := e.mustHoldLock(); err != nil {
		return nil, err
	}
	k, err := e.kernel(ctx)
	if err != nil {
		return nil, err
	}
	if len(k) == 0 {
		return &Result{Inactive: true}, nil
	}
	return e.Enable(ctx, ch)
}

// choose picks the backend of an apply: an explicit --backend; else the
// backend applied now, as long as the policy's 'backend' line is what it
// was then; else the policy's line (auto detects).
func (e *Engine) choose(p *policy.Policy, pl plan, cur *current) (Backend, error) {
	switch a := cur.applied; {
	case pl.backend != "":
		return e.backend(pl.backend)
	case pl.ch.Backend != "":
		return e.backend(pl.ch.Backend)
	case a != nil && !a.FailClosed && a.Setting == string(p.Backend):
		return e.backend(a.Backend)
	case a == nil && len(cur.kernel) == 1 && (p.Backend == "" || p.Backend == policy.BackendAuto):
		return e.backend(cur.kernel[0])
	}
	return e.backend(string(p.Backend))
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// apply is the one path by which a ruleset reaches the kernel:
//
//  1. pick the backend, compile, check the SSH sessions;
//  2. write the intent (journal) with what was there before;
//  3. with --confirm, arm the rollback (snapshot, pending state, watchdog);
//  4. load the ruleset, atomically; remove moat's rules from the backend
//     it replaces;
//  5. write the policy file, the applied record, the boot record;
//  6. remove the intent.
//
// A failure before 4 changes nothing; a kill -9 between 2 and 6 is undone
// by the next command (Lock).
func (e *Engine) apply(ctx context.Context, cur *current, pl plan, res *Result) (*Result, error) {
	dir := e.o.StateDir
	if err := pl.ch.check(); err != nil {
		return nil, err
	}
	b, err := e.choose(pl.p, pl, cur)
	if err != nil {
		return nil, err
	}
	if err := b.Available(); err != nil {
		return nil, err
	}
	work := res.startRuleWork(pl.p)
	defer work.release() // on every path: the collection waits for it
	if pl.ch.Confirm > 0 {
		// Taken before the compile saves the lists it reads: a rollback
		// puts them back with the kernel's sets.
		if pl.listCopies, err = blocklist.FileCopies(dir); err != nil {
			return nil, fmt.Errorf("--confirm: %w", err)
		}
	}
	persist := pl.save == saveAlways || (pl.save == saveIfEnabled && safeapply.Enabled(dir))
	next := &Applied{Backend: b.Name(), Setting: string(pl.p.Backend), Policy: pl.doc.Text(), Source: pl.source,
		Time: e.o.Now().UTC(), FailClosed: pl.failReason != "", FailReason: pl.failReason}
	prevSaved, _ := readState(dir, savedFile) // nil: none
	// What to go back to is what the kernel holds: a record without moat's
	// rules in the kernel is stale (a reboot, a flush by hand).
	prev := cur.applied
	if len(cur.kernel) == 0 {
		prev = nil
	}
	in := &Intent{PID: os.Getpid(), Command: pl.ch.Command, Time: e.o.Now().UTC(), Prev: prev, Next: next,
		Path: pl.ch.Path, PrevFile: pl.prevFile, HadFile: pl.hadFile, FileChanged: pl.writeFile, PrevSaved: prevSaved}
	// One change at a time: a rollback puts back the state before the
	// pending change, so nothing may be built on top of it.
	if old, err := LoadPending(dir); err == nil {
		return nil, fmt.Errorf("the change applied at %s is waiting for confirmation: run 'moat confirm' or 'moat rollback' first",
			old.Created.Local().Format(time.TimeOnly))
	} else if !errors.Is(err, ErrNoPending) {
		return nil, err
	}
	if pl.ch.Confirm > 0 {
		in.Pending = newID()
	}
	// The journal is written (two disk flushes) while the policy is
	// compiled and the SSH sessions checked: it needs neither, and it is
	// durable before anything reaches the kernel. A compile or a lockout
	// check that refuses removes it; a command stopped before that leaves
	// a journal of a change that never reached the kernel, which the next
	// command undoes as any other (the kernel and the file are put back
	// as they are).
	journaled := make(chan error, 1)
	go func() { journaled <- writeIntent(dir, in) }()
	rs, saveLists, err := e.compileSaveLater(pl.p, true, false)
	if err == nil {
		err = e.checkLockout(rs, pl.p, pl.ch.Force || pl.failReason != "", pl.restore)
	}
	if err != nil {
		if jerr := <-journaled; jerr == nil {
			if rerr := removeState(dir, IntentFile); rerr != nil {
				return nil, errors.Join(err, rerr)
			}
		}
		return nil, err
	}
	// The ruleset has what the kernel needs: the rules go (Result.Policy).
	res.Rules = pl.p.NumRules()
	pl.p.ReleaseRules()
	work.release()
	if err := <-journaled; err != nil {
		return nil, fmt.Errorf("journal the change: %w", err)
	}
	if err := e.step("intent"); err != nil {
		return nil, err
	}
	var pend *Pending
	if in.Pending != "" {
		if pend, err = e.arm(ctx, in.Pending, pl, cur, b, persist); err != nil {
			if IsCrash(err) {
				return nil, err
			}
			return nil, errors.Join(fmt.Errorf("arm the rollback (nothing was applied): %w", err), removeState(dir, IntentFile))
		}
	}
	if pend != nil {
		next.Pending = pend.ID
	}
	// The boot record, when it is rewritten, goes into the same directory
	// right after the applied record: its directory sync makes both
	// renames durable (one disk flush less; the journal still undoes the
	// change if the machine stops before).
	var save *safeapply.Saved
	if pend == nil && persist {
		s := safeapply.Saved{Backend: b.Name(), Policy: next.Policy, Source: pl.source, Apps: appPorts(e.o.Apps)}
		if !savedHolds(dir, prevSaved, s) {
			save = &s
		}
	}
	// The policy file and the records are written and synced while the
	// kernel takes the change (nft waits in the kernel for most of its
	// time), beside their names: they take effect by their renames once
	// the kernel took it (records.commit). A change the kernel refuses
	// removes them. Until the journal is removed, a command stopped
	// anywhere in between is undone whole by the next one.
	recs := e.prepareRecords(pl, next, save)
	defer recs.abort() // those not committed
	if err := b.Apply(ctx, rs); err != nil {
		var errs []error
		if pend != nil {
			errs = append(errs, e.disarm(pend))
		}
		errs = append(errs, removeState(dir, IntentFile))
		return nil, errors.Join(append([]error{fmt.Errorf("apply %s: %w", pl.source, err)}, errs...)...)
	}
	if err := e.step("kernel"); err != nil {
		return nil, err
	}
	// The kernel holds the lists: their copies say so. (A kill before
	// this is undone by loading the policy of before with the copies as
	// they are; one after it loads them as saved here: the copies say
	// what the kernel holds either way, or an update finds a list file
	// that differs from its copy and loads it.)
	if err := saveLists(); err != nil {
		e.warn(fmt.Sprintf("blocklists: %v (the next 'moat blocklist update' loads them again)", err))
	}
	e.o.Log.Info("applied", "backend", b.Name(), "rules", res.Rules)
	// A change of backend: the bans in force go over to the new one
	// before the old one's rules (and ban sets) are removed.
	var from []string
	for _, name := range cur.kernel {
		if name != b.Name() {
			from = append(from, name)
		}
	}
	if len(from) > 0 {
		// Every ban in force is read and loaded again, up to hundreds
		// of thousands: a small edit main started on one processor
		// (gctune.StartSerial) gets them back.
		gctune.Parallel()
		// No ban may land in the old backend between the read of its
		// bans and the removal of its sets (the guard's wait for the
		// lock, then finds the new backend).
		unlockBans := e.holdBans(ctx)
		bans, logins, read, err := e.carryBans(ctx, switchID(in), from, b, rs)
		if err == nil {
			e.carryLogins(ctx, logins, b)
			err = e.step("switch-logins")
		}
		if err == nil {
			err = e.carryLateBans(ctx, switchID(in), from, b, bans, logins, read)
		}
		if err == nil {
			err = e.removeOld(ctx, in, cur, b, res)
		}
		unlockBans()
		if err != nil {
			return nil, err
		}
	}
	if err := e.step("switched"); err != nil {
		return nil, err
	}
	// The policy file is put in place while the records are: it lives in a
	// directory of its own (/etc/moat), and its directory's disk flush
	// overlaps the state directory's. Both are finished before any later
	// step and before anything is undone.
	<-recs.done // the step "prepared" is where they are all written
	if err := e.step("prepared"); err != nil {
		return nil, err
	}
	if err := recs.commit(dir); err != nil {
		return nil, e.failAfterKernel(ctx, in, err)
	}
	if pl.writeFile {
		if err := e.step("file"); err != nil {
			return nil, err
		}
	}
	if err := e.step("applied"); err != nil {
		return nil, err
	}
	if pend == nil && persist {
		res.Persisted = true
		if err := e.step("saved"); err != nil {
			return nil, err
		}
	}
	if len(from) > 0 {
		if err := e.dropSwitchBans(in); err != nil {
			return nil, err
		}
	}
	if err := removeState(dir, IntentFile); err != nil {
		return nil, err
	}
	if err := collectTexts(dir); err != nil {
		e.o.Log.Debug("collect state texts", "err", err)
	}
	if err := e.step("done"); err != nil {
		return nil, err
	}
	res.Applied, res.Pending = next, pend
	res.Covered = work.wait()
	return res, nil
}

// removeOld removes moat's rules from the backends other than b, after
// a change of backend.
func (e *Engine) removeOld(ctx context.Context, in *Intent, cur *current, b Backend, res *Result) error {
	for _, name := range cur.kernel {
		if name == b.Name() {
			continue
		}
		old, err := e.backend(name)
		if err == nil {
			err = old.Remove(ctx)
		}
		if err != nil {
			return e.failAfterKernel(ctx, in, fmt.Errorf("remove moat's %s rules after switching to %s: %w", name, b.Name(), err))
		}
		res.Switched = name
	}
	return nil
}

// failAfterKernel handles a failure after the kernel took the change (a
// full disk, a read-only /etc): the change is undone at once, so the
// command's error is the whole truth. It used to return the error with
// the change live in the kernel until the next command undid it.
func (e *Engine) failAfterKernel(ctx context.Context, in *Intent, err error) error {
	if uerr := e.undo(ctx, in); uerr != nil {
		return fmt.Errorf("%w\nthe kernel had the change already, and undoing it failed too (%v): the next moat command undoes it", err, uerr)
	}
	return fmt.Errorf("%w\nthe change was undone: moat's rules and %s are as they were", err, in.Path)
}

const savedFile = "saved.json"

// Disable removes moat's rules from every backend that has them, the
// saved ruleset, the records and any pending confirmation. The policy file
// stays. A change waiting for confirmation that the kernel refuses to
// remove stays waiting (its watchdog rolls it back at the deadline).
func (e *Engine) Disable(ctx context.Context) error {
	if err := e.mustHoldLock(); err != nil {
		return err
	}
	dir := e.o.StateDir
	var errs []error
	if in, err := LoadIntent(dir); err == nil && in != nil && in.FileChanged {
		// A command that died half way had written the policy file: it
		// goes back too, as the repair would have put it (disable takes
		// no repair, so that a broken state cannot block it).
		if ferr := e.undoFile(in); ferr != nil {
			e.warn(fmt.Sprintf("disable: could not put %s back as it was before the interrupted '%s': %v", in.Path, sanitize(in.Command), ferr))
		} else {
			e.warn(fmt.Sprintf("'%s' (PID %d, %s) was interrupted half way: %s is as it was before it",
				sanitize(in.Command), in.PID, in.Time.Local().Format(time.DateTime), in.Path))
		}
	}
	p, err := LoadPending(dir)
	if err == nil && p.State != stateConfirming {
		// The change was never confirmed: it leaves the policy file too
		// (kept as FILE.unconfirmed), or the next 'moat enable' would
		// apply it for good. Best effort: disable must always work.
		if ferr := e.restoreFile(p); ferr != nil {
			e.warn(fmt.Sprintf("disable: could not put %s back as it was before the unconfirmed change: %v", p.PolicyPath, ferr))
		} else {
			e.warn(fmt.Sprintf("the unconfirmed change applied at %s was dropped: %s is as it was before it (the unconfirmed one is kept as %s.unconfirmed)",
				p.Created.Local().Format(time.TimeOnly), p.PolicyPath, p.PolicyPath))
		}
	}
	// moat's rules go before the pending change and its watchdog: a kill
	// in between must not leave the unconfirmed change in the kernel
	// with nothing to roll it back (the watchdog, left, rolls it back
	// at the deadline: the rules before it, not the change).
	kept := false // the unconfirmed change is still in the kernel
	for _, b := range e.o.Backends {
		if b.Available() != nil {
			continue
		}
		if rerr := b.Remove(ctx); rerr != nil {
			errs = append(errs, fmt.Errorf("remove moat's %s rules: %w", b.Name(), rerr))
			kept = kept || (err == nil && p.State != stateConfirming && b.Name() == p.Backend)
		}
	}
	if err := e.step("disable-removed"); err != nil {
		return err
	}
	if kept {
		// The kernel refused to remove it: the change stays waiting,
		// and its watchdog rolls it back at the deadline.
		e.warn(fmt.Sprintf("disable: the unconfirmed change applied at %s is still in the kernel: it waits for confirmation, and is rolled back at %s",
			p.Created.Local().Format(time.TimeOnly), p.Deadline.Local().Format(time.TimeOnly)))
	} else {
		// The watchdog is told to stop before its record goes: killed
		// between the two, one finding the record gone and no outcome
		// rolled back the copy it read at the deadline, on top of the
		// disable. Killed once it is stopped, the change still waits
		// (the next command starts a new watchdog, or disable again
		// clears it).
		if err == nil {
			p.Watchdog.Stop()
		}
		// Cleared even when unreadable: nothing is left to roll back to.
		errs = append(errs, clearPending(dir))
		if err := e.step("disable-pending-cleared"); err != nil {
			return err
		}
		if err == nil {
			// A watchdog that is stopped (SIGSTOP) gets SIGTERM when it
			// resumes; one that acts first must find its change settled,
			// not roll it back from its copy on top of the disable.
			if oerr := writeOutcome(dir, Outcome{ID: p.ID, Outcome: "disabled", Time: e.o.Now(), Applied: p.Created, Reason: "moat disable"}); oerr != nil {
				e.warn(oerr.Error())
			}
		}
	}
	if err := e.step("disable-cleared"); err != nil {
		return err
	}
	errs = append(errs, safeapply.Forget(dir), removeState(dir, AppliedFile), removeState(dir, IntentFile))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Texts no record names: left for the next change if they cannot be
	// collected now (disable must always work).
	if err := collectTexts(dir); err != nil {
		e.o.Log.Debug("collect state texts", "err", err)
	}
	return nil
}

// Reset removes moat's rules (as Disable) and empties the policy file,
// keeping the old one as FILE.TIMESTAMP.bak. It returns the backup's name
// ("" when the file was empty).
func (e *Engine) Reset(ctx context.Context, path string) (string, error) {
	if err := e.mustHoldLock(); err != nil {
		return "", err
	}
	doc, err := policy.ReadDocument(path)
	if err != nil {
		return "", err
	}
	backup := ""
	if len(doc.Lines) > 0 {
		bak := &policy.Document{Name: path + "." + e.o.Now().UTC().Format("20060102T150405Z") + ".bak", Lines: doc.Lines}
		if err := bak.Write(); err != nil {
			return "", err
		}
		backup = bak.Name
	}
	if err := e.Disable(ctx); err != nil {
		return backup, err
	}
	empty := &policy.Document{Name: path, Lines: []string{"# moat policy: one rule a line, in ufw's syntax ('moat --help')"}}
	return backup, empty.Write()
}

// applyText compiles a policy text and loads it with the named backend,
// removing moat's rules from the others (used to go back to a recorded
// state: no lockout check, no records).
func (e *Engine) applyText(ctx context.Context, name, text, source string) error {
	p, err := e.policyOf(policy.NewDocument("applied", []byte(text)))
	if err != nil {
		return err
	}
	p.Source = source
	b, err := e.backend(name)
	if err != nil {
		return err
	}
	// The lists it loaded then: their saved copies (a killed apply saves
	// its own only once the kernel took them).
	rs, _, err := e.compileSaveLater(p, false, true)
	if err != nil {
		return err
	}
	if err := b.Apply(ctx, rs); err != nil {
		return err
	}
	return e.removeExcept(ctx, b.Name())
}

// removeExcept removes moat's rules from every backend but keep.
func (e *Engine) removeExcept(ctx context.Context, keep ...string) error {
	var errs []error
	for _, b := range e.o.Backends {
		if slices.Contains(keep, b.Name()) || b.Available() != nil {
			continue
		}
		ok, err := b.Active(ctx)
		if err == nil && ok {
			err = b.Remove(ctx)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove moat's %s rules: %w", b.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// records are the files an apply writes once the kernel took its change:
// the policy file (an edit's), the applied record and the boot record,
// prepared (written and synced beside their names) while the kernel
// takes it.
type records struct {
	done          chan struct{}
	file          *policy.PreparedFile
	applied, save *atomicfile.Prepared
	err           error
}

// prepareRecords starts writing the records of an apply of pl: next is
// the applied record, save the boot record (nil: not rewritten).
func (e *Engine) prepareRecords(pl plan, next *Applied, save *safeapply.Saved) *records {
	dir := e.o.StateDir
	r := &records{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		var err error
		if pl.writeFile {
			// The applied record's text is the document's (apply made
			// it), written without another copy of it.
			r.file, err = pl.doc.PrepareText(next.Policy)
		}
		if err == nil {
			if r.applied, err = prepareApplied(dir, next); err != nil {
				err = fmt.Errorf("record what is applied: %w", err)
			}
		}
		if err == nil && save != nil {
			r.save, err = safeapply.PrepareSave(dir, *save)
		}
		r.err = err
	}()
	return r
}

// commit puts the prepared records in place: the applied record, then the
// boot record, then one sync of the state directory, while the policy
// file is renamed and its directory synced.
func (r *records) commit(dir string) error {
	<-r.done
	if r.err != nil {
		return r.err
	}
	fileDone := make(chan error, 1)
	go func() { fileDone <- r.file.Commit() }()
	err := r.applied.Commit()
	if err != nil {
		err = fmt.Errorf("record what is applied: %w", err)
	} else if err = r.save.Commit(); err != nil {
		err = fmt.Errorf("save ruleset: %w", err)
	} else {
		err = statedir.SyncDir(dir)
	}
	if ferr := <-fileDone; ferr != nil {
		err = errors.Join(fmt.Errorf("write policy: %w", ferr), err)
	}
	return err
}

// abort removes the prepared records not committed.
func (r *records) abort() {
	<-r.done
	r.file.Abort()
	r.applied.Abort()
	r.save.Abort()
}
