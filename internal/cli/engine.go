package cli

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/safeapply"
	"github.com/moat-fw/moat/internal/setstore"
	"github.com/moat-fw/moat/internal/statedir"
)

// The prefixes of the backends' element records in the state directory
// (setstore: what each policy set holds).
const (
	nftElementsPrefix = "nft-set."
	iptElementsPrefix = "ipset."
)

// engine returns the apply engine, wired to the real kernel, /proc and
// the moat binary (tests replace the options through a.engineHook).
func (a *app) engine() *engine.Engine {
	if a.eng != nil {
		return a.eng
	}
	var backends []engine.Backend
	a.kernel = backend.All()
	for _, b := range a.kernel {
		// Policy set changes are sent as differences.
		switch kb := b.(type) {
		case *nft.Backend:
			kb.Elements = setstore.Dir{Path: a.stateDir, Prefix: nftElementsPrefix}
			// The fingerprint of what it loaded is read back while the
			// records are synced (afterChange takes it).
			kb.AfterCommit = func(ctx context.Context) { a.startAhead(ctx, kb) }
			// A hand change nft -f may have written over is said.
			kb.Warn = a.warn
			kb.Log = a.log
		case *ipt.Backend:
			kb.Elements = setstore.Dir{Path: a.stateDir, Prefix: iptElementsPrefix}
			kb.StateDir = a.stateDir
			kb.KeyDir = a.stateDir
			// --verbose: why a rule change went through iptables-restore.
			kb.Log = a.log
			kb.Warn = a.warn
		}
		backends = append(backends, b)
	}
	findSSH := a.findSSH()
	o := engine.Options{
		StateDir: a.stateDir,
		Backends: backends,
		// The engine takes the backend of Backends by the detected name.
		Detect:  func() engine.Backend { return backend.Detect() },
		FindSSH: findSSH,
		// The logged-in sessions come from the same scan of the
		// processes and the same TCP table as the live ones (a second
		// scan, and /proc/net/tcp, cost a third of a command).
		LoggedIn: func() ([]netip.Addr, error) {
			st, err := findSSH()
			return st.LoggedIn, err
		},
		FindForwarded:    safeapply.FindForwardedSSH,
		IfaceFor:         safeapply.IfaceFor,
		ResolvConf:       "/etc/resolv.conf",
		StartWatchdog:    a.startWatchdog,
		FailClosedPolicy: func() string { return safeapply.FailClosedPolicy(a.sshdConfig) },
		Services:         a.services(),
		Apps:             a.apps(),
		Log:              a.log,
		Warn:             a.warn,
		OtherRecords:     append([]string{fingerprintFile, chainsFile}, ipt.StateFiles()...),
		PolicyPath:       a.configPath(),
		// The element records of the backends' policy sets.
		OtherRecordPrefixes: []string{nftElementsPrefix, iptElementsPrefix},
	}
	if a.engineHook != nil {
		a.engineHook(&o)
		// The drift check reads the kernel of the backends the engine
		// loads: a test's fakes have none, and the kernel of the host
		// running the test is not moat's (it said "chain forward is
		// missing" after every apply on fakes).
		a.kernel = nil
		for _, b := range o.Backends {
			if kb, ok := b.(backend.Backend); ok {
				a.kernel = append(a.kernel, kb)
			}
		}
	}
	a.eng = engine.New(o)
	return a.eng
}

// locked runs fn holding moat's state lock (every command that changes
// moat's state runs this way, so two never interleave).
func (a *app) locked(cmd *cobra.Command, fn func(ctx context.Context, eng *engine.Engine) error) error {
	ctx := cmd.Context()
	eng := a.engine()
	unlock, err := eng.Lock(ctx, a.commandLine(cmd))
	if err != nil {
		return err
	}
	defer unlock()
	if noApply[cmd.Name()] {
		return fn(ctx, eng)
	}
	before, clean := a.repairDrift(ctx)
	err = runChecked(func() error {
		a.setChecked(ctx, before)
		defer a.setChecked(ctx, appliedState{})
		return fn(ctx, eng)
	}, func(try int) {
		a.log.Debug("the ruleset changed after moat's rules were checked: checking them again", "try", try)
		// The last run of a repair goes unchecked: a busy namespace
		// (another program committing all the time) refused an
		// iptables repair, whose restores take long, run after run.
		a.repairUnchecked = try >= recheckTries-1
		before, clean = a.repairDrift(ctx)
	}, func() func() {
		fmt.Fprintf(a.errOut, "moat: the nftables ruleset kept changing while this command ran: checking moat's rules again with the guard's bans held\n")
		return eng.HoldBans(ctx)
	})
	if err != nil {
		return err
	}
	a.afterChange(ctx, before, clean)
	return nil
}

