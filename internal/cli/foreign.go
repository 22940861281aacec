package cli

import (
	"context"
	"fmt"
	"os/exec"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/foreign"
	"github.com/moat-fw/moat/internal/nft"
)

// foreignFilters finds filtering outside moat in this network namespace
// (other nftables tables, iptables rules outside moat's chains, ufw,
// firewalld, Docker).
func (a *app) foreignFilters(ctx context.Context) ([]foreign.Finding, error) {
	return foreign.DetectOver(ctx, execrun.Exec, func(prog string) bool {
		_, err := exec.LookPath(prog)
		return err == nil
	}, nft.ListTables, foreign.XtablesOnlyMoat)
}

// warnForeignLockout tells the admin that the lockout check only judged
// moat's rules while other filtering also sees incoming SSH.
func (a *app) warnForeignLockout(ctx context.Context) {
	found, err := a.foreignFilters(ctx)
	if err != nil {
		a.log.Debug("other filtering", "err", err)
		return
	}
	for _, f := range found {
		if f.Sees("input") {
			fmt.Fprintf(a.errOut, "moat: warning: the lockout check judges moat's rules only; this also filters incoming packets and may drop new SSH connections: %s\n", f)
		}
	}
}

// printForeign lists the filtering outside moat that status found.
func (a *app) printForeign(rep *statusReport) {
	if len(rep.OtherFiltering) == 0 {
		return
	}
	a.printf("Other filtering also sees these packets (moat's ALLOW does not override it):\n")
	for _, f := range rep.OtherFiltering {
		a.printf("  - %s\n", f)
	}
}
