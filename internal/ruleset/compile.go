package ruleset

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"go4.org/netipx"

	"github.com/moat-fw/moat/internal/policy"
)

// minSetSize is how many consecutive address-only rules become a set. Two
// is enough: a set lookup costs one rule whatever its size.
const minSetSize = 2

var (
	linkLocal6 = netip.MustParsePrefix("fe80::/10")
)

// ICMP types accepted as built-ins: errors the network needs. Echo request
// is left to the policy (ping is allowed or denied like any service).
var (
	icmp4Errors = []uint8{3, 11, 12}          // destination-unreachable, time-exceeded, parameter-problem
	icmp6Errors = []uint8{1, 2, 3, 4}         // destination-unreachable, packet-too-big, time-exceeded, parameter-problem
	icmp6ND     = []uint8{133, 134, 135, 136} // router solicit/advert, neighbour solicit/advert
	icmp6MLD    = []uint8{130, 131, 132, 143} // multicast listener query/report/done, MLDv2 report
)

func builtin(id, text string) Origin {
	return Origin{ID: "builtin:" + id, Text: text}
}

// Builtins returns the rules moat puts first in a chain.
func Builtins(h Hook) []Rule {
	var rs []Rule
	switch h {
	case Input:
		rs = []Rule{
			// Established first: most packets are, and the rules it
			// overtakes accept too (so the order changes no verdict).
			{Match: Match{CTStates: []CTState{CTEstablished, CTRelated}}, Verdict: Accept, Uncounted: true, Origin: builtin("established", "accept replies of established connections")},
			{Match: Match{InIface: "lo"}, Verdict: Accept, Origin: builtin("loopback", "accept loopback traffic")},
			// Neighbour discovery first: a host with one banned address
			// must still resolve ours for its other addresses.
			{Match: Match{Family: policy.FamilyV6, Protos: []string{"ipv6-icmp"}, ICMPTypes: icmp6ND, HopLimit: 255}, Verdict: Accept, Origin: builtin("ndp", "accept IPv6 neighbour discovery and router advertisements (hop limit 255)")},
			// Bans and blocklists are dropped before conntrack, in the
			// prerouting chain (Prerouting).
			{Match: Match{CTStates: []CTState{CTInvalid}}, Verdict: Drop, Origin: builtin("invalid", "drop packets conntrack marks invalid")},
			{Match: Match{Family: policy.FamilyV4, Protos: []string{"icmp"}, ICMPTypes: icmp4Errors}, Verdict: Accept, Origin: builtin("icmp", "accept ICMP errors (unreachable, time exceeded, parameter problem)")},
			{Match: Match{Family: policy.FamilyV6, Protos: []string{"ipv6-icmp"}, ICMPTypes: icmp6Errors}, Verdict: Accept, Origin: builtin("icmpv6", "accept ICMPv6 errors (unreachable, packet too big, time exceeded, parameter problem)")},
			{Match: Match{Family: policy.FamilyV6, Protos: []string{"ipv6-icmp"}, ICMPTypes: icmp6MLD, Src: []netip.Prefix{linkLocal6}}, Verdict: Accept, Origin: builtin("mld", "accept IPv6 multicast listener discovery from link-local addresses")},
			{Match: Match{Family: policy.FamilyV4, Protos: []string{"udp"}, SPorts: ports(67), DPorts: ports(68)}, Verdict: Accept, Origin: builtin("dhcp", "accept DHCP replies to this host's client")},
			{Match: Match{Family: policy.FamilyV6, Protos: []string{"udp"}, Src: []netip.Prefix{linkLocal6}, SPorts: ports(547), DPorts: ports(546)}, Verdict: Accept, Origin: builtin("dhcpv6", "accept DHCPv6 replies to this host's client")},
		}
	case Output:
		rs = []Rule{
			{Match: Match{CTStates: []CTState{CTEstablished, CTRelated}}, Verdict: Accept, Uncounted: true, Origin: builtin("established", "accept packets of established connections")},
			{Match: Match{OutIface: "lo"}, Verdict: Accept, Origin: builtin("loopback", "accept loopback traffic")},
			{Match: Match{Family: policy.FamilyV4, Protos: []string{"icmp"}, ICMPTypes: icmp4Errors}, Verdict: Accept, Origin: builtin("icmp", "send ICMP errors")},
			{Match: Match{Family: policy.FamilyV6, Protos: []string{"ipv6-icmp"}, ICMPTypes: icmp6Errors}, Verdict: Accept, Origin: builtin("icmpv6", "send ICMPv6 errors")},
			{Match: Match{Family: policy.FamilyV6, Protos: []string{"ipv6-icmp"}, ICMPTypes: icmp6ND, HopLimit: 255}, Verdict: Accept, Origin: builtin("ndp", "send IPv6 neighbour discovery")},
			{Match: Match{Family: policy.FamilyV6, Protos: []string{"ipv6-icmp"}, ICMPTypes: icmp6MLD}, Verdict: Accept, Origin: builtin("mld", "send IPv6 multicast listener reports")},
			{Match: Match{Family: policy.FamilyV4, Protos: []string{"udp"}, SPorts: ports(68), DPorts: ports(67)}, Verdict: Accept, Origin: builtin("dhcp", "send DHCP requests")},
			{Match: Match{Family: policy.FamilyV6, Protos: []string{"udp"}, SPorts: ports(546), DPorts: ports(547)}, Verdict: Accept, Origin: builtin("dhcpv6", "send DHCPv6 requests")},
		}
	case Forward:
		rs = []Rule{
			{Match: Match{CTStates: []CTState{CTEstablished, CTRelated}}, Verdict: Accept, Uncounted: true, Origin: builtin("established", "accept packets of established connections")},
			{Match: Match{CTStates: []CTState{CTInvalid}}, Verdict: Drop, Origin: builtin("invalid", "drop packets conntrack marks invalid")},
			{Match: Match{Family: policy.FamilyV4, Protos: []string{"icmp"}, ICMPTypes: icmp4Errors}, Verdict: Accept, Origin: builtin("icmp", "forward ICMP errors")},
			{Match: Match{Family: policy.FamilyV6, Protos: []string{"ipv6-icmp"}, ICMPTypes: icmp6Errors}, Verdict: Accept, Origin: builtin("icmpv6", "forward ICMPv6 errors")},
		}
	}
	return rs
}

