// Package nft renders a ruleset as one nftables transaction on moat's own
// table (inet moat), applies it with sigs.k8s.io/knftables, and reads
// counters back.
package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// TableName is moat's table; moat owns it whole and touches nothing else.
const TableName = "moat"

var hookOf = map[ruleset.Hook]knftables.BaseChainHook{
	ruleset.Input: knftables.InputHook, ruleset.Output: knftables.OutputHook, ruleset.Forward: knftables.ForwardHook,
	ruleset.Prerouting: knftables.PreroutingHook,
}

// chainPriority: the prerouting chain runs before conntrack (raw, -300),
// the others at filter priority.
func chainPriority(h ruleset.Hook) knftables.BaseChainPriority {
	if h == ruleset.Prerouting {
		return knftables.RawPriority
	}
	return knftables.FilterPriority
}

// protoNumbers are written as numbers so the script does not depend on
// /etc/protocols; tcp, udp and the ICMPs are nft keywords.
var protoNumbers = map[string]string{"esp": "50", "ah": "51", "gre": "47", "igmp": "2", "vrrp": "112", "ipv6": "41"}

var icmpNames = map[uint8]string{3: "destination-unreachable", 8: "echo-request", 11: "time-exceeded", 12: "parameter-problem", 0: "echo-reply"}
var icmp6Names = map[uint8]string{1: "destination-unreachable", 2: "packet-too-big", 3: "time-exceeded", 4: "parameter-problem",
	128: "echo-request", 129: "echo-reply", 130: "mld-listener-query", 131: "mld-listener-report", 132: "mld-listener-done",
	133: "nd-router-solicit", 134: "nd-router-advert", 135: "nd-neighbor-solicit", 136: "nd-neighbor-advert", 143: "mld2-listener-report"}

// limitFamilies: a rate limit keys on the source address, so it needs a
// set per family the rule covers.
func limitFamilies(r *ruleset.Rule) []policy.Family {
	if r.Family == policy.FamilyV4 || r.Family == policy.FamilyV6 {
		return []policy.Family{r.Family}
	}
	return []policy.Family{policy.FamilyV4, policy.FamilyV6}
}

func limitSetName(r *ruleset.Rule, fam policy.Family) string {
	suffix := "4"
	if fam == policy.FamilyV6 {
		suffix = "6"
	}
	return "limit_" + strings.ReplaceAll(r.Origin.ID, ":", "_") + "_" + suffix
}

// limitTimeout keeps a source's bucket for twice the rate's window.
func limitTimeout(r *policy.Rate) time.Duration {
	return time.Duration(2*r.Seconds) * time.Second
}

// RuleTexts renders one neutral rule as nft rule statements (without the
// comment). Most rules give one statement; a rate limit gives its
// over-limit reject and its accept; a reject of TCP and other traffic gives
// a TCP reset and an ICMP reject.
func RuleTexts(r *ruleset.Rule) []string {
	if r.Trap != nil {
		return []string{trapText(r)}
	}
	if r.Limit != nil {
		var out []string
		for _, fam := range limitFamilies(r) {
			m := r.Match
			m.Family = fam
			n, unit := ruleset.RateUnit(*r.Limit)
			addr := "ip saddr"
			if fam == policy.FamilyV6 {
				addr = "ip6 saddr"
			}
			over := fmt.Sprintf("ct state new update @%s { %s limit rate over %d/%s burst %d packets }",
				limitSetName(r, fam), addr, n, unit, r.Limit.Burst)
			for _, v := range rejectVerdicts(m) {
				out = append(out, join(matchExprs(m), over, v.extra, "counter", logExpr(r.Log), v.verdict))
			}
		}
		return append(out, join(matchExprs(r.Match), "counter", logExpr(r.Log), "accept"))
	}
	if r.Verdict == ruleset.Log {
		// Log and go on to the next rule (no verdict).
		return []string{join(matchExprs(r.Match), logLimit(r), "counter", logExpr(r.Log))}
	}
	if r.Verdict == ruleset.Reject {
		var out []string
		for _, v := range rejectVerdicts(r.Match) {
			out = append(out, join(matchExprs(r.Match), v.extra, "counter", logExpr(r.Log), v.verdict))
		}
		return out
	}
	return []string{join(matchExprs(r.Match), counter(r), logExpr(r.Log), string(r.Verdict))}
}

// counter is the rule's counter, "" for a rule that has none
// (ruleset.Rule.Uncounted).
func counter(r *ruleset.Rule) string {
	if r.Uncounted {
		return ""
	}
	return "counter"
}

type rejectVerdict struct{ extra, verdict string }

// rejectVerdicts: TCP is refused with a reset, everything else with ICMP
// port unreachable, as ufw does.
func rejectVerdicts(m ruleset.Match) []rejectVerdict {
	switch {
	case len(m.Protos) == 1 && m.Protos[0] == "tcp":
		return []rejectVerdict{{"", "reject with tcp reset"}}
	case len(m.Protos) > 0 && !slices.Contains(m.Protos, "tcp"):
		return []rejectVerdict{{"", "reject"}}
	default:
		return []rejectVerdict{{"meta l4proto tcp", "reject with tcp reset"}, {"", "reject"}}
	}
}

