package ruleset

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/moat-fw/moat/internal/policy"
)

// Covered is a rule that can never decide a packet: an earlier rule of the
// same direction matches every packet it matches (first match wins).
type Covered struct {
	Rule policy.Rule // the rule that never matches
	By   policy.Rule // the earlier rule that takes all its packets
}

// String says what is wrong and what to do, naming both lines.
func (c Covered) String() string {
	same := "takes all its packets first"
	if c.By.MatchKey() == c.Rule.MatchKey() {
		same = "matches exactly the same packets first"
	}
	return fmt.Sprintf("%s:%d: '%s' never matches: line %d '%s' %s (delete one, or move line %d above line %d)",
		c.Rule.Pos.File, c.Rule.Pos.Line, c.Rule.Text, c.By.Pos.Line, c.By.Text, same, c.Rule.Pos.Line, c.By.Pos.Line)
}

// Shadowed lists the policy's rules that an earlier rule fully covers, in
// policy order: for every action, family and direction. Coverage is judged
// on sets: families, interfaces (with '+' wildcards), protocols (a port
// rule without a protocol means tcp and udp), source and destination
// networks (CIDR containment) and port lists and ranges. Only single
// earlier rules count, so it never calls a rule dead that is not.
//
// Earlier rules are indexed by their source (else destination) network,
// so a policy of 100,000 address rules is checked in well under a second:
// a rule can only be covered by a rule whose network contains its own, or
// by one without a network on that side.
func Shadowed(p *policy.Policy) []Covered {
	var out []Covered
	nFrom, nTo := 0, 0
	for i := range p.Rules {
		switch {
		case p.Rules[i].From.IsValid():
			nFrom++
		case p.Rules[i].To.IsValid():
			nTo++
		}
	}
	byFrom, byTo := newPrefixIndex(nFrom, len(p.Rules)), newPrefixIndex(nTo, len(p.Rules))
	var rest []int // earlier rules with neither network
	s := search{rules: p.Rules}
	for i := range p.Rules {
		b := &p.Rules[i]
		s.b, s.best = b, -1
		for _, j := range rest {
			if s.best >= 0 && j > s.best {
				break
			}
			s.try(j)
		}
		if b.From.IsValid() {
			byFrom.candidates(b.From, &s)
		}
		if b.To.IsValid() {
			byTo.candidates(b.To, &s)
		}
		if s.best >= 0 {
			out = append(out, Covered{Rule: p.Rules[i], By: p.Rules[s.best]})
		}
		switch {
		case b.From.IsValid():
			byFrom.add(b.From, i)
		case b.To.IsValid():
			byTo.add(b.To, i)
		default:
			rest = append(rest, i)
		}
	}
	return out
}

// search is the search for the first earlier rule that covers b (a
// struct rather than a closure: a closure per rule cost an allocation
// each).
type search struct {
	rules []policy.Rule
	b     *policy.Rule
	best  int // the covering rule found so far, or -1
}

func (s *search) try(j int) {
	// Rules of one line (an application profile's protocols) are one rule
	// to the admin: never one covering the other.
	if s.b.Pos.Line > 0 && s.rules[j].Pos.Line == s.b.Pos.Line {
		return
	}
	if (s.best < 0 || j < s.best) && covers(&s.rules[j], s.b) {
		s.best = j
	}
}

// prefixIndex finds the rules whose network contains a given one. The
// rules of one network are a chain through next (by rule index), so a
// policy of 100,000 address rules costs one map entry each and no slice
// per network (a map of slices took 17 MB).
type prefixIndex struct {
	head map[netip.Prefix]int32 // the last rule added of each network
	next []int32                // by rule index: the one added before it of the same network, or -1
	// lens are the prefix lengths present, by family (0: IPv4); has says
	// which are (a map walked for every rule cost more than the lookups).
	lens [2][]int
	has  [2][129]bool
}

// newPrefixIndex makes an index for n networks of rules numbered below
// rules (sized at once: growing a map of 100,000 copies it over and over).
func newPrefixIndex(n, rules int) *prefixIndex {
	x := &prefixIndex{head: make(map[netip.Prefix]int32, n)}
	if n > 0 {
		x.next = make([]int32, rules)
	}
	return x
}

func famIndex(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 0
	}
	return 1
}