func ports(p uint16) policy.Ports { return policy.Ports{{First: p, Last: p}} }

var hookOf = map[policy.Direction]Hook{policy.In: Input, policy.Out: Output, policy.Route: Forward}
var dirOf = map[Hook]policy.Direction{Input: policy.In, Output: policy.Out, Forward: policy.Route}

var verdictOf = map[policy.Action]Verdict{policy.Allow: Accept, policy.Deny: Drop, policy.Reject: Reject, policy.Limit: Accept}

// Compile turns a validated policy into a ruleset.
func Compile(p *policy.Policy) *Ruleset { return compile(p, sinkOn) }

// CompileEarlierOrder is Compile in the order moat loaded before it sank
// the built-ins (every built-in first, as ufw orders them): the same
// verdicts, another order. After an upgrade the kernel may still hold
// that order; drift tells it from a reordering by hand with this. The
// nftables rendering of it has no gates either (Ungated), nor its iptables
// rendering conditions on the jumps (PlainJumps), as the earlier moat
// loaded it.
func CompileEarlierOrder(p *policy.Policy) *Ruleset {
	rs := compile(p, false)
	rs.Ungated = true
	rs.PlainJumps = true
	return rs
}

func compile(p *policy.Policy, sink bool) *Ruleset {
	// The sets kept across applies first (a full apply re-creates the
	// others after them).
	rs := &Ruleset{Sets: []*Set{{Name: BanSet4, Family: policy.FamilyV4, Bans: true}, {Name: BanSet6, Family: policy.FamilyV6, Bans: true},
		{Name: LoginSet4, Family: policy.FamilyV4, Bans: true}, {Name: LoginSet6, Family: policy.FamilyV6, Bans: true}},
		Source: p.Source}
	byDir := map[policy.Direction]*userRules{}
	for i := range p.NumRules() {
		d := p.RuleDirection(i)
		u := byDir[d]
		if u == nil {
			// Room for the rest: a large policy is mostly one direction.
			u = &userRules{p: p, idx: make([]int, 0, p.NumRules()-i)}
			byDir[d] = u
		}
		u.idx = append(u.idx, i)
	}
	for _, h := range Hooks {
		dir := dirOf[h]
		user := byDir[dir]
		if user == nil {
			user = &userRules{p: p}
		}
		def := verdictOf[p.Defaults[dir]]
		c := &Chain{Hook: h, Default: def, DefaultOrigin: defaultOrigin(p, dir)}
		// Forwarded traffic is left alone (no built-ins, accept) until the
		// admin writes a route rule or a routed default.
		if h != Forward || len(user.idx) > 0 || def != Accept {
			c.Rules = Builtins(h)
		}
		c.Rules = append(c.Rules, compileRules(rs, h, user)...)
		if sink {
			c.Rules = sinkBuiltins(c.Rules)
		}
		if h == Input {
			c.Rules = append(c.Rules, compileTrap(rs, p, def)...)
		}
		addLogging(c, p.Logging)
		rs.Chains = append(rs.Chains, c)
	}
	// Compiled last so the policy sets keep their names (numbered in
	// order), rendered first.
	rs.Chains = append([]*Chain{compilePrerouting(rs, p)}, rs.Chains...)
	return rs
}

