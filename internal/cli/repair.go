package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/drift"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/setstore"
	"github.com/moat-fw/moat/internal/statedir"
)

// noApply are the locked commands that never load a ruleset with Apply
// (a rollback restores a snapshot whole).
var noApply = map[string]bool{"confirm": true, "rollback": true, "disable": true, "reset": true, "watchdog": true}

// repairDrift makes the next apply rewrite moat's rules whole when they
// are not what moat applied (changed by hand): a partial update trusts
// moat's record of what is loaded, and would leave the hand-made change in
// place. It runs under the state lock, before every state change.
//
// The kernel's fingerprint, recorded after moat's own apply, decides it
// fast; only when it differs (or none is recorded) are the rules compared
// in full, which says what changed. It returns the applied record and
// whether the kernel was found to hold what moat applied.
func (a *app) repairDrift(ctx context.Context) (appliedState, bool) {
	st := a.loadApplied()
	clean := true
	a.verified = verifiedGen{} // only what this check finds vouches
	a.repairing, a.repairWhy = verifiedGen{}, ""
	for _, b := range a.kernel {
		if !st.Known || b.Name() != st.Backend || b.Available() != nil {
			continue
		}
		if a.unchangedSinceApply(ctx, b, st, true) {
			continue
		}
		// The generation before the comparison: if the kernel is found to
		// be what moat applied, it was so at this generation, and the
		// fingerprint recorded then needs no second comparison.
		var compared verifiedGen
		if nb, ok := b.(*nft.Backend); ok && nb.Netlink {
			if g, err := nft.Generation(); err == nil {
				compared = verifiedGen{gen: g, ok: true}
			}
		}
		// The generation the comparison starts at, with moat's rules'
		// fingerprint there: the repair below commits only there, or
		// once they are found as they were (a foreign commit), or says
		// what changed since first.
		var at verifiedGen
		if generationTracks(b) {
			at = a.driftPoint(ctx, b)
		}
		why := a.driftReason(ctx, b, st)
		if why == "" {
			a.recordFingerprint(ctx, b, st, compared)
			continue
		}
		clean = false
		a.repairing, a.repairWhy = at, why
		switch fb := b.(type) {
		case *nft.Backend:
			fb.Full = true
		case *ipt.Backend:
			fb.Full = true
		}
		if active, err := b.Active(ctx); err == nil && !active {
			// None of moat's rules left: no apply comes unless moat is
			// enabled again (an edit says moat is inactive).
			fmt.Fprintf(a.errOut, "moat: moat's rules are not in the kernel, though what moat applied at %s is recorded: removed outside moat or not restored at boot; 'moat enable' loads them again\n",
				st.Time.Local().Format(time.DateTime))
			continue
		}
		if !sameDrift(why, a.driftSaid) {
			// Said once a command, not again on each run of it.
			fmt.Fprintf(a.errOut, "moat: %s: the next apply rewrites moat's rules whole\n", why)
			a.driftSaid = why
		}
	}
	return st, clean
}

// afterChange records the fingerprint of moat's rules once a locked
// command succeeded: when the kernel held what moat applied before it
// (clean), or the command applied anew (a rewrite after drift is whole).
// A command that found drift and did not apply leaves no fingerprint, so
// the next one compares in full again.
func (a *app) afterChange(ctx context.Context, before appliedState, clean bool) {
	st := a.loadApplied()
	if !st.Known {
		_ = statedir.Remove(a.stateDir, fingerprintFile)
		return
	}
	if !clean && st.Time.Equal(before.Time) && st.Policy == before.Policy {
		return
	}
	for _, b := range a.kernel {
		if b.Name() == st.Backend && b.Available() == nil {
			a.recordFingerprint(ctx, b, st, verifiedGen{})
		}
	}
}

// driftReason says why moat's rules in the kernel cannot be trusted to be
// what moat applied, or "".
func (a *app) driftReason(ctx context.Context, b backend.Backend, st appliedState) string {
	if driftReasonHook != nil {
		driftReasonHook()
	}
	applied, err := a.parseApplied(st.Policy)
	if err != nil {
		return "the record of what moat applied is unreadable"
	}
	rs := a.compileApplied(applied)
	want, err := b.Script(rs)
	if err != nil {
		return "" // the apply itself will say what is wrong
	}
	diff, _, err := drift.Against(ctx, b.Name(), want, nil)
	if err != nil {
		// A comparison that cannot be made proves nothing: taken for
		// "no difference", the fingerprint read next (over netlink, which
		// may read what iptables-save cannot, such as a table holding an
		// nftables rule it cannot print) was recorded as moat's, with any
		// rule added by hand in it, and vouched for it from then on.
		msg, _, _ := strings.Cut(err.Error(), "\n")
		return "moat's rules could not be compared with what moat applied (" + msg + ")"
	}
	if len(diff) == 0 {
		if diff, err = a.changedInPlace(ctx, b, rs, want); err != nil {
			// No proof either: a rule changed in place by hand (its tag
			// and verdict kept) shows only there.
			msg, _, _ := strings.Cut(err.Error(), "\n")
			return "moat's rules could not be compared rule by rule with what moat applied (" + msg + ")"
		}
	}
	if len(diff) > 0 && a.earlierOrder(ctx, b, applied, diff) {
		return earlierOrderReason
	}
	if len(diff) > 0 && a.heldByKilledUpdate(ctx, b, st) {
		return ""
	}
	if len(diff) > 0 {
		return "moat's rules were changed outside moat (" + differences(diff) + ")"
	}
	return ""
}

