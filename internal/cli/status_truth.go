package cli

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/drift"
	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/foreign"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/safeapply"
	"github.com/moat-fw/moat/internal/termtext"
)

// statusFailClosed says that 'moat restore' fell back to the fail-closed
// ruleset: only SSH comes in.
type statusFailClosed struct {
	Since  time.Time `json:"since"`
	Reason string    `json:"reason"`
}

// statusTruth is how the policy file, what moat applied, and moat's rules
// in the kernel compare.
type statusTruth struct {
	// InSync: all three agree (and moat is not fail-closed).
	InSync bool `json:"in_sync"`
	// FileNotApplied: moat.conf differs from what is applied ('moat
	// reload'); FileError: moat.conf does not even parse.
	FileNotApplied bool   `json:"file_not_applied"`
	FileError      string `json:"file_error,omitempty"`
	// AppliedUnknown: moat is active but what it applied is not recorded
	// (an older moat applied it); rules are then read from the file.
	AppliedUnknown bool              `json:"applied_unknown,omitempty"`
	FailClosed     *statusFailClosed `json:"fail_closed,omitempty"`
	// KernelChanged lists how moat's table or chains differ from what moat
	// loaded: changes made outside moat ('moat reload' repairs them).
	KernelChanged []string `json:"kernel_changed,omitempty"`
	// Unverified says why moat's rules in the kernel could not be compared
	// with what moat applied (a protected set or the scratch namespace's
	// load unreadable): no proof either way, so not in sync.
	Unverified string `json:"unverified,omitempty"`
	// EarlierOrder: moat's rules are as an earlier moat ordered them
	// (upgraded since; the same verdicts): no hand change, and 'moat
	// reload' loads this version's order.
	EarlierOrder bool `json:"earlier_order,omitempty"`
	// missing are the origin tags of applied rules the kernel lacks.
	missing map[string]bool
	// OtherFiltering is filtering outside moat that also sees the packets:
	// it can drop what moat allows.
	OtherFiltering []foreign.Finding `json:"other_filtering"`
	// AppsChanged: an application profile the applied policy names has
	// changed since it was applied ('moat reload' applies it).
	AppsChanged bool `json:"apps_changed,omitempty"`
	// Interrupted is a change that a moat command began and did not
	// finish (killed); the next state-changing command undoes it.
	Interrupted *statusInterrupted `json:"interrupted,omitempty"`
	// RulesRemoved: moat is inactive though what it applied is recorded
	// (at this time; 'moat disable' removes the record after the rules):
	// its rules were removed outside moat (nft flush ruleset, which a
	// restart of nftables.service runs; iptables -F and -X), not
	// restored at boot, or by a disable killed before its end.
	RulesRemoved *time.Time `json:"rules_removed,omitempty"`
	// StateErrors name the records of the state directory that cannot
	// be read (torn, damaged): what moat applied, the journal of an
	// interrupted command, the change waiting for confirmation.
	StateErrors []string `json:"state_errors,omitempty"`
}

// stateError records a record of the state directory that cannot be
// read, saying what follows from it.
func (t *statusTruth) stateError(err error, follows string) {
	t.StateErrors = append(t.StateErrors, fmt.Sprintf("%v: %s", err, follows))
	t.InSync = false
}

type statusInterrupted struct {
	Command string    `json:"command"`
	Time    time.Time `json:"time"`
	PID     int       `json:"pid"`
	// Running: the process still runs (the change is in progress, not
	// interrupted).
	Running bool `json:"running"`
}

// interrupted reads the engine's journal of a change in progress (an
// unreadable one is a state error of rep).
func (a *app) interrupted(rep *statusTruth) *statusInterrupted {
	in, err := engine.LoadIntent(a.stateDir)
	if err != nil {
		rep.stateError(err, "a moat command was interrupted and its journal is unreadable: commands that change moat's state refuse to run until it is removed, but a change waiting for confirmation is still rolled back ('moat rollback', or its watchdog at the deadline); 'moat disable' removes moat's rules and state whatever they are")
	}
	if err != nil || in == nil {
		return nil
	}
	return &statusInterrupted{Command: in.Command, Time: in.Time, PID: in.PID,
		Running: in.PID > 0 && syscall.Kill(in.PID, 0) == nil}
}