func defaultOrigin(p *policy.Policy, dir policy.Direction) Origin {
	o := Origin{ID: "default:" + string(hookOf[dir])}
	word := policy.DirectionWord(dir)
	if pos, ok := p.DefaultPos[dir]; ok && pos.Line > 0 {
		o.Line = pos.Line
		o.Text = fmt.Sprintf("default %s %s", p.Defaults[dir], word)
	} else {
		o.Text = fmt.Sprintf("default %s %s (built-in)", p.Defaults[dir], word)
	}
	return o
}

// ruleOrigin names a policy rule by its line.
func ruleOrigin(r *policy.Rule) Origin {
	return Origin{ID: lineID(r.Pos.Line), Line: r.Pos.Line, Text: r.Text}
}

// lineIDs hands out lineID strings cut from shared blocks of 64 KiB:
// a set of 100,000 entries otherwise made 100,000 small allocations.
// A block's bytes are never written again once a string covers them.
type lineIDs struct {
	buf []byte
}

func (ids *lineIDs) id(line int) string {
	if cap(ids.buf)-len(ids.buf) < 24 {
		ids.buf = make([]byte, 0, 64<<10)
	}
	start := len(ids.buf)
	ids.buf = strconv.AppendInt(append(ids.buf, 'L'), int64(line), 10)
	return unsafe.String(&ids.buf[start], len(ids.buf)-start)
}

// lineID is "L" and the line number, in one allocation (there is one per
// rule of a 100,000-line policy).
func lineID(line int) string {
	var buf [24]byte
	return string(strconv.AppendInt(append(buf[:0], 'L'), int64(line), 10))
}

// setKey says whether a rule can join an address set, and which: rules
// that match only a source (or only a destination) address, with the same
// action, family and side, and nothing else.
func setKey(r *policy.Rule) (key string, ok bool) {
	if r.Action == policy.Limit || r.Proto != "any" || len(r.FromPort) > 0 || len(r.ToPort) > 0 ||
		r.InIface != "" || r.OutIface != "" || r.Log != policy.LogNone {
		return "", false
	}
	from, to := r.From.IsValid(), r.To.IsValid()
	if from == to {
		return "", false
	}
	// A /0 is "all of one family", which ipset cannot hold; keep it a rule.
	if (from && r.From.Bits() == 0) || (to && r.To.Bits() == 0) {
		return "", false
	}
	side := 0
	if to {
		side = 1
	}
	if k, ok := setKeys[r.Action]; ok {
		return k[side], true
	}
	return string(r.Action) + "_" + [2]string{"src", "dst"}[side], true
}

// setKeys are setKey's keys, made once rather than for every rule.
var (
	setKeysAllow  = [2]string{"allow_src", "allow_dst"}
	setKeysDeny   = [2]string{"deny_src", "deny_dst"}
	setKeysReject = [2]string{"reject_src", "reject_dst"}
	setKeys       = map[policy.Action][2]string{
		policy.Allow:  setKeysAllow,
		policy.Deny:   setKeysDeny,
		policy.Reject: setKeysReject,
	}
)

// userRules are a chain's rules of a policy, by index. The policy holds
// its address rules compact: at builds each when asked, and the pointer
// it returns is good until the next call.
type userRules struct {
	p       *policy.Policy
	idx     []int
	scratch policy.Rule
	ids     lineIDs
}

func (u *userRules) at(k int) *policy.Rule { return u.p.RulePtr(u.idx[k], &u.scratch) }

