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
	return coveredOf(p, shadowedPairs(p))
}

// coveredOf is the Covered of each pair [rule, by] of rule indexes (in
// rule order, one a rule). The rules of one line (an application
// profile's protocols, Samba's udp and tcp) are one rule to the admin:
// the line is named once, and only when every one of its rules is
// covered (a line whose tcp part still matches is not dead).
func coveredOf(p *policy.Policy, pairs [][2]int) []Covered {
	if len(pairs) == 0 {
		return nil
	}
	out := make([]Covered, 0, len(pairs))
	var scratch policy.Rule
	for k := 0; k < len(pairs); {
		pr := pairs[k]
		r := p.Rule(pr[0])
		first, last := lineRules(p, pr[0], r.Pos, &scratch)
		j := k + 1
		for j < len(pairs) && pairs[j][0] <= last {
			j++
		}
		if j-k == last-first+1 {
			out = append(out, Covered{Rule: r, By: p.Rule(pr[1])})
		}
		k = j
	}
	return out
}

// lineRules is the range [first, last] of the rules written on the line
// of rule i (pos): i alone unless a line holds several rules (a profile of
// several protocols), which are side by side.
func lineRules(p *policy.Policy, i int, pos policy.Pos, scratch *policy.Rule) (first, last int) {
	first, last = i, i
	if pos.Line == 0 {
		return first, last
	}
	same := func(j int) bool {
		if _, ok := p.CompactAddrRule(j); ok {
			return false // an address rule is a line of its own
		}
		q := p.RulePtr(j, scratch).Pos
		return q.Line == pos.Line && q.File == pos.File
	}
	for first > 0 && same(first-1) {
		first--
	}
	for last < p.NumRules()-1 && same(last+1) {
		last++
	}
	return first, last
}

// shadowedPairs is Shadowed's search: the covered rules and the first
// rule covering each, as [rule, by] indexes in policy order.
func shadowedPairs(p *policy.Policy) [][2]int {
	var out [][2]int
	// How many networks of each family and length each side holds: the
	// index's maps are sized at once.
	var nFrom, nTo [2][129]int
	n := p.NumRules()
	var scratch policy.Rule
	for i := range n {
		from, to, _ := ruleNets(p, i, &scratch)
		switch {
		case from.IsValid():
			nFrom[famIndex(from)][from.Bits()]++
		case to.IsValid():
			nTo[famIndex(to)][to.Bits()]++
		}
	}
	byFrom, byTo := newPrefixIndex(&nFrom, n), newPrefixIndex(&nTo, n)
	markQueried(p, byFrom, byTo, &nFrom, &nTo)
	var rest []int // earlier rules with neither network
	s := search{p: p}
	for i := range n {
		// A compact rule is built only if something is tried against it
		// (most of a blocklist's rules meet no candidate).
		s.bi, s.best = i, -1
		from, to, b := ruleNets(p, i, &s.bScratch)
		s.b = b
		for _, j := range rest {
			if s.best >= 0 && j > s.best {
				break
			}
			s.try(j)
		}
		if from.IsValid() {
			byFrom.candidates(from, &s)
		}
		if to.IsValid() {
			byTo.candidates(to, &s)
		}
		if s.best >= 0 {
			out = append(out, [2]int{i, s.best})
		}
		switch {
		case from.IsValid():
			byFrom.add(from, i)
		case to.IsValid():
			byTo.add(to, i)
		default:
			rest = append(rest, i)
		}
	}
	return out
}

// ruleNets is rule i's source and destination networks, read from the
// compact form when the policy holds the rule so (r nil), else from the
// rule (r, built into scratch if need be).
func ruleNets(p *policy.Policy, i int, scratch *policy.Rule) (from, to netip.Prefix, r *policy.Rule) {
	if a, ok := p.CompactAddrRule(i); ok {
		if a.To {
			return netip.Prefix{}, a.Prefix, nil
		}
		return a.Prefix, netip.Prefix{}, nil
	}
	r = p.RulePtr(i, scratch)
	return r.From, r.To, r
}

// search is the search for the first earlier rule that covers b (a
// struct rather than a closure: a closure per rule cost an allocation
// each). The policy holds address rules compact: b and the rule tried are
// built into scratch rules when they are.
type search struct {
	p        *policy.Policy
	b        *policy.Rule // rule bi, nil until built
	bi       int
	best     int // the covering rule found so far, or -1
	bScratch policy.Rule
	jScratch policy.Rule
}

