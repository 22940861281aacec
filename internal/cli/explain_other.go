package cli

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// otherAnswer is the verdict a packet gets when a part it left out (the
// source, the destination, a port, an interface) is one that a rule
// names: 'moat explain in tcp to port 5432' answers for a source no rule
// names, while 'allow from 192.0.2.0/25 to any port 5432' opens it to
// some.
type otherAnswer struct {
	If      string `json:"if"`
	Verdict string `json:"verdict"`
	Decided string `json:"decided_by"`
}

// otherAnswersMax bounds the answers listed, and the values tried per
// left-out part (a policy of 100,000 address rules names 100,000
// sources: explain says so rather than evaluate each).
const otherAnswersMax = 4

// otherAnswers evaluates pkt again with each part it leaves out set to a
// value a rule of its direction names, and lists those that change the
// verdict. where names the policy file (isFile) or what moat applied in
// decided_by, as explain's own (decidedBy); more counts the parts with
// more values than were tried.
func otherAnswers(rs *ruleset.Ruleset, p *policy.Policy, pkt ruleset.Packet, base ruleset.Decision, where string, isFile bool) (out []otherAnswer, more []string) {
	if p == nil {
		return nil, nil
	}
	dir := map[ruleset.Hook]policy.Direction{ruleset.Input: policy.In, ruleset.Output: policy.Out, ruleset.Forward: policy.Route}[pkt.Hook]
	type variant struct {
		label string
		set   func(*ruleset.Packet)
	}
	var vars []variant
	seen := map[string]bool{}
	counts := map[string]int{}
	over := map[string]bool{}
	add := func(part, label string, set func(*ruleset.Packet)) {
		if over[part] || seen[label] {
			return
		}
		if counts[part] == otherAnswersMax {
			over[part] = true
			return
		}
		seen[label] = true
		counts[part]++
		vars = append(vars, variant{label, set})
	}
	// A packet's left-out address is the unspecified one of its family
	// (IPv4 unless the other address or the protocol says IPv6); a
	// rule's network of the other family fits when both are left out.
	srcOut, dstOut := !pkt.Src.IsValid() || pkt.Src.IsUnspecified(), !pkt.Dst.IsValid() || pkt.Dst.IsUnspecified()
	v6 := pkt.Src.Is6() || pkt.Dst.Is6()
	setAddr := func(q *ruleset.Packet, a netip.Addr, src bool) {
		if a.Is6() != v6 {
			unspec := netip.IPv4Unspecified()
			if a.Is6() {
				unspec = netip.IPv6Unspecified()
			}
			q.Src, q.Dst = unspec, unspec
		}
		if src {
			q.Src = a
		} else {
			q.Dst = a
		}
	}
	fits := func(a netip.Addr) bool {
		return a.Is6() == v6 || (srcOut && dstOut && pkt.Proto != "icmp" && pkt.Proto != "ipv6-icmp")
	}
	addNet := func(from bool, n netip.Prefix) {
		a := n.Addr()
		if from && srcOut && fits(a) {
			add("from", "from "+netString(n), func(q *ruleset.Packet) { setAddr(q, a, true) })
		}
		if !from && dstOut && fits(a) {
			add("to", "to "+netString(n), func(q *ruleset.Packet) { setAddr(q, a, false) })
		}
	}
	for i := range p.NumRules() {
		// An address-only rule (incoming, any protocol), read without
		// building it: a policy may hold 100,000.
		if ar, ok := p.CompactAddrRule(i); ok {
			side := "from"
			if ar.To {
				side = "to"
			}
			if dir == policy.In && ar.Prefix.IsValid() && !over[side] && mayDecideOtherwise(ar.Action, base) {
				addNet(!ar.To, ar.Prefix)
			}
			continue
		}
		r := p.Rule(i)
		if r.Direction != dir || !mayDecideOtherwise(r.Action, base) || !mayMatchGiven(&r, pkt) {
			continue
		}
		if r.From.IsValid() {
			addNet(true, r.From)
		}
		if r.To.IsValid() {
			addNet(false, r.To)
		}
		portProto := pkt.Proto == "tcp" || pkt.Proto == "udp"
		if pkt.SPort == 0 && len(r.FromPort) > 0 && portProto {
			n := r.FromPort[0].First
			add("from port", fmt.Sprintf("from port %d", n), func(q *ruleset.Packet) { q.SPort = n })
		}
		if pkt.DPort == 0 && len(r.ToPort) > 0 && portProto {
			n := r.ToPort[0].First
			add("to port", fmt.Sprintf("to port %d", n), func(q *ruleset.Packet) { q.DPort = n })
		}
		if pkt.InIface == "" && r.InIface != "" && dir != policy.Out {
			name := ifaceExample(r.InIface)
			add("in on", "in on "+r.InIface, func(q *ruleset.Packet) { q.InIface = name })
		}
		if pkt.OutIface == "" && r.OutIface != "" && dir != policy.In {
			name := ifaceExample(r.OutIface)
			add("out on", "out on "+r.OutIface, func(q *ruleset.Packet) { q.OutIface = name })
		}
	}
	for _, part := range []string{"from", "to", "from port", "to port", "in on", "out on"} {
		if over[part] {
			more = append(more, fmt.Sprintf("the rules name more than %d '%s' values (the first %d tried): give one to explain that packet", otherAnswersMax, part, otherAnswersMax))
		}
	}
	for _, v := range vars {
		q := pkt
		v.set(&q)
		d, err := rs.Evaluate(q)
		if err != nil || (d.Verdict == base.Verdict && (d.Limit == nil) == (base.Limit == nil)) {
			continue // the same answer, whichever rule gives it
		}
		o := otherAnswer{If: v.label, Verdict: strings.ToUpper(string(d.Verdict)), Decided: decidedBy(where, isFile, d.Origin)}
		if slices.ContainsFunc(out, func(x otherAnswer) bool { return x.Verdict == o.Verdict && x.Decided == o.Decided }) {
			continue // another value already led to this rule
		}
		out = append(out, o)
	}
	return out, more
}

