package ruleset

import (
	"slices"
	"strings"

	"github.com/moat-fw/moat/internal/policy"
)

// sinkOn: Compile sinks the built-ins (tests compare with the order
// without).
var sinkOn = true

// sinkBuiltins orders a chain for the common case: the built-ins that
// accept only ICMP, ICMPv6, neighbour discovery, MLD, DHCP or DHCPv6
// move down past the policy's rules that no packet they accept can match
// (allow 22/tcp cannot match an ICMP error nor a DHCP reply), so a new
// connection to a service is decided without passing them. Each stops
// right before the first policy rule that could match one of its packets
// (deny from ADDR, a rule on any protocol, the port scan trap, a UDP rule
// on its ports), which therefore still sees the built-in first, as in
// ufw's order. No packet matches both a built-in and a rule it passes, so
// no verdict and no counter changes (TestSinkBuiltinsSameVerdicts walks
// both orders over every kind of packet; TestBuiltinsBehindGates sends
// real ones).
func sinkBuiltins(rules []Rule) []Rule {
	nb := 0 // the built-ins come first
	for nb < len(rules) && strings.HasPrefix(rules[nb].Origin.ID, "builtin:") {
		nb++
	}
	first := nb // the sinkable tail of the built-ins
	for first > 0 && sinkable(&rules[first-1]) {
		first--
	}
	if first == nb || nb == len(rules) {
		return rules
	}
	user := rules[nb:]
	stop := make([]int, nb-first) // index into user each built-in stops before
	for i := range stop {
		b := &rules[first+i]
		stop[i] = len(user)
		for j := range user {
			if !disjoint(b, &user[j]) {
				stop[i] = j
				break
			}
		}
	}
	out := slices.Clone(rules[:first])
	for j := 0; j <= len(user); j++ {
		for i, s := range stop {
			if s == j {
				out = append(out, rules[first+i])
			}
		}
		if j < len(user) {
			out = append(out, user[j])
		}
	}
	return out
}

// sinkable: a built-in accept of one protocol, ICMP, ICMPv6 or UDP with
// both ports, of one family.
func sinkable(r *Rule) bool {
	m := &r.Match
	if r.Verdict != Accept || r.Limit != nil || r.Trap != nil || r.Log != "" || len(m.Protos) != 1 ||
		m.InIface != "" || m.OutIface != "" || len(m.CTStates) > 0 || (m.Family != policy.FamilyV4 && m.Family != policy.FamilyV6) {
		return false
	}
	switch m.Protos[0] {
	case "icmp", "ipv6-icmp":
		return len(m.ICMPTypes) > 0
	case "udp":
		return len(m.SPorts) == 1 && len(m.DPorts) == 1 && m.SPorts[0].First == m.SPorts[0].Last && m.DPorts[0].First == m.DPorts[0].Last
	}
	return false
}

// disjoint says whether no packet the sinkable built-in b matches can
// match r: r is of the other family, or of other protocols, or on other
// ports or ICMP types. Anything it cannot prove is not disjoint.
func disjoint(b, r *Rule) bool {
	if r.Trap != nil {
		return false
	}
	bm, m := &b.Match, &r.Match
	if (m.Family == policy.FamilyV4 || m.Family == policy.FamilyV6) && m.Family != bm.Family {
		return true
	}
	if len(m.Protos) == 0 {
		return false
	}
	if !slices.Contains(m.Protos, bm.Protos[0]) {
		return true
	}
	if bm.Protos[0] == "udp" {
		return (len(m.DPorts) > 0 && !m.DPorts.Contains(bm.DPorts[0].First)) ||
			(len(m.SPorts) > 0 && !m.SPorts.Contains(bm.SPorts[0].First))
	}
	return len(m.ICMPTypes) > 0 && !slices.ContainsFunc(m.ICMPTypes, func(t uint8) bool { return slices.Contains(bm.ICMPTypes, t) })
}