func (x *prefixIndex) add(p netip.Prefix, i int) {
	p = p.Masked()
	for len(x.next) <= i {
		x.next = append(x.next, -1)
	}
	x.next[i] = -1
	if j, ok := x.head[p]; ok {
		x.next[i] = j
	}
	x.head[p] = int32(i)
	if f, b := famIndex(p), p.Bits(); !x.has[f][b] {
		x.has[f][b] = true
		x.lens[f] = append(x.lens[f], b)
	}
}

// candidates tries every indexed rule whose network contains p.
func (x *prefixIndex) candidates(p netip.Prefix, s *search) {
	for _, bits := range x.lens[famIndex(p)] {
		if bits > p.Bits() {
			continue
		}
		q, err := p.Addr().Prefix(bits)
		if err != nil {
			continue
		}
		j, ok := x.head[q]
		for ok && j >= 0 {
			s.try(int(j))
			j = x.next[j]
		}
	}
}

// covers reports whether every packet that b matches is matched by a.
// The cheapest tests that most often fail come first: an earlier rule
// without networks (a port rule, tried against every later rule) most
// often fails on its ports against an address rule, which has none.
func covers(a, b *policy.Rule) bool {
	return a.Direction == b.Direction &&
		portsCover(a.ToPort, b.ToPort) && portsCover(a.FromPort, b.FromPort) &&
		prefixCovers(a.From, b.From) && prefixCovers(a.To, b.To) &&
		ifaceCovers(a.InIface, b.InIface) && ifaceCovers(a.OutIface, b.OutIface) &&
		protosCover(a, b) &&
		familiesCover(a, b)
}

// The IP families a rule matches, as bits (no slice per comparison: the
// check compares 100,000 rules).
const (
	famV4 uint8 = 1 << iota
	famV6
)

// families is the set of IP families a rule matches.
func families(r *policy.Rule) uint8 {
	switch {
	case r.Family == policy.FamilyV4 || r.Proto == "icmp" || r.From.Addr().Is4() || r.To.Addr().Is4():
		return famV4
	case r.Family == policy.FamilyV6 || r.Proto == "ipv6-icmp" || r.From.Addr().Is6() || r.To.Addr().Is6():
		return famV6
	}
	return famV4 | famV6
}

func familiesCover(a, b *policy.Rule) bool {
	return families(b)&^families(a) == 0
}

// ifaceCovers: "" is any interface; "eth+" is every name starting "eth".
func ifaceCovers(a, b string) bool {
	switch {
	case a == "":
		return true
	case b == "":
		return false
	case strings.HasSuffix(a, "+"):
		return strings.HasPrefix(strings.TrimSuffix(b, "+"), strings.TrimSuffix(a, "+"))
	}
	return a == b
}

// protos is the set of protocols a rule matches: n of ps, or every
// protocol (all). ufw's "allow 22" (ports, no protocol) means tcp and udp.
func protos(r *policy.Rule) (ps [2]string, n int, all bool) {
	if r.Proto != "any" && r.Proto != "" {
		ps[0] = r.Proto
		return ps, 1, false
	}
	if len(r.FromPort) > 0 || len(r.ToPort) > 0 {
		return [2]string{"tcp", "udp"}, 2, false
	}
	return ps, 0, true
}

func protosCover(a, b *policy.Rule) bool {
	pa, na, allA := protos(a)
	pb, nb, allB := protos(b)
	if allA {
		return true
	}
	if allB {
		return false
	}
	for _, p := range pb[:nb] {
		if !slices.Contains(pa[:na], p) {
			return false
		}
	}
	return true
}

// prefixCovers: an invalid prefix is any address.
func prefixCovers(a, b netip.Prefix) bool {
	switch {
	case !a.IsValid():
		return true
	case !b.IsValid():
		return false
	}
	return a.Addr().Is4() == b.Addr().Is4() && a.Bits() <= b.Bits() && a.Contains(b.Addr())
}

// portsCover: every port of b is one of a's (nil is any port).
func portsCover(a, b policy.Ports) bool {
	if len(a) == 0 {
		return true
	}
	if len(b) == 0 {
		return false
	}
	for _, r := range b {
		// Walk r through a's ranges, which may overlap and come in any order.
		next := int(r.First)
		for progress := true; progress && next <= int(r.Last); {
			progress = false
			for _, x := range a {
				if int(x.First) <= next && next <= int(x.Last) {
					next = int(x.Last) + 1
					progress = true
				}
			}
		}
		if next <= int(r.Last) {
			return false
		}
	}
	return true
}
