package cli

import (
	"context"
	"fmt"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/foreign"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// foreignFilters finds filtering outside moat in this network namespace
// (other nftables tables, iptables rules outside moat's chains, ufw,
// firewalld, Docker).
func (a *app) foreignFilters(ctx context.Context) ([]foreign.Finding, error) {
	return foreign.DetectOver(ctx, execrun.Exec, func(prog string) bool {
		_, err := execrun.LookPath(prog)
		return err == nil
	}, nft.ListTables, foreign.XtablesOnlyMoat)
}

// warnForeignLockout tells the admin that the lockout check only judged
// moat's rules while other filtering also sees incoming SSH, and that
// rules ahead of moat's jump accept what moat would refuse (the apply
// leaves them: moat keeps foreign rules ahead of its jump on purpose).
func (a *app) warnForeignLockout(ctx context.Context) {
	found, err := a.foreignFilters(ctx)
	if err != nil {
		a.log.Debug("other filtering", "err", err)
		return
	}
	for _, f := range found {
		if f.Bypass != "" {
			fmt.Fprintf(a.errOut, "moat: warning: rules ahead of moat's jump accept packets moat would refuse: %s\n", f)
		}
		if f.Sees("input") {
			fmt.Fprintf(a.errOut, "moat: warning: the lockout check judges moat's rules only; this also filters incoming packets and may drop new SSH connections: %s\n", f)
		}
	}
}

// printForeign lists the filtering outside moat that status found.
func (a *app) printForeign(rep *statusReport) {
	drops, bypass := splitBypass(rep.OtherFiltering)
	if len(bypass) > 0 {
		a.printf("WARNING: rules ahead of moat's jump accept packets moat would refuse: moat never sees what they accept\n")
		for _, f := range bypass {
			a.printf("  - %s\n", f)
		}
	}
	if len(drops) == 0 {
		return
	}
	a.printf("Other filtering also sees these packets (moat's ALLOW does not override it):\n")
	for _, f := range drops {
		a.printf("  - %s\n", f)
	}
}

// splitBypass parts the findings into filtering that can drop and rules
// ahead of moat's jump that accept (foreign.Finding.Bypass).
func splitBypass(fs []foreign.Finding) (drops, bypass []foreign.Finding) {
	for _, f := range fs {
		if f.Bypass != "" {
			bypass = append(bypass, f)
		} else {
			drops = append(drops, f)
		}
	}
	return drops, bypass
}

// acceptedAhead are the bypass findings that accept (Yes) or may accept
// (Maybe) pkt, whose moat verdict was decided in chain, before moat sees
// it; sure says one of them surely does. famKnown: pkt's family is
// known (audit's sockets), not only guessed from its unspecified addresses
// (explain without an address or an ICMP protocol).
func acceptedAhead(fs []foreign.Finding, pkt ruleset.Packet, chain ruleset.Hook, famKnown bool) (found []foreign.Finding, sure bool) {
	known := famKnown || pkt.Src.IsValid() && !pkt.Src.IsUnspecified() || pkt.Dst.IsValid() && !pkt.Dst.IsUnspecified() || pkt.Proto == "icmp" || pkt.Proto == "ipv6-icmp"
	fp := foreign.Packet{Proto: pkt.Proto, SPort: pkt.SPort, DPort: pkt.DPort, InIface: pkt.InIface, OutIface: pkt.OutIface,
		State: string(pkt.CTState), Chain: string(chain), V6: pkt.Family() == policy.FamilyV6 || pkt.Proto == "ipv6-icmp", FamilyUnknown: !known}
	if pkt.Src.IsValid() && !pkt.Src.IsUnspecified() {
		fp.Src = pkt.Src
	}
	if pkt.Dst.IsValid() && !pkt.Dst.IsUnspecified() {
		fp.Dst = pkt.Dst
	}
	for _, f := range fs {
		switch f.Accepts(fp) {
		case foreign.Yes:
			found, sure = append(found, f), true
		case foreign.Maybe:
			found = append(found, f)
		}
	}
	return found, sure
}
