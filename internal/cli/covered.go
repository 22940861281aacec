package cli

import (
	"fmt"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// warnCovered warns about every rule that an earlier rule fully covers: it
// can never match, which is never what the admin meant.
func (a *app) warnCovered(p *policy.Policy) {
	a.printCovered(ruleset.Shadowed(p))
}

// printCovered warns about covered rules found already (engine.Result).
func (a *app) printCovered(covered []ruleset.Covered) {
	for _, c := range covered {
		fmt.Fprintf(a.errOut, "moat: warning: %s\n", c)
	}
}