// logLimit is ufw's rate limit for log rules: 3 a minute, bursts of 10.
func logLimit(r *ruleset.Rule) string {
	if !r.LogLimited {
		return ""
	}
	return "limit rate 3/minute burst 10 packets"
}

func logExpr(prefix string) string {
	if prefix == "" {
		return ""
	}
	return fmt.Sprintf("log prefix %q", prefix)
}

func join(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, " ")
}

// matchExprs renders a match as nft expressions.
func matchExprs(m ruleset.Match) string {
	var e []string
	if m.InIface != "" {
		// Loopback by index (lo is always there, index 1): an integer
		// compare, where a name is a 16-byte one (BenchmarkPacketRate).
		if m.InIface == "lo" {
			e = append(e, `iif "lo"`)
		} else {
			e = append(e, "iifname "+ifname(m.InIface))
		}
	}
	if m.OutIface != "" {
		if m.OutIface == "lo" {
			e = append(e, `oif "lo"`)
		} else {
			e = append(e, "oifname "+ifname(m.OutIface))
		}
	}
	if len(m.CTStates) > 0 {
		states := make([]string, len(m.CTStates))
		for i, s := range m.CTStates {
			states[i] = string(s)
		}
		e = append(e, "ct state "+strings.Join(states, ","))
	}
	hasAddr := len(m.Src) > 0 || len(m.Dst) > 0 || m.SrcSet != "" || m.DstSet != ""
	if (m.Family == policy.FamilyV4 || m.Family == policy.FamilyV6) && !hasAddr {
		e = append(e, "meta nfproto "+nfproto(m.Family))
	}
	ipKw := "ip"
	if m.Family == policy.FamilyV6 {
		ipKw = "ip6"
	}
	if m.HopLimit != 0 {
		e = append(e, fmt.Sprintf("ip6 hoplimit %d", m.HopLimit))
	}
	if len(m.Src) > 0 {
		e = append(e, addrKw(m.Src[0])+" saddr "+prefixList(m.Src))
	}
	if m.SrcSet != "" {
		e = append(e, ipKw+" saddr @"+m.SrcSet)
	}
	// The exemptions follow the set lookup: only a listed source pays them.
	if m.NotInIface != "" {
		e = append(e, "iifname != "+ifname(m.NotInIface))
	}
	for _, s := range m.ExceptSrcSets {
		e = append(e, ipKw+" saddr != @"+s)
	}
	if m.LocalDst {
		e = append(e, "fib daddr type != unicast")
	}
	if len(m.Dst) > 0 {
		e = append(e, addrKw(m.Dst[0])+" daddr "+prefixList(m.Dst))
	}
	if m.DstSet != "" {
		e = append(e, ipKw+" daddr @"+m.DstSet)
	}
	hasPorts := len(m.SPorts) > 0 || len(m.DPorts) > 0
	switch {
	case len(m.Protos) == 1 && hasPorts:
		p := m.Protos[0]
		if len(m.SPorts) > 0 {
			e = append(e, p+" sport "+portList(m.SPorts))
		}
		if len(m.DPorts) > 0 {
			e = append(e, p+" dport "+portList(m.DPorts))
		}
	case len(m.Protos) > 1 && hasPorts:
		e = append(e, "meta l4proto "+set(m.Protos))
		if len(m.SPorts) > 0 {
			e = append(e, "th sport "+portList(m.SPorts))
		}
		if len(m.DPorts) > 0 {
			e = append(e, "th dport "+portList(m.DPorts))
		}
	case len(m.ICMPTypes) > 0:
		names := icmpNames
		kw := "icmp"
		if m.Protos[0] == "ipv6-icmp" {
			names, kw = icmp6Names, "icmpv6"
		}
		types := make([]string, len(m.ICMPTypes))
		for i, t := range m.ICMPTypes {
			if n, ok := names[t]; ok {
				types[i] = n
			} else {
				types[i] = strconv.Itoa(int(t))
			}
		}
		e = append(e, kw+" type "+set(types))
	case len(m.Protos) > 0:
		protos := make([]string, len(m.Protos))
		for i, p := range m.Protos {
			if n, ok := protoNumbers[p]; ok {
				protos[i] = n
			} else {
				protos[i] = p
			}
		}
		e = append(e, "meta l4proto "+set(protos))
	}
	return strings.Join(e, " ")
}

func nfproto(f policy.Family) string {
	if f == policy.FamilyV6 {
		return "ipv6"
	}
	return "ipv4"
}

func addrKw(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "ip"
	}
	return "ip6"
}

// ifname quotes an interface name; iptables' trailing '+' is nft's '*'.
func ifname(name string) string {
	if p, ok := strings.CutSuffix(name, "+"); ok {
		return strconv.Quote(p + "*")
	}
	return strconv.Quote(name)
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		if p.IsSingleIP() {
			s[i] = p.Addr().String()
		} else {
			s[i] = p.String()
		}
	}
	return set(s)
}

func portList(ps policy.Ports) string {
	s := make([]string, len(ps))
	for i, r := range ps {
		if r.First == r.Last {
			s[i] = strconv.Itoa(int(r.First))
		} else {
			s[i] = fmt.Sprintf("%d-%d", r.First, r.Last)
		}
	}
	return set(s)
}

// set writes one value bare and several as an anonymous set.
func set(items []string) string {
	if len(items) == 1 {
		return items[0]
	}
	return "{ " + strings.Join(items, ", ") + " }"
}
