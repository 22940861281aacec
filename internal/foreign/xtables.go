package foreign

import (
	"fmt"
	"net"
	"reflect"
	"slices"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/nft"
)

// moatTables are iptables-nft's tables moat's iptables backend uses, with
// their built-in chains: filter (its rules) and raw (drops of banned
// sources before conntrack).
var moatTables = map[string][]string{"filter": {"INPUT", "FORWARD", "OUTPUT"}, "raw": {"PREROUTING", "OUTPUT"}}

// moatJumps are the built-in chains that jump to moat's chain of the
// same name (MOAT-INPUT, ...) in each table: moat has no MOAT-OUTPUT in
// raw, and a chain of that name there is someone else's.
var moatJumps = map[string][]string{"filter": {"INPUT", "FORWARD", "OUTPUT"}, "raw": {"PREROUTING"}}

// moatChain says whether chain is one of moat's chains in table: the
// targets of moatJumps and, in filter, MOAT-GEN. A MOAT-* chain anywhere
// else was made by someone else and filters like any other.
func moatChain(table, chain string) bool {
	name, ok := strings.CutPrefix(chain, "MOAT-")
	if !ok {
		return false
	}
	return slices.Contains(moatJumps[table], name) || table == "filter" && name == "GEN"
}

// builtinHooks are the hook and priority of iptables-nft's built-in
// chains in moat's tables.
var builtinHooks = map[string]*gnft.ChainHook{"PREROUTING": gnft.ChainHookPrerouting, "INPUT": gnft.ChainHookInput,
	"FORWARD": gnft.ChainHookForward, "OUTPUT": gnft.ChainHookOutput}

var tablePriority = map[string]*gnft.ChainPriority{"filter": gnft.ChainPriorityFilter, "raw": gnft.ChainPriorityRaw}

// XtablesOnlyMoat says, over netlink, whether iptables-nft's filter and
// raw tables of family ("ip" or "ip6") hold nothing but moat's: chains
// MOAT-*, and the built-in chains with policy accept whose only rules are
// moat's jumps (-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j
// MOAT-INPUT, -A PREROUTING ! -i lo -j MOAT-PREROUTING: moatJump).
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
	c, done, err := nft.Conn()
	defer done()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(fam)
	if err != nil {
		return false, fmt.Errorf("nftables: list %s chains: %w", family, err)
	}
	for _, ch := range chains {
		if ch.Table == nil {
			continue
		}
		builtins, ok := moatTables[ch.Table.Name]
		if !ok {
			continue // another table: read as nftables or refused by the caller
		}
		// moat's chains are regular chains of their table: a base chain
		// named MOAT-* (made with nft) filters on its own hook, and a
		// MOAT-* chain moat does not make in this table is someone else's.
		if ch.Hooknum == nil && moatChain(ch.Table.Name, ch.Name) {
			continue
		}
		if !builtinChain(ch, ch.Table.Name, builtins) {
			return false, nil
		}
		rules, err := nft.GetRules(c, &gnft.Table{Family: fam, Name: ch.Table.Name}, ch)
		if err != nil {
			return false, fmt.Errorf("nftables: list %s %s %s: %w", family, ch.Table.Name, ch.Name, err)
		}
		for _, r := range rules {
			// An expression google/nftables could not decode (Undecoded)
			// makes the rule one moat never writes.
			if !slices.Contains(moatJumps[ch.Table.Name], ch.Name) || len(r.Undecoded) > 0 || !moatJump(r.Exprs, ch.Name, family) {
				return false, nil
			}
		}
	}
	return true, nil
}

// builtinChain: one of the table's built-in chains, a base chain with
// policy accept on its own hook and the table's priority (a chain named
// INPUT made with nft on another hook is not iptables' INPUT).
func builtinChain(ch *gnft.Chain, table string, builtins []string) bool {
	if !slices.Contains(builtins, ch.Name) {
		return false
	}
	if ch.Hooknum == nil || *ch.Hooknum != *builtinHooks[ch.Name] || ch.Priority == nil || *ch.Priority != *tablePriority[table] {
		return false
	}
	return ch.Policy != nil && *ch.Policy == gnft.ChainPolicyAccept
}

// moatJump: the rule is iptables-nft's form of one of moat's jumps (the
// forms ipt.KnownJump knows): "-A CHAIN -j MOAT-CHAIN", "-A
// CHAIN ! -i lo -j MOAT-CHAIN", "-A CHAIN -m conntrack ! --ctstate
// RELATED,ESTABLISHED -j MOAT-CHAIN" or "-A PREROUTING -m set
// --match-set moat-early4 src -j MOAT-PREROUTING". Its expressions are one of the
// conditions (or none), a counter and the jump, nothing else.
func moatJump(exprs []expr.Any, chain, family string) bool {
	switch {
	case len(exprs) >= 2 && notLoopback(exprs[0], exprs[1]):
		exprs = exprs[2:]
	case len(exprs) >= 1 && notEstablished(exprs[0]):
		exprs = exprs[1:]
	case len(exprs) >= 1 && chain == "PREROUTING" && earlyList(exprs[0], family):
		exprs = exprs[1:]
	}
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

// earlyList: iptables-nft's "-m set --match-set moat-early4 src" (or
// moat-early6 for ip6: ipt.EarlyListMatch), the raw jump's condition
// that only a listed source enters MOAT-PREROUTING.
func earlyList(e expr.Any, family string) bool {
	m, ok := e.(*expr.Match)
	if !ok || m.Name != "set" {
		return false
	}
	info, ok := m.Info.(*xt.Unknown)
	return ok && ipt.EarlyListMatch(family, m.Rev, *info)
}

// notLoopback: iptables-nft's "! -i lo" (the interface's name loaded,
// compared with "lo" and its terminating zero).
func notLoopback(load, cmp expr.Any) bool {
	m, ok := load.(*expr.Meta)
	if !ok || m.Key != expr.MetaKeyIIFNAME || m.SourceRegister {
		return false
	}
	c, ok := cmp.(*expr.Cmp)
	return ok && c.Op == expr.CmpOpNeq && c.Register == m.Register && string(c.Data) == "lo\x00"
}

// notEstablished: iptables-nft's "-m conntrack ! --ctstate
// RELATED,ESTABLISHED" (the xt conntrack match, revision 3, testing the
// state alone, inverted).
func notEstablished(e expr.Any) bool {
	m, ok := e.(*expr.Match)
	if !ok || m.Name != "conntrack" || m.Rev != 3 {
		return false
	}
	info, ok := m.Info.(*xt.ConntrackMtinfo3)
	if !ok {
		return false
	}
	const established, related = 1 << 1, 1 << 2 // XT_CONNTRACK_STATE_BIT(IP_CT_ESTABLISHED), (IP_CT_RELATED)
	want := xt.ConntrackMtinfo3{}
	want.MatchFlags, want.InvertFlags, want.StateMask = uint16(xt.ConntrackState), uint16(xt.ConntrackState), established|related
	got := *info
	for _, ip := range []*net.IP{&got.OrigSrcAddr, &got.OrigDstAddr, &got.ReplSrcAddr, &got.ReplDstAddr} {
		if !zeroBytes(*ip) {
			return false
		}
		*ip = nil
	}
	for _, mask := range []*net.IPMask{&got.OrigSrcMask, &got.OrigDstMask, &got.ReplSrcMask, &got.ReplDstMask} {
		if !zeroBytes(*mask) {
			return false
		}
		*mask = nil
	}
	return reflect.DeepEqual(got, want)
}

func zeroBytes(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