// sameDrift says whether drift reason why says nothing new after said:
// the same text, or both say that the rules could not be compared (their
// parenthesis names the set and the generations of the dump a commit
// spoiled, other on each run of the check while another program commits:
// a reload during a guard's ban storm said it eight times).
func sameDrift(why, said string) bool {
	if why == said {
		return true
	}
	unverified := func(s string) bool {
		return strings.HasPrefix(s, "moat's rules could not be compared ")
	}
	return unverified(why) && unverified(said)
}

// driftPoint is the generation with the fingerprint of moat's rules
// read at it (nothing committed from before the read to after it; a few
// tries), or the generation alone (fp "") when the ruleset kept moving
// or the fingerprint could not be read.
func (a *app) driftPoint(ctx context.Context, b backend.Backend) verifiedGen {
	var at verifiedGen
	for range 3 {
		g, err := nft.Generation()
		if err != nil {
			return verifiedGen{}
		}
		at = verifiedGen{gen: g, ok: true}
		if fp := a.repairPrint(ctx, b); fp != "" {
			if g2, err := nft.Generation(); err == nil && g2 == g {
				at.fp = fp
				return at
			}
		}
	}
	return at
}

// repairPrint is the fingerprint of moat's rules that a repair's check
// compares (with the protected ipsets' listings, which change without a
// commit), or "".
func (a *app) repairPrint(ctx context.Context, b backend.Backend) string {
	k, err := a.kernelFingerprint(ctx, b)
	if err != nil || k.Fingerprint == "" {
		return ""
	}
	return k.Fingerprint + "\x00" + k.Protected
}

// maxNamedDifferences bounds the differences a command's drift message
// names (each is one chain's or set's, already summed up by drift).
const maxNamedDifferences = 8

// differences names every difference the comparison found, up to
// maxNamedDifferences and how many more: the command that reports them
// then rewrites moat's rules whole, so a difference it left unnamed (a
// rule put by hand in the other family's chain, beside the one named) was
// erased without a word.
func differences(diff []string) string {
	if len(diff) <= maxNamedDifferences {
		return strings.Join(diff, "; ")
	}
	return strings.Join(diff[:maxNamedDifferences], "; ") + fmt.Sprintf("; and %d more differences", len(diff)-maxNamedDifferences)
}

// heldByKilledUpdate says whether moat's rules in the kernel are the
// applied policy with the file lists a killed blocklist update named as
// their files hold them (killedUpdateApplied): moat's own unfinished
// change, which the next update completes, not a hand change.
func (a *app) heldByKilledUpdate(ctx context.Context, b backend.Backend, st appliedState) bool {
	p := a.killedUpdateApplied(st.Policy)
	if p == nil {
		return false
	}
	return a.kernelHolds(ctx, b, ruleset.Compile(p))
}

// kernelHolds says whether moat's rules in the kernel are exactly what
// loading rs gives: the same chains and sets (drift.Against), and each
// rule the same as in a scratch namespace (changedInPlace).
func (a *app) kernelHolds(ctx context.Context, b backend.Backend, rs *ruleset.Ruleset) bool {
	script, err := b.Script(rs)
	if err != nil {
		return false
	}
	if d, _, err := drift.Against(ctx, b.Name(), script, nil); err != nil || len(d) > 0 {
		return false
	}
	d, err := a.changedInPlace(ctx, b, rs, script)
	return err == nil && len(d) == 0
}

// earlierOrderReason: the kernel holds moat's rules as an earlier moat
// ordered them (earlierOrder).
const earlierOrderReason = "moat's rules are in the order an earlier version of moat loaded them (moat was upgraded; the same verdicts), not changed by hand"