// runChecked runs a command (run) whose change Apply refuses when the
// ruleset changed after moat's rules were checked
// (nft.ErrChangedSinceCheck: nothing of it was committed) again, after
// recheck has checked moat's rules again: the command then goes on (the
// change was not to moat's rules: a ban, another table) or reports the
// drift as at its start. At most recheckTries runs; the last
// recheckHoldingBans of them with the bans lock held (holdBans: the
// guard's bans, which move the generation too, wait), then a clear
// error, nothing changed.
func runChecked(run func() error, recheck func(try int), holdBans func() func()) error {
	for try := 1; ; try++ {
		err := run()
		if err == nil || !errors.Is(err, nft.ErrChangedSinceCheck) {
			return err
		}
		if try >= recheckTries {
			return fmt.Errorf("%w, again and again (%d times): nothing was changed; run the command again", err, try)
		}
		if try == recheckTries-recheckHoldingBans {
			unlock := holdBans()
			defer unlock()
		}
		recheck(try)
	}
}

// recheckTries bounds the runs of a command whose change was refused
// because the ruleset changed after moat's rules were checked; the last
// recheckHoldingBans of them hold the bans lock (the guard's bans wait).
const (
	recheckTries       = 6
	recheckHoldingBans = 2
)

// setChecked gives the backend holding the applied record st the
// generation at which this command's drift check found moat's rules to
// be what moat applied: it commits a change only there (or after its own
// commits), never over a change made since (nft.ErrChangedSinceCheck).
// Apply, finding the generation moved, checks moat's rules again itself
// (the fingerprint against the record, as this check did) and goes on
// from the generation read before it when they are unchanged. A zero st
// takes it back.
func (a *app) setChecked(ctx context.Context, st appliedState) {
	for _, b := range a.kernel {
		on := nft.CheckedGen{}
		if st.Known && a.verified.ok && b.Name() == st.Backend {
			on = nft.CheckedGen{Gen: a.verified.gen, OK: true, Recheck: func() (uint32, bool) {
				a.verified = verifiedGen{}
				if !a.unchangedSinceApply(ctx, b, st, false) || !a.verified.ok {
					return 0, false
				}
				a.log.Debug("the ruleset changed after the drift check; moat's rules unchanged", "generation", a.verified.gen)
				return a.verified.gen, true
			}}
		} else if st.Known && a.repairing.ok && !a.repairUnchecked && b.Name() == st.Backend {
			// The check found moat's rules changed outside moat and this
			// command rewrites them whole: a change made since (another
			// rule put in by hand) would be erased unreported. Apply,
			// finding the generation moved, compares them again and
			// reports what it finds before it goes on.
			on = nft.CheckedGen{Gen: a.repairing.gen, OK: true, Recheck: func() (uint32, bool) {
				g, err := nft.Generation()
				if err != nil {
					return 0, false
				}
				if a.repairing.fp != "" && a.repairPrint(ctx, b) == a.repairing.fp {
					// As the check found them: another table's commit,
					// or a ban. Cheap, so a busy namespace lets it by.
					return g, true
				}
				if why := a.driftReason(ctx, b, st); why != "" && !sameDrift(why, a.repairWhy) && !sameDrift(why, a.driftSaid) {
					fmt.Fprintf(a.errOut, "moat: %s (found again after this command's check): the next apply rewrites moat's rules whole\n", why)
					a.repairWhy, a.driftSaid = why, why
				}
				return g, true
			}}
		}
		switch kb := b.(type) {
		case *nft.Backend:
			kb.Checked = on
		case *ipt.Backend:
			if !kb.InNftables() {
				on = nft.CheckedGen{}
			}
			kb.Checked = on
		}
	}
}