// entry is rule k as a set entry, and its family's slot (famSlot).
func (u *userRules) entry(k int) (SetEntry, int) {
	if a, ok := u.p.CompactAddrRule(u.idx[k]); ok {
		f := 1
		if a.Prefix.Addr().Is4() {
			f = 0
		}
		return SetEntry{Prefix: a.Prefix, Origin: Origin{ID: u.ids.id(a.Line), Line: a.Line, Text: u.p.RuleText(u.idx[k])}}, f
	}
	r := u.at(k)
	addr := r.From
	if !addr.IsValid() {
		addr = r.To
	}
	return SetEntry{Prefix: addr, Origin: ruleOrigin(r)}, famSlot(r.Family)
}

// setKeyFam is setKey(u.at(k)) and famSlot of rule k's family, read
// from the compact form when the policy holds rule k so (what such a
// rule is: setKey's conditions hold but the /0's), from one read of the
// rule (compile's scan reads every rule of a run once for both).
func (u *userRules) setKeyFam(k int) (string, int, bool) {
	a, ok := u.p.CompactAddrRule(u.idx[k])
	if !ok {
		r := u.at(k)
		key, ok := setKey(r)
		return key, famSlot(r.Family), ok
	}
	f := 1
	if a.Prefix.Addr().Is4() {
		f = 0
	}
	if a.Prefix.Bits() == 0 {
		return "", f, false
	}
	side := 0
	if a.To {
		side = 1
	}
	// A switch, not the map: a map lookup hashed the action's text for
	// each of a large policy's rules (1 ms of an edit at 100,000).
	switch a.Action {
	case policy.Allow:
		return setKeysAllow[side], f, true
	case policy.Deny:
		return setKeysDeny[side], f, true
	case policy.Reject:
		return setKeysReject[side], f, true
	}
	return setKeys[a.Action][side], f, true
}

// compileRules compiles a chain's user rules in order. Runs of consecutive
// address-only rules with the same action become one set lookup per
// family, so per-packet cost does not grow with their number; order is
// kept, since only neighbours are merged.
func compileRules(rs *Ruleset, h Hook, rules *userRules) []Rule {
	var out []Rule
	for i := 0; i < len(rules.idx); {
		// n counts the run's rules of each family (famSlot), as the run
		// is found: compileSetRules sizes its entries with it.
		var n [2]int
		key, f, ok := rules.setKeyFam(i)
		if f >= 0 {
			n[f]++
		}
		j := i + 1
		if ok {
			for j < len(rules.idx) {
				k, f, ok := rules.setKeyFam(j)
				if !ok || k != key {
					break
				}
				if f >= 0 {
					n[f]++
				}
				j++
			}
		}
		if !ok || j-i < minSetSize {
			out = append(out, compileRule(rules.at(i))...)
			i++
			continue
		}
		out = append(out, compileSetRules(rs, h, key, rules, i, j, n)...)
		i = j
	}
	return out
}

// compileSetRules makes the set rules of the run of rules from to to,
// n[f] of them of family slot f.
func compileSetRules(rs *Ruleset, h Hook, key string, rules *userRules, from, to int, n [2]int) []Rule {
	// Exactly as many entries as each family has: with 100,000 rules,
	// room for the whole group in each family held 7 MB for nothing.
	entries := [2][]SetEntry{make([]SetEntry, 0, n[0]), make([]SetEntry, 0, n[1])}
	for k := from; k < to; k++ {
		if e, f := rules.entry(k); f >= 0 {
			entries[f] = append(entries[f], e)
		}
	}
	verdict := verdictOf[rules.at(from).Action]
	var out []Rule
	for f, fam := range []policy.Family{policy.FamilyV4, policy.FamilyV6} {
		suffix := "4"
		if fam == policy.FamilyV6 {
			suffix = "6"
		}
		if len(entries[f]) == 0 {
			continue
		}
		// Numbered by position, the login sets not counted: names stay
		// what moat gave before those were made first.
		set := &Set{Name: fmt.Sprintf("%s_%s%s_%d", h, key, suffix, len(rs.Sets)+1-2), Family: fam, Entries: entries[f]}
		rs.Sets = append(rs.Sets, set)
		first, last := set.Entries[0].Origin.Line, set.Entries[len(set.Entries)-1].Origin.Line
		m := Match{Family: fam}
		if strings.HasSuffix(key, "_src") {
			m.SrcSet = set.Name
		} else {
			m.DstSet = set.Name
		}
		out = append(out, Rule{
			Match:   m,
			Verdict: verdict,
			Origin: Origin{ID: "set:" + set.Name, Line: first,
				Text: fmt.Sprintf("%d address rules (lines %d-%d) in set %s", len(set.Entries), first, last, set.Name)},
		})
	}
	return out
}