// earlierOrder says whether moat's rules in the kernel, which differ from
// what this moat renders for applied only in their layout (diff), are
// exactly what an earlier moat loaded for it, rule bodies included: one
// that did not sink the built-ins (ruleset.CompileEarlierOrder), or, on
// iptables, one whose jumps carried no conditions (PlainJumps), or one
// whose raw jump let only loopback past (LoopbackRawJump). That is
// an upgrade, no hand change. Any other order or layout, or a rule
// changed besides, is a hand change.
func (a *app) earlierOrder(ctx context.Context, b backend.Backend, applied *policy.Policy, diff []string) bool {
	for _, d := range diff {
		if !layoutOnly(b.Name(), d) {
			return false
		}
	}
	if a.kernelHolds(ctx, b, a.compileAppliedEarlier(applied)) {
		return true
	}
	if b.Name() != "iptables" {
		return false
	}
	rs := a.compileApplied(applied)
	rs.PlainJumps = true
	if a.kernelHolds(ctx, b, rs) {
		return true
	}
	// The layout before the raw jump was gated by the early lists.
	rs = a.compileApplied(applied)
	rs.LoopbackRawJump = true
	return a.kernelHolds(ctx, b, rs)
}

// layoutOnly says whether d, one difference drift found, can come from
// an earlier layout alone: the rules in another order; on nftables the
// gated chains (input_icmp ...) missing and their gate rules with them,
// the built-ins they hold inline; on iptables the jumps without their
// conditions, and the established accept in moat's chains that the
// condition stands for. Only then is the kernel compared with the
// earlier layouts, which decides.
func layoutOnly(backend, d string) bool {
	if strings.HasSuffix(d, " holds moat's rules in another order") {
		return true
	}
	if backend == "iptables" {
		return strings.HasSuffix(d, ", moat loaded only where \"-m conntrack ! --ctstate RELATED,ESTABLISHED\"") ||
			strings.HasSuffix(d, ", moat loaded only where \"! -i lo\"") ||
			d == "set moat-early4 is missing" || d == "set moat-early6 is missing" ||
			strings.HasSuffix(d, ", moat loaded only where \"-m set --match-set moat-early4 src\"") ||
			strings.HasSuffix(d, ", moat loaded only where \"-m set --match-set moat-early6 src\"") ||
			strings.HasPrefix(d, "chain ") && strings.HasSuffix(d, " has 1 rule moat did not load: builtin:established (return)")
	}
	if backend != "nftables" || !strings.HasPrefix(d, "chain ") {
		return false
	}
	return strings.HasSuffix(d, " is missing") || strings.Contains(d, " moat did not load: ") || strings.Contains(d, " moat loaded: ")
}

// driftReasonHook, in tests, runs at each full comparison.
var driftReasonHook func()

// changedInPlace compares moat's rules in the kernel, rule by rule, with
// what loading the applied policy into an empty scratch namespace gives:
// a rule changed by hand that kept its tag and verdict shows only there.
// When the comparison cannot be made it says so (err): that proves
// nothing, and the callers that vouch for the kernel must not.
func (a *app) changedInPlace(ctx context.Context, b backend.Backend, rs *ruleset.Ruleset, script string) ([]string, error) {
	// The protected sets, which the layout leaves out, against what moat
	// loaded into them.
	if nb, ok := b.(*nft.Backend); ok && nb.Netlink {
		if nb.Elements == nil { // status: the store is only read
			nb.Elements = setstore.Dir{Path: a.stateDir, Prefix: nftElementsPrefix}
		}
		// A set that cannot be read is no proof that it holds what moat
		// loaded: an address added by hand is spared every ban.
		diff, err := drift.SessionSets(nb.LoadedRanges(ctx))
		if err != nil {
			a.log.Debug("compare the protected sets", "err", err)
			return nil, fmt.Errorf("compare the protected sets: %w", err)
		}
		if len(diff) > 0 {
			return diff, nil
		}
	}
	if ib, ok := b.(*ipt.Backend); ok {
		if ib.Elements == nil { // status: the store is only read
			ib.Elements = setstore.Dir{Path: a.stateDir, Prefix: iptElementsPrefix}
		}
		for _, name := range []string{ipt.IPSetName(ruleset.ProtectSet4), ipt.IPSetName(ruleset.ProtectSet6)} {
			want, ok := ib.LoadedSet(ctx, name)
			if !ok {
				continue
			}
			out, err := ib.Run(ctx, nil, "ipset", "list", name)
			if err != nil {
				a.log.Debug("compare the protected sets", "set", name, "err", err)
				return nil, fmt.Errorf("compare the protected set %s: %w", name, err)
			}
			if !drift.IpsetHolds(out, want) {
				return []string{fmt.Sprintf("set %s holds other addresses than moat loaded (the SSH sessions and allowlist at the apply)", name)}, nil
			}
		}
	}
	diff, err := drift.InPlace(ctx, b.Name(), rs, script)
	if err != nil {
		a.log.Debug("compare with a scratch namespace", "err", err)
		return nil, fmt.Errorf("compare with a scratch namespace: %w", err)
	}
	return diff, nil
}