// compare fills the truth fields of rep for active backend b and returns
// the applied policy (nil when it is not recorded).
func (a *app) compare(ctx context.Context, b backend.Backend, file *policy.Policy, fileErr error, rep *statusReport) (*policy.Policy, error) {
	defer func() {
		rep.InSync = !rep.FileNotApplied && !rep.AppliedUnknown && rep.FailClosed == nil && len(rep.KernelChanged) == 0 && rep.Unverified == "" && rep.Interrupted == nil &&
			len(rep.StateErrors) == 0
	}()
	if fileErr != nil {
		rep.FileNotApplied, rep.FileError = true, fileErr.Error()
	}
	st, stErr := a.loadAppliedErr()
	if stErr != nil {
		rep.stateError(stErr, "what moat applied is unknown, so are changes made outside moat (the next change, 'moat reload', rewrites the record)")
	}
	var applied *policy.Policy
	var err error
	if st.Known {
		applied, rep.AppsChanged, err = a.parseAppliedThen(b, st.Policy)
	}
	if !st.Known || err != nil {
		// Nothing recorded (an older moat applied it): when the kernel
		// holds exactly the file's rules, the file is what is applied.
		if file != nil {
			script, err := b.Script(a.compile(file))
			if err != nil {
				return nil, err
			}
			diff, _, err := drift.Against(ctx, b.Name(), script, nil)
			if err != nil {
				return nil, err
			}
			if len(diff) == 0 {
				return file, nil
			}
		}
		rep.AppliedUnknown = true
		return nil, nil
	}
	if st.FailClosed {
		rep.FailClosed = &statusFailClosed{Since: st.Time, Reason: st.FailReason}
	}
	if usesApps(applied) {
		// What was applied is the text with the profiles of then.
		if then, changed := a.appliedWithApps(b, st.Policy); then != nil {
			applied, rep.AppsChanged = then, changed
		}
	}
	want, err := b.Script(a.compileApplied(applied))
	if err != nil {
		return nil, err
	}
	if file != nil {
		got, err := b.Script(a.compile(file))
		if err != nil {
			return nil, err
		}
		otherBackend := a.backend == "" && file.Backend != policy.BackendAuto && file.Backend != "" && string(file.Backend) != b.Name()
		rep.FileNotApplied = got != want || otherBackend || rep.AppsChanged
	}
	// The fingerprint recorded after moat's apply says fast that nothing
	// changed; otherwise the full comparison says what did.
	if !a.unchangedSinceApply(ctx, b, st, false) {
		if rep.KernelChanged, rep.missing, err = drift.Against(ctx, b.Name(), want, nil); err != nil {
			return nil, err
		}
		if len(rep.KernelChanged) == 0 {
			// A comparison that cannot be made proves nothing: status
			// says so (no record is written here).
			if rep.KernelChanged, err = a.changedInPlace(ctx, b, a.compileApplied(applied), want); err != nil {
				rep.Unverified, _, _ = strings.Cut(err.Error(), "\n")
			}
		}
		if len(rep.KernelChanged) > 0 && a.earlierOrder(ctx, b, applied, rep.KernelChanged) {
			rep.KernelChanged, rep.missing, rep.EarlierOrder = nil, nil, true
		}
		if len(rep.KernelChanged) > 0 && a.heldByKilledUpdate(ctx, b, st) {
			rep.KernelChanged, rep.missing = nil, nil
		}
	}

	if sd, ok := b.(backend.SplitDetector); ok {
		if msg, err := sd.Split(ctx); err == nil && msg != "" {
			rep.KernelChanged = append(rep.KernelChanged, msg)
		}
	}
	return applied, nil
}