func (s *search) try(j int) {
	if s.best >= 0 && j >= s.best {
		return
	}
	if s.b == nil {
		s.b = s.p.RulePtr(s.bi, &s.bScratch)
	}
	r := s.p.RulePtr(j, &s.jScratch)
	// Rules of one line (an application profile's protocols) are one rule
	// to the admin: never one covering the other.
	if s.b.Pos.Line > 0 && r.Pos.Line == s.b.Pos.Line {
		return
	}
	if covers(r, s.b) {
		s.best = j
	}
}

// prefixIndex finds the rules whose network contains a given one. The
// rules of one network are a chain through next (by rule index), so a
// policy of 100,000 address rules costs one map entry each and no slice
// per network (a map of slices took 17 MB).
type prefixIndex struct {
	// The last rule added of each network, keyed by one integer where it
	// can be (a key of 16 bytes with its tag, a third of a netip.Prefix
	// map entry's): in heads, IPv4 networks by address and length (tag
	// 0), IPv6 networks of 64 bits or fewer by their first 64 bits (tag 1
	// + the length); the others in head.
	heads *netTable
	head  map[netip.Prefix]int32
	next  []int32 // by rule index: the one added before it of the same network, or -1
	// lens are the prefix lengths present, by family (0: IPv4); has says
	// which are (a map walked for every rule cost more than the lookups).
	lens [2][]int
	has  [2][129]bool
	// queried, for a large index, is the networks that lookups may ask
	// for (markQueried): a network asked for by no rule but the one that
	// adds it is never read back, so it is not added (most of a
	// blocklist's networks: the table's inserts, a cache miss each, were
	// most of the search's time). nil: every network is added.
	queried *queryFilter
	// seen is a filter of the networks added (one bit per hash of a
	// network, nil for a small index): most lookups of a large policy
	// miss (a blocklist's networks are apart), and a bit in 128 KiB
	// answers most misses without hashing into the map of 100,000.
	seen []uint64
}

// bigIndex is the number of networks from which an index filters its
// lookups (seen) and its inserts (queried); a variable for the tests.
var bigIndex = 1000

// seenBits is the size of the filter, as a power of two of bits.
const seenBits = 20

// seenHash hashes a masked network for the filter.
func seenHash(p netip.Prefix) uint64 {
	var x uint64
	if a := p.Addr(); a.Is4() {
		b := a.As4()
		x = uint64(b[0])<<32 | uint64(b[1])<<24 | uint64(b[2])<<16 | uint64(b[3])<<8
	} else {
		b := a.As16()
		hi := uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
			uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
		lo := uint64(b[8])<<56 | uint64(b[9])<<48 | uint64(b[10])<<40 | uint64(b[11])<<32 |
			uint64(b[12])<<24 | uint64(b[13])<<16 | uint64(b[14])<<8 | uint64(b[15])
		x = (hi*0x9E3779B97F4A7C15 ^ lo) * 0xC2B2AE3D27D4EB4F
		x ^= 1 << 63
	}
	x |= uint64(p.Bits())
	return (x * 0x9E3779B97F4A7C15) >> (64 - seenBits)
}

// maybe reports whether q may have been added (false: it was not).
func (x *prefixIndex) maybe(q netip.Prefix) bool {
	if x.seen == nil {
		return true
	}
	h := seenHash(q)
	return x.seen[h>>6]&(1<<(h&63)) != 0
}

// newPrefixIndex makes an index for the networks counted in n (by
// family and length) of rules numbered below rules (sized at once:
// growing a map of 100,000 copies it over and over).
func newPrefixIndex(n *[2][129]int, rules int) *prefixIndex {
	total, nBig := 0, 0
	for f := range n {
		for b, c := range n[f] {
			total += c
			if f == 1 && b > 64 {
				nBig += c
			}
		}
	}
	x := &prefixIndex{}
	if total > 0 {
		x.next = make([]int32, rules)
	}
	if total >= bigIndex {
		// Only the networks markQueried finds looked up by another
		// rule are added: the table grows from small (sized for all, its
		// pages were touched all over by few inserts).
		x.seen = make([]uint64, 1<<seenBits/64)
		x.queried = newQueryFilter()
		total, nBig = 0, 0
	}
	x.heads, x.head = newNetTable(total-nBig), make(map[netip.Prefix]int32, nBig)
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
	if f, b := famIndex(p), p.Bits(); !x.has[f][b] {
		x.has[f][b] = true
		x.lens[f] = append(x.lens[f], b)
	}
	if x.queried != nil && !x.queried.many(seenHash(p)) {
		return
	}
	if x.maybe(p) {
		if j, ok := x.get(p); ok {
			x.next[i] = j
		}
	}
	x.set(p, int32(i))
	if x.seen != nil {
		h := seenHash(p)
		x.seen[h>>6] |= 1 << (h & 63)
	}
}

