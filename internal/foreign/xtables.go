package foreign

import (
	"fmt"
	"slices"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// moatTables are iptables-nft's tables moat's iptables backend uses, with
// their built-in chains: filter (its rules) and raw (drops of banned
// sources before conntrack).
var moatTables = map[string][]string{"filter": {"INPUT", "FORWARD", "OUTPUT"}, "raw": {"PREROUTING", "OUTPUT"}}

// XtablesOnlyMoat says, over netlink, whether iptables-nft's filter and
// raw tables of family ("ip" or "ip6") hold nothing but moat's: chains
// MOAT-*, and the built-in chains with policy accept whose only rules are
// moat's jumps (-A INPUT -j MOAT-INPUT, -A PREROUTING -j MOAT-PREROUTING).
// Then iptables-save would find nothing outside moat there, and need not
// run (it and ip6tables-save took a tenth of an iptables command).
// Anything else (another chain, a drop policy, any other rule) is false:
// the caller reads the tables with iptables-save as before.
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
	for _, ch := range chains {
		// moat's chains are regular chains: a base chain named MOAT-*
		// (made with nft) filters on its own hook, is not moat's.
		if ch.Table == nil || (strings.HasPrefix(ch.Name, "MOAT-") && ch.Hooknum == nil) {
			continue
		}
		builtins, ok := moatTables[ch.Table.Name]
		if !ok {
			continue // another table: read as nftables or refused by the caller
		}
		if !builtinChain(ch, builtins) {
			return false, nil
		}
		rules, err := c.GetRules(&gnft.Table{Family: fam, Name: ch.Table.Name}, ch)
		if err != nil {
			return false, fmt.Errorf("nftables: list %s %s %s: %w", family, ch.Table.Name, ch.Name, err)
		}
		for _, r := range rules {
			if !moatJump(r.Exprs, ch.Name) {
				return false, nil
			}
		}
	}
	return true, nil
}

// builtinChain: one of the table's built-in chains, a base chain with
// policy accept.
func builtinChain(ch *gnft.Chain, builtins []string) bool {
	if !slices.Contains(builtins, ch.Name) {
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