// printTruth writes what differs between file, applied and kernel.
func (a *app) printTruth(rep *statusReport) {
	for _, e := range rep.StateErrors {
		a.printf("DAMAGED STATE: %s\n", termtext.Printable(e))
	}
	if in := rep.Interrupted; in != nil {
		if in.Running {
			a.printf("In progress: '%s' (pid %d) is changing moat's state\n", in.Command, in.PID)
		} else {
			a.printf("INTERRUPTED: '%s' died at %s in the middle of a change; the next moat command that changes something undoes it\n",
				in.Command, in.Time.Local().Format(time.DateTime))
		}
	}
	if t := rep.RulesRemoved; t != nil {
		a.printf("moat's rules are NOT IN THE KERNEL, though what moat applied at %s is recorded: removed outside moat (nft flush ruleset, a restart of nftables.service, iptables -F and -X), not restored at boot, or by a 'moat disable' that did not finish; 'moat enable' loads them again ('moat disable' clears the record)\n",
			t.Local().Format(time.DateTime))
	}
	if rep.Status != "active" {
		if rep.FileError != "" {
			a.printf("%s is invalid (nothing of it is applied; 'moat check' says where):\n%s\n", rep.Config, rep.FileError)
		}
		return
	}
	if fc := rep.FailClosed; fc != nil {
		reason := fc.Reason
		if reason == "" {
			reason = "no reason recorded"
		}
		a.printf("FAIL-CLOSED since %s: the saved ruleset was unreadable (%s); only SSH is open ('moat reload' applies %s)\n",
			fc.Since.Local().Format(time.DateTime), reason, rep.Config)
	}
	switch {
	case rep.FileError != "":
		a.printf("%s is invalid; what is applied stays until it is fixed:\n%s\n", rep.Config, rep.FileError)
	case rep.AppsChanged:
		a.printf("Application profiles changed since they were applied (moat reload)\n")
	case rep.FileNotApplied && rep.FailClosed == nil:
		a.printf("Changes in %s not applied (moat reload)\n", rep.Config)
	case rep.AppliedUnknown:
		a.printf("What moat applied is not recorded (an older moat?): the rules below are %s's; 'moat reload' applies and records it\n", rep.Config)
	}
	if rep.EarlierOrder {
		a.printf("moat's rules are in the order an earlier version of moat loaded them (the same verdicts; moat was upgraded since): 'moat reload' loads this version's order\n")
	}
	if rep.Unverified != "" {
		a.printf("moat's rules could not be compared with what moat applied (%s): whether they were changed outside moat is not known ('moat reload' rewrites them whole)\n", termtext.Printable(rep.Unverified))
	}
	if len(rep.KernelChanged) > 0 {
		what := "moat's table was changed outside moat"
		if rep.Backend == "iptables" {
			what = "moat's chains were changed outside moat"
		}
		switch in := rep.Interrupted; {
		case rep.Pending != nil && rep.Pending.rollingBack:
			// Not outside moat: the rollback puts back the rules of
			// before the change (it runs, or was killed part way).
			a.printf("moat's rules differ from what moat last applied: the rollback of the unconfirmed change began and has not finished (it runs, or was killed part way: the watchdog, 'moat rollback', or the next moat command that changes something finishes it):\n")
		case in != nil && in.Running:
			// Not outside moat: the command running is changing them.
			what = fmt.Sprintf("moat's rules differ from what moat last applied while '%s' (pid %d) changes them", termtext.Printable(in.Command), in.PID)
			a.printf("%s:\n", what)
		case in != nil:
			// Not outside moat: the command killed left them part changed.
			what = fmt.Sprintf("moat's rules differ from what moat last applied: the interrupted '%s' left them part changed (the next moat command that changes something undoes it)", termtext.Printable(in.Command))
			a.printf("%s:\n", what)
		default:
			a.printf("%s (moat reload repairs it):\n", what)
		}
		for _, c := range rep.KernelChanged {
			a.printf("  - %s\n", c)
		}
	}
}

// ruleMark says when a listed rule is not what the kernel does.
func ruleMark(rep *statusReport, r statusRule) string {
	switch {
	case rep.Status != "active":
		return ""
	case rep.missing[r.CounterID]:
		return "(NOT IN THE KERNEL: removed outside moat)"
	case !r.Applied:
		return "(not applied)"
	case !r.InFile:
		return "(applied; not in " + rep.Config + ")"
	}
	return ""
}

// usesApps says whether a policy names application profiles.
func usesApps(p *policy.Policy) bool {
	for _, r := range p.RuleSeq() {
		if r.FromApp != "" || r.ToApp != "" {
			return true
		}
	}
	return false
}

// parseAppliedThen is parseApplied, or when that fails (a profile the
// applied policy names is gone since) the applied text read with the
// profiles of then, saved for boot; then says it is the latter.
func (a *app) parseAppliedThen(b backend.Backend, text string) (p *policy.Policy, then bool, err error) {
	p, err = a.parseApplied(text)
	if err != nil {
		if old, _ := a.appliedWithApps(b, text); old != nil {
			return old, true, nil
		}
	}
	return p, false, err
}

// appliedWithApps is the applied policy compiled with the application
// profiles as they were when it was applied (saved with the boot ruleset),
// and whether they differ from the profiles now; nil when that is not
// known.
func (a *app) appliedWithApps(b backend.Backend, text string) (*policy.Policy, bool) {
	saved, err := safeapply.LoadSaved(a.stateDir)
	if err != nil || saved.Apps == nil || saved.Policy != text {
		return nil, false
	}
	doc := policy.NewDocument(a.config, []byte(text))
	doc.Apps = policy.AppsFromPorts(saved.Apps)
	then, err := doc.Policy(a.services())
	if err != nil {
		return nil, false
	}
	now, err := a.parseApplied(text)
	if err != nil {
		return then, true
	}
	s1, err1 := b.Script(a.compileApplied(then))
	s2, err2 := b.Script(a.compileApplied(now))
	return then, err1 != nil || err2 != nil || s1 != s2
}