// lockedToRemove is locked for disable and reset: no repair first, so a
// broken state never stands in the way of removing moat.
func (a *app) lockedToRemove(cmd *cobra.Command, fn func(ctx context.Context, eng *engine.Engine) error) error {
	ctx := cmd.Context()
	eng := a.engine()
	unlock, err := eng.LockToRemove(ctx, a.commandLine(cmd))
	if err != nil {
		return err
	}
	defer unlock()
	return fn(ctx, eng)
}

// commandLine is the command as the admin typed it, for the lock's
// "waiting for" message and the journal.
func (a *app) commandLine(cmd *cobra.Command) string {
	if len(a.args) > 0 {
		return "moat " + strings.Join(a.args, " ")
	}
	return cmd.CommandPath()
}

// change is the engine request the global flags make.
func (a *app) change(cmd *cobra.Command) engine.Change {
	return engine.Change{Command: a.commandLine(cmd), Path: a.configPath(), Backend: a.backend, Force: a.force, Confirm: a.confirm}
}

// configPath is the policy file's absolute name (as given if it has
// none): the engine records it (the journal, a change waiting for
// confirmation) for what repairs or rolls back later, which may run in
// another working directory (another command's repair, a watchdog it
// restarts), where a relative name is another file.
func (a *app) configPath() string {
	if abs, err := filepath.Abs(a.config); err == nil {
		return abs
	}
	return a.config
}

// startWatchdog starts 'moat watchdog ID' outside this command and its
// login session (a transient systemd unit, else setsid: see
// watchdogStarter), logging to the state directory.
func (a *app) startWatchdog(id string) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("find the moat binary for the watchdog: %w", err)
	}
	logf, err := statedir.OpenFile(a.stateDir, engine.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, statedir.Perm)
	if err != nil {
		return 0, fmt.Errorf("watchdog log: %w", err)
	}
	defer func() { _ = logf.Close() }() // the watchdog has its own descriptor
	logPath := filepath.Join(a.stateDir, engine.LogFile)
	if abs, err := filepath.Abs(logPath); err == nil {
		logPath = abs
	}
	s := &watchdogStarter{root: "/", lookPath: exec.LookPath, run: execOutput, setsid: startSetsid, log: a.log, env: os.Getenv, getwd: os.Getwd}
	return s.start(self, a.watchdogArgs(id), id, logf, logPath)
}

// watchdogArgs are the arguments of 'moat watchdog ID': this command's
// state directory and policy file by their absolute names, and the sshd
// configuration its fail-closed rollback reads SSH's ports from (the
// last resort when nothing else loads: a --sshd-config left out made it
// read /etc/ssh/sshd_config, and open another port than sshd's).
func (a *app) watchdogArgs(id string) []string {
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	args := []string{"--state-dir", abs(a.stateDir), "--config", a.configPath()}
	if a.sshdConfig != "" {
		args = append(args, "--sshd-config", abs(a.sshdConfig))
	}
	if a.verbose {
		args = append(args, "--verbose")
	}
	return append(args, "watchdog", id)
}

// deadlineText is a confirmation deadline as the admin reads it: the time
// of day, with the date when it is not within the next 12 hours (a
// '--confirm 99999h' said "before 04:58:24", eleven years away).
func deadlineText(deadline, now time.Time) string {
	if d := deadline.Sub(now); d >= 0 && d < 12*time.Hour {
		return deadline.Format(time.TimeOnly)
	}
	return deadline.Format(time.DateTime)
}

// report prints what an apply did that the admin must know.
func (a *app) report(res *engine.Result) {
	if res.Switched != "" && res.Applied != nil {
		a.printf("Backend changed from %s to %s: moat's %s rules were removed\n", res.Switched, res.Applied.Backend, res.Switched)
	}
}