// famSlot is 0 for IPv4, 1 for IPv6, -1 for any.
func famSlot(f policy.Family) int {
	switch f {
	case policy.FamilyV4:
		return 0
	case policy.FamilyV6:
		return 1
	}
	return -1
}

// compileRule turns one policy rule into kernel-neutral rules.
func compileRule(r *policy.Rule) []Rule {
	m := Match{Family: r.Family, InIface: r.InIface, OutIface: r.OutIface, SPorts: r.FromPort, DPorts: r.ToPort}
	switch {
	case r.Proto != "any":
		m.Protos = []string{r.Proto}
	case len(r.FromPort) > 0 || len(r.ToPort) > 0:
		m.Protos = []string{"tcp", "udp"}
	}
	if r.From.IsValid() {
		m.Src = []netip.Prefix{r.From}
	}
	if r.To.IsValid() {
		m.Dst = []netip.Prefix{r.To}
	}
	out := Rule{Match: m, Verdict: verdictOf[r.Action], Origin: ruleOrigin(r), Comment: r.Comment}
	if r.Action == policy.Limit {
		rate := *r.Rate
		out.Limit = &rate
	}
	if r.Log != policy.LogNone {
		// As ufw: a separate log rule, rate limited (3 a minute, bursts of
		// 10), 'log' for new connections only, 'log-all' for every packet.
		// The prefix names the line; its counter has its own tag.
		kind := "ALLOW"
		if r.Action == policy.Deny || r.Action == policy.Reject {
			kind = "BLOCK"
		}
		lm := m
		if r.Log == policy.LogNew {
			lm.CTStates = []CTState{CTNew}
		}
		log := Rule{Match: lm, Verdict: Log, LogLimited: true, Log: fmt.Sprintf("[MOAT %s %s] ", kind, out.Origin.ID),
			Origin: Origin{ID: "log:" + out.Origin.ID, Line: out.Origin.Line, Text: "log: " + r.Text}}
		return []Rule{log, out}
	}
	return []Rule{out}
}

// mergePrefixes merges set entries into disjoint prefixes.
//
// A blocklist's networks are usually apart from each other already: then
// the merge is the masked networks in address order, found with one
// sorted copy (netipx's builder allocated 27 MB for 100,000). Any two
// that overlap or touch go through the builder, which joins them.
func mergePrefixes(entries []SetEntry) []netip.Prefix {
	if out, ok := apartPrefixes(entries); ok {
		return out
	}
	var b netipx.IPSetBuilder
	for _, e := range entries {
		b.AddPrefix(e.Prefix)
	}
	s, err := b.IPSet()
	if err != nil {
		// Only invalid prefixes make this fail, and the parser admits none.
		return nil
	}
	return s.Prefixes()
}

// apartPrefixes returns the entries' networks masked and sorted, if no two
// overlap or touch (and all are valid, of one family): what the builder
// would return for them. ok is false otherwise.
func apartPrefixes(entries []SetEntry) ([]netip.Prefix, bool) {
	if len(entries) == 0 {
		return nil, false
	}
	out := make([]netip.Prefix, len(entries))
	for i, e := range entries {
		if !e.Prefix.IsValid() || e.Prefix.Addr().Zone() != "" || e.Prefix.Addr().Is4In6() {
			return nil, false
		}
		out[i] = e.Prefix.Masked()
	}
	sorted := true
	for i := 1; i < len(out); i++ {
		if out[i-1].Addr().Compare(out[i].Addr()) >= 0 {
			sorted = false
			break
		}
	}
	if !sorted {
		slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	}
	for i := 1; i < len(out); i++ {
		prev, cur := out[i-1], out[i]
		if prev.Addr().Is4() != cur.Addr().Is4() {
			return nil, false
		}
		// Apart: the next address after prev's last is below cur's first.
		next := netipx.PrefixLastIP(prev).Next()
		if !next.IsValid() || next.Compare(cur.Addr()) >= 0 {
			return nil, false
		}
	}
	return out, true
}