// queryFilter counts, per hash of a network (seenHash), the lookups that
// may ask for it, up to two: once and twice are bit sets of 2^seenBits.
type queryFilter struct {
	once, twice []uint64
}

func newQueryFilter() *queryFilter {
	return &queryFilter{once: make([]uint64, 1<<seenBits/64), twice: make([]uint64, 1<<seenBits/64)}
}

func (f *queryFilter) bump(h uint64) {
	w, bit := h>>6, uint64(1)<<(h&63)
	if f.once[w]&bit != 0 {
		f.twice[w] |= bit
	} else {
		f.once[w] |= bit
	}
}

// many reports whether two lookups or more may ask for networks of hash h.
func (f *queryFilter) many(h uint64) bool {
	return f.twice[h>>6]&(1<<(h&63)) != 0
}

// markQueried fills the large indexes' query filters before the search:
// every lookup the search can make (candidates: each network a rule has
// on an index's side, masked to each length that index will hold up to
// the network's own) is counted on its hash. A rule's network is looked
// up by the rule itself (its own length), so a network is read back by
// another rule only if its hash is counted twice or more; a collision only
// adds a network that was not needed. The lengths are those of the whole
// policy, a superset of what the search holds when it looks up.
func markQueried(p *policy.Policy, byFrom, byTo *prefixIndex, nFrom, nTo *[2][129]int) {
	if byFrom.queried == nil && byTo.queried == nil {
		return
	}
	var lensFrom, lensTo [2][]int
	for f := range 2 {
		for b := range 129 {
			if nFrom[f][b] > 0 {
				lensFrom[f] = append(lensFrom[f], b)
			}
			if nTo[f][b] > 0 {
				lensTo[f] = append(lensTo[f], b)
			}
		}
	}
	count := func(q *queryFilter, lens *[2][]int, p netip.Prefix) {
		for _, bits := range lens[famIndex(p)] {
			if bits > p.Bits() {
				break
			}
			if m, err := p.Addr().Prefix(bits); err == nil {
				q.bump(seenHash(m))
			}
		}
	}
	var scratch policy.Rule
	for i := range p.NumRules() {
		from, to, _ := ruleNets(p, i, &scratch)
		if from.IsValid() && byFrom.queried != nil {
			count(byFrom.queried, &lensFrom, from)
		}
		if to.IsValid() && byTo.queried != nil {
			count(byTo.queried, &lensTo, to)
		}
	}
}

// key4 is an IPv4 network as head4's key.
func key4(p netip.Prefix) uint64 {
	b := p.Addr().As4()
	return uint64(b[0])<<40 | uint64(b[1])<<32 | uint64(b[2])<<24 | uint64(b[3])<<16 | uint64(p.Bits())
}

// hi64 is the first 64 bits of an IPv6 address.
func hi64(a netip.Addr) uint64 {
	b := a.As16()
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

// get returns the last rule added of the masked network p.
func (x *prefixIndex) get(p netip.Prefix) (int32, bool) {
	var j int32
	var ok bool
	switch b := p.Bits(); {
	case p.Addr().Is4():
		j, ok = x.heads.get(key4(p), 0)
	case b <= 64:
		j, ok = x.heads.get(hi64(p.Addr()), uint8(1+b))
	default:
		j, ok = x.head[p]
	}
	return j, ok
}

// set records i as the last rule added of the masked network p.
func (x *prefixIndex) set(p netip.Prefix, i int32) {
	switch b := p.Bits(); {
	case p.Addr().Is4():
		x.heads.set(key4(p), 0, i)
	case b <= 64:
		x.heads.set(hi64(p.Addr()), uint8(1+b), i)
	default:
		x.head[p] = i
	}
}

// candidates tries every indexed rule whose network contains p.
func (x *prefixIndex) candidates(p netip.Prefix, s *search) {
	for _, bits := range x.lens[famIndex(p)] {
		if bits > p.Bits() {
			continue
		}
		q, err := p.Addr().Prefix(bits)
		if err != nil || !x.maybe(q) {
			continue
		}
		j, ok := x.get(q)
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
