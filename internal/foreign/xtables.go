package foreign

import (
	"fmt"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// XtablesOnlyMoat says, over netlink, whether iptables-nft's filter table
// of family ("ip" or "ip6") holds nothing but moat's: chains MOAT-*, and
// the built-in chains INPUT, FORWARD and OUTPUT with policy accept whose
// only rules are moat's jumps (-A INPUT -j MOAT-INPUT). Then iptables-save
// would find nothing outside moat there, and need not run (it and
// ip6tables-save took a tenth of an iptables command). Anything else
// (another chain, a drop policy, any other rule) is false: the caller
// reads the table with iptables-save as before.
func XtablesOnlyMoat(family string) (bool, error) {
	fam := gnft.TableFamilyIPv4
	if family == "ip6" {
		fam = gnft.TableFamilyIPv6
	} else if family != "ip" {
		return false, fmt.Errorf("iptables family %q", family)
	}
	c, err := gnft.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(fam)
	if err != nil {
		return false, fmt.Errorf("nftables: list %s chains: %w", family, err)
	}
	table := &gnft.Table{Family: fam, Name: "filter"}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != "filter" || strings.HasPrefix(ch.Name, "MOAT-") {
			continue
		}
		if !builtinFilterChain(ch) {
			return false, nil
		}
		rules, err := c.GetRules(table, ch)
		if err != nil {
			return false, fmt.Errorf("nftables: list %s filter %s: %w", family, ch.Name, err)
		}
		for _, r := range rules {
			if !moatJump(r.Exprs, ch.Name) {
				return false, nil
			}
		}
	}
	return true, nil
}

// builtinFilterChain: INPUT, FORWARD or OUTPUT, a base chain with policy
// accept.
func builtinFilterChain(ch *gnft.Chain) bool {
	switch ch.Name {
	case "INPUT", "FORWARD", "OUTPUT":
	default:
		return false
	}
	return ch.Hooknum != nil && ch.Policy != nil && *ch.Policy == gnft.ChainPolicyAccept
}

// moatJump: the rule is iptables-nft's "-A CHAIN -j MOAT-CHAIN" (a counter
// and the jump, nothing else).
func moatJump(exprs []expr.Any, chain string) bool {
	jumps := 0
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Counter:
		case *expr.Verdict:
			if e.Kind != expr.VerdictJump || e.Chain != "MOAT-"+chain {
				return false
			}
			jumps++
		default:
			return false
		}
	}
	return jumps == 1
}
