package engine

import (
	"fmt"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
)

// checkLockout refuses a ruleset that would cut a live SSH session (a
// *safeapply.LockoutError) unless force, which says so loudly, and warns
// about what else it breaks. When the live sessions cannot be determined
// it refuses too (fail closed), unless force or restore: 'moat restore'
// runs at boot, where no session can exist yet, and must not leave the
// host without its firewall.
func (e *Engine) checkLockout(rs *ruleset.Ruleset, p *policy.Policy, force, restore bool) error {
	if e.o.FindSSH == nil {
		return nil
	}
	st, err := e.o.FindSSH()
	if err != nil {
		switch {
		case restore:
			e.warn(fmt.Sprintf("cannot look for SSH sessions (%v); restoring without the lockout check", err))
		case force:
			e.warn(fmt.Sprintf("WARNING: --force: applying although the live SSH sessions cannot be determined (%v)", err))
		default:
			return &safeapply.LockoutError{Unknown: err}
		}
		return nil
	}
	e.o.Log.Debug("ssh", "listen", st.Listen, "sessions", len(st.Sessions))
	if problems := safeapply.CheckSessions(rs, p, st.Sessions, e.o.IfaceFor); len(problems) > 0 {
		lerr := &safeapply.LockoutError{Problems: problems}
		if !force {
			return lerr
		}
		e.warn(fmt.Sprintf("WARNING: --force: applying although it cuts SSH access:\n%s", lerr))
	}
	for _, w := range safeapply.OutgoingSSHWarnings(rs, st.Outgoing, e.o.IfaceFor) {
		e.warn(w)
	}
	// SSH routed to hosts behind this one: only when the new rules
	// filter routed traffic at all (a conntrack dump is not free).
	if fc := rs.Chain(ruleset.Forward); fc != nil && (len(fc.Rules) > 0 || fc.Default != ruleset.Accept) && e.o.FindForwarded != nil {
		if fwd, err := e.o.FindForwarded(); err == nil {
			for _, w := range safeapply.ForwardedSSHWarnings(rs, fwd, e.o.IfaceFor) {
				e.warn(w)
			}
		}
	}
	if len(st.Sessions) == 0 {
		for _, w := range safeapply.PortWarnings(rs, st) {
			e.warn(w)
		}
	}
	if p.Defaults[policy.Out] != policy.Allow && e.o.ResolvConf != "" {
		for _, w := range safeapply.OutgoingWarnings(rs, e.o.ResolvConf) {
			e.warn(w)
		}
	}
	return nil
}

// CheckLockout is the lockout check an apply of p would run, for a dry
// run: p is compiled as an apply compiles it, a *safeapply.LockoutError
// says which live session it would cut, and the warnings an apply gives
// are given. Nothing is changed and no lock is needed.
func (e *Engine) CheckLockout(p *policy.Policy) error {
	rs, err := e.compile(p, false)
	if err != nil {
		return err
	}
	return e.checkLockout(rs, p, false, false)
}
