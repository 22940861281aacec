package ruleset

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/moat-fw/moat/internal/policy"
)

// Packet is what the evaluator needs to know of a packet.
type Packet struct {
	Hook     Hook
	InIface  string
	OutIface string
	Proto    string // "tcp", "udp", "icmp", "ipv6-icmp", "esp", ...
	Src, Dst netip.Addr
	SPort    uint16
	DPort    uint16
	// ICMPType is used when HasICMPType; otherwise an ICMP packet is taken
	// to be an echo request (ping).
	ICMPType    uint8
	HasICMPType bool
	CTState     CTState
	HopLimit    uint8
}

// Family of the packet, from its addresses.
func (p Packet) Family() policy.Family {
	if p.Src.Is4() || p.Dst.Is4() {
		return policy.FamilyV4
	}
	return policy.FamilyV6
}

// Decision is the evaluator's answer: the verdict and the rule that gave it.
type Decision struct {
	Verdict Verdict      `json:"verdict"`
	Origin  Origin       `json:"origin"`
	Limit   *policy.Rate `json:"limit,omitempty"` // the verdict holds while the source stays under this rate
	Chain   Hook         `json:"chain"`
	Index   int          `json:"index"` // rule index in the chain; -1 for the default
}

// Evaluate walks the chain of the packet's hook as the kernel would and
// returns the first verdict.
func (rs *Ruleset) Evaluate(p Packet) (Decision, error) {
	if p.CTState == "" {
		p.CTState = CTNew
	}
	if !p.HasICMPType {
		switch p.Proto {
		case "icmp":
			p.ICMPType, p.HasICMPType = 8, true
		case "ipv6-icmp":
			p.ICMPType, p.HasICMPType = 128, true
		}
	}
	c := rs.Chain(p.Hook)
	if c == nil {
		return Decision{}, fmt.Errorf("evaluate: no %s chain", p.Hook)
	}
	// An incoming packet meets the chain before conntrack first: a drop
	// there is final, an accept only ends that chain.
	if pre := rs.Chain(Prerouting); pre != nil && (p.Hook == Input || p.Hook == Forward) {
		for i := range pre.Rules {
			r := &pre.Rules[i]
			origin, ok := rs.matches(&r.Match, p)
			if !ok {
				continue
			}
			if origin.ID == "" {
				origin = r.Origin
			}
			if r.Verdict == Drop || r.Verdict == Reject {
				return Decision{Verdict: r.Verdict, Origin: origin, Chain: Prerouting, Index: i}, nil
			}
			break
		}
	}
	for i := range c.Rules {
		r := &c.Rules[i]
		if r.Trap != nil {
			continue // counts ports, decides nothing
		}
		if r.Verdict == Log {
			continue // logs and goes on
		}
		origin, ok := rs.matches(&r.Match, p)
		if !ok {
			continue
		}
		if origin.ID == "" {
			origin = r.Origin
		}
		return Decision{Verdict: r.Verdict, Origin: origin, Limit: r.Limit, Chain: c.Hook, Index: i}, nil
	}
	return Decision{Verdict: c.Default, Origin: c.DefaultOrigin, Chain: c.Hook, Index: -1}, nil
}

// matches reports whether m matches p. For a set match it also returns the
// origin of the set entry that matched.
func (rs *Ruleset) matches(m *Match, p Packet) (Origin, bool) {
	fam := p.Family()
	if m.Family != "" && m.Family != policy.FamilyAny && m.Family != fam {
		return Origin{}, false
	}
	if m.InIface != "" && !ifaceMatch(m.InIface, p.InIface) {
		return Origin{}, false
	}
	if m.OutIface != "" && !ifaceMatch(m.OutIface, p.OutIface) {
		return Origin{}, false
	}
	if len(m.CTStates) > 0 && !slices.Contains(m.CTStates, p.CTState) {
		return Origin{}, false
	}
	if len(m.Protos) > 0 && !slices.Contains(m.Protos, p.Proto) {
		return Origin{}, false
	}
	if !prefixesContain(m.Src, p.Src) || !prefixesContain(m.Dst, p.Dst) {
		return Origin{}, false
	}
	if !m.SPorts.Contains(p.SPort) || !m.DPorts.Contains(p.DPort) {
		return Origin{}, false
	}
	if len(m.ICMPTypes) > 0 {
		found := false
		for _, x := range m.ICMPTypes {
			if p.HasICMPType && x == p.ICMPType {
				found = true
			}
		}
		if !found {
			return Origin{}, false
		}
	}
	if m.HopLimit != 0 && p.HopLimit != m.HopLimit {
		return Origin{}, false
	}
	if m.NotInIface != "" && ifaceMatch(m.NotInIface, p.InIface) {
		return Origin{}, false
	}
	if m.LocalDst && p.Hook != Input {
		return Origin{}, false
	}
	for _, name := range m.ExceptSrcSets {
		if s := rs.Set(name); s != nil {
			if _, ok := s.lookup(p.Src); ok {
				return Origin{}, false
			}
		}
	}
	var origin Origin
	for _, ref := range []struct {
		name string
		addr netip.Addr
	}{{m.SrcSet, p.Src}, {m.DstSet, p.Dst}} {
		if ref.name == "" {
			continue
		}
		s := rs.Set(ref.name)
		if s == nil {
			return Origin{}, false
		}
		o, ok := s.lookup(ref.addr)
		if !ok {
			return Origin{}, false
		}
		origin = o
	}
	return origin, true
}

// lookup returns the first entry (in policy order) holding addr.
func (s *Set) lookup(addr netip.Addr) (Origin, bool) {
	for _, e := range s.Entries {
		if e.Prefix.Contains(addr) {
			return e.Origin, true
		}
	}
	return Origin{}, false
}

func ifaceMatch(pattern, name string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(name, prefix)
	}
	return pattern == name
}

func prefixesContain(ps []netip.Prefix, a netip.Addr) bool {
	if len(ps) == 0 {
		return true
	}
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