// mayDecideOtherwise: a rule of action act can give another answer than
// base (a rule that answers the same is no other answer; a limit accepts,
// and rejects a source over its rate).
func mayDecideOtherwise(act policy.Action, base ruleset.Decision) bool {
	switch act {
	case policy.Allow:
		return base.Verdict != ruleset.Accept || base.Limit != nil
	case policy.Deny:
		return base.Verdict != ruleset.Drop
	case policy.Reject:
		return base.Verdict != ruleset.Reject
	}
	return true
}

// mayMatchGiven: rule r may match pkt, judged by what pkt gives (its
// ports and addresses): a rule that cannot match it whatever
// the left-out parts are names no value worth trying (in a large policy
// the values tried are few: otherAnswersMax a part).
func mayMatchGiven(r *policy.Rule, pkt ruleset.Packet) bool {
	switch {
	case pkt.DPort != 0 && len(r.ToPort) > 0 && !r.ToPort.Contains(pkt.DPort):
		return false
	case pkt.SPort != 0 && len(r.FromPort) > 0 && !r.FromPort.Contains(pkt.SPort):
		return false
	case r.From.IsValid() && pkt.Src.IsValid() && !pkt.Src.IsUnspecified() && !r.From.Contains(pkt.Src):
		return false
	case r.To.IsValid() && pkt.Dst.IsValid() && !pkt.Dst.IsUnspecified() && !r.To.Contains(pkt.Dst):
		return false
	}
	return true
}

// ifaceExample is a name the interface pattern matches ("eth+": "eth0").
func ifaceExample(pattern string) string {
	if s, ok := strings.CutSuffix(pattern, "+"); ok {
		return s + "0"
	}
	return pattern
}

// netString is a network as a rule writes it: an address alone, or a CIDR.
func netString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}