// waitConfirm tells the admin what to do and, unless --no-wait, waits for
// the confirmation or the rollback.
func (a *app) waitConfirm(ctx context.Context, p *engine.Pending) error {
	if p == nil {
		return nil
	}
	a.printf("Waiting for confirmation: from a NEW connection, run 'moat confirm' before %s (%s from now),\n"+
		"or the previous rules come back. 'moat rollback' goes back at once.\n",
		deadlineText(p.Deadline, time.Now()), time.Until(p.Deadline).Round(time.Second))
	if a.noWait {
		return nil
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	replaced := map[int]bool{}
	for {
		if o, err := engine.LastOutcome(a.stateDir); err == nil && o.ID == p.ID {
			if o.Outcome == "confirmed" {
				a.printf("Confirmed: the new rules stay.\n")
				return nil
			}
			if o.Outcome == "disabled" {
				return &exitError{code: exitRolledBack, err: errors.New("moat was disabled while the change waited for confirmation: moat's rules are removed")}
			}
			return &exitError{code: exitRolledBack, err: fmt.Errorf("not confirmed in time: the previous rules are back (%s)", o.Reason)}
		}
		if w := p.Watchdog; w.PID > 0 && !replaced[w.PID] && !w.Alive() {
			// The watchdog is gone (killed) and the change is not settled:
			// taking the lock runs the repair, which starts a new watchdog
			// (or rolls the change back if its deadline passed).
			replaced[w.PID] = true
			if unlock, err := a.engine().Lock(ctx, "moat (waiting for confirmation)"); err == nil {
				unlock()
			}
			if np, err := engine.LoadPending(a.stateDir); err == nil && np.ID == p.ID {
				p = np
			}
		}
		if p.Left() < -10*time.Second {
			return errors.New("the rollback watchdog did not act: check 'moat status' and " + filepath.Join(a.stateDir, engine.LogFile))
		}
		select {
		case <-ctx.Done():
			a.printf("Stopped waiting; the rollback is still armed.\n")
			return nil
		case <-tick.C:
		}
	}
}

// findSSH is the command's one recentSSH: the engine's lockout check and
// protected sets and a blocklist update's check of the sessions share a
// scan.
func (a *app) findSSH() func() (safeapply.SSHState, error) {
	if a.sshScan == nil {
		a.sshScan = recentSSH()
	}
	return a.sshScan
}

// prefetchSSH starts the command's scan for SSH sessions (a few
// milliseconds: every process's stat and exe) while the lock is taken and
// the state and the kernel are read; the lockout check, which must see
// the sessions before anything is applied, waits for it and uses what it
// found, as it uses any scan of the last second. Only when a policy is
// applied: an edit of an inactive policy applies and checks nothing.
func (a *app) prefetchSSH() {
	if _, err := os.Lstat(filepath.Join(a.stateDir, engine.AppliedFile)); err != nil {
		return
	}
	scan := a.findSSH()           // set before the goroutine: it is not locked
	go func() { _, _ = scan() }() // an error is found again by the check
}

// scanSSH is the scan recentSSH reuses (tests count it).
var scanSSH = safeapply.FindSSH

// recentSSH finds the live SSH sessions, reusing what it found less than a
// second ago: one command looks twice (a scan of every process's sockets,
// tens of milliseconds), and no session comes or goes that matters in
// between. A long-running process (the watchdog) looks anew each time.
// The scan is the one scanSSH names when it is made: a prefetch still
// running after its command ended (an edit refused before its check)
// never reads the variable a test swaps (TestPrefetchKeepsItsScan).
func recentSSH() func() (safeapply.SSHState, error) {
	var (
		mu   sync.Mutex
		when time.Time
		st   safeapply.SSHState
		scan = scanSSH
	)
	return func() (safeapply.SSHState, error) {
		mu.Lock()
		defer mu.Unlock()
		if !when.IsZero() && time.Since(when) < time.Second {
			return st, nil
		}
		found, err := scan("/proc", os.Getenv("SSH_CONNECTION"))
		if err != nil {
			return found, err
		}
		st, when = found, time.Now()
		return st, nil
	}
}

// warn prints a warning on stderr.
func (a *app) warn(msg string) { fmt.Fprintf(a.errOut, "moat: warning: %s\n", msg) }
