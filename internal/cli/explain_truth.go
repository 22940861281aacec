package cli

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/drift"
	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/foreign"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// explainSource is the policy explain evaluates, and what to say about it.
type explainSource struct {
	policy *policy.Policy
	// evaluated is "applied" (what moat put in the kernel) or "file".
	evaluated string
	// where names the lines' file in "decided by".
	where string
	notes []string
	// drifted names the first change outside moat found in moat's rules
	// in the kernel (empty: none found).
	drifted string
	// foreign is the filtering outside moat (root only).
	foreign    []foreign.Finding
	foreignErr error
	// banned asks the kernel whether an address is banned (nil: moat is
	// not active, or explain does not run as root); protected whether it
	// is in the protected set (the allowlist and the SSH sessions logged
	// in at the apply, which the drops before conntrack spare).
	banned, protected func(context.Context, netip.Addr) (bool, error)
}

// inKernelProtectSet asks the kernel whether addr is in moat's protected
// set of its family: one element lookup.
func inKernelProtectSet(backendName string) func(context.Context, netip.Addr) (bool, error) {
	return func(ctx context.Context, addr netip.Addr) (bool, error) {
		set := ruleset.ProtectSet4
		if addr.Is6() {
			set = ruleset.ProtectSet6
		}
		var out []byte
		var err error
		if backendName == "iptables" {
			out, err = execrun.Exec(ctx, nil, "ipset", "test", ipt.IPSetName(set), addr.String())
		} else {
			out, err = execrun.Exec(ctx, nil, "nft", "get", "element", "inet", nft.TableName, set, "{ "+addr.String()+" }")
		}
		switch {
		case err == nil:
			return true, nil
		case strings.Contains(string(out)+err.Error(), "is NOT in set"), strings.Contains(string(out)+err.Error(), "No such file or directory"):
			return false, nil
		}
		return false, fmt.Errorf("look %s up in %s: %w", addr, set, err)
	}
}

// explainPolicy picks what explain evaluates: what is applied when moat is
// active and knows it (that is what the kernel does), else the file; with
// a note whenever the two differ or the kernel was changed.
func (a *app) explainPolicy(ctx context.Context) (*explainSource, error) {
	file, fileErr := a.loadPolicy()
	fromFile := func(note string) (*explainSource, error) {
		if fileErr != nil {
			return nil, fileErr
		}
		src := &explainSource{policy: file, evaluated: "file", where: a.config}
		if note != "" {
			src.notes = append(src.notes, note)
		}
		return src, nil
	}
	if os.Geteuid() != 0 {
		return fromFile("as " + a.config + " says: only root can read what is applied")
	}
	b, err := a.activeBackend(ctx)
	if err != nil {
		return fromFile(fmt.Sprintf("as %s says: cannot read what is applied (%v)", a.config, err))
	}
	if b == nil {
		src, err := fromFile("moat is inactive: this is what " + a.config + " does once applied ('moat enable')")
		if src != nil {
			src.foreign, src.foreignErr = a.foreignFilters(ctx)
		}
		return src, err
	}
	st := a.loadApplied()
	var applied *policy.Policy
	if st.Known {
		applied, _, err = a.parseAppliedThen(b, st.Policy)
	}
	if !st.Known || err != nil {
		return fromFile("what moat applied is not recorded: this is " + a.config + " ('moat reload' applies and records it)")
	}
	src := &explainSource{policy: applied, evaluated: "applied", where: a.config}
	if bc, ok := b.(interface {
		Banned(context.Context, netip.Addr) (bool, error)
	}); ok {
		src.banned = bc.Banned
		src.protected = inKernelProtectSet(b.Name())
	}
	if usesApps(applied) {
		if then, changed := a.appliedWithApps(b, st.Policy); then != nil {
			src.policy = then
			if changed {
				src.notes = append(src.notes, "application profiles changed since they were applied: this is what the kernel does now ('moat reload' applies them)")
			}
		}
	}
	want, err := b.Script(a.compileApplied(src.policy))
	if err != nil {
		return nil, err
	}
	switch {
	case st.FailClosed:
		src.where = "the fail-closed ruleset"
		src.notes = append(src.notes, fmt.Sprintf("FAIL-CLOSED since %s: the fail-closed ruleset is applied (only SSH is open), not %s ('moat reload' applies it)",
			st.Time.Local().Format(time.DateTime), a.config))
	case fileErr != nil:
		src.where = "the applied policy"
		src.notes = append(src.notes, fmt.Sprintf("%s is invalid: this is what is applied (%v)", a.config, fileErr))
	default:
		got, err := b.Script(a.compile(file))
		if err != nil {
			return nil, err
		}
		if got != want {
			src.where = "the applied policy (recorded " + st.Time.Local().Format(time.DateTime) + ")"
			src.notes = append(src.notes, fmt.Sprintf("%s differs from what is applied: this is what the kernel does now ('moat reload' applies the file)", a.config))
		}
	}
	src.foreign, src.foreignErr = a.foreignFilters(ctx)
	if diff, _, err := drift.Against(ctx, b.Name(), want, nil); err == nil && len(diff) > 0 && !a.earlierOrder(ctx, b, src.policy, diff) {
		src.notes = append(src.notes, fmt.Sprintf("moat's rules in the kernel were changed outside moat (%s): the kernel may decide otherwise ('moat reload' repairs it)", diff[0]))
		src.drifted = diff[0]
	}
	return src, nil
}
