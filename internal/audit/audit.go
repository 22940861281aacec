// Package audit tells, for each socket that takes packets from the
// network, whether moat's applied policy lets the outside reach it, and
// which rules allow a port nothing listens on. It only reads: the
// listeners are given, and the verdicts come from the ruleset evaluator
// 'moat explain' uses.
package audit

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// Status of a socket for one family. The values are stable (JSON).
const (
	// Open: a source no rule names reaches it.
	Open = "open"
	// OpenSome: only some sources (or interfaces) reach it.
	OpenSome = "open-some"
	// Closed: moat drops or rejects every new connection to it.
	Closed = "closed"
	// Inactive: moat is not active; nothing of moat's stops it.
	Inactive = "inactive-open"
	// LocalOnly: bound to a loopback address.
	LocalOnly = "local-only"
	// OpenAhead: moat would refuse it, but a rule ahead of moat's jump
	// (iptables backend) accepts new connections to it before moat sees
	// them; MaybeOpenAhead: such a rule may (a jump to a chain that
	// accepts, or conditions that cannot be judged).
	OpenAhead      = "open-ahead"
	MaybeOpenAhead = "maybe-open-ahead"
)

// Socket is what is audited: one listening socket.
type Socket struct {
	Proto   string // "tcp" or "udp"
	Local   netip.AddrPort
	V4, V6  bool // the families it takes
	PID     int
	Process string
	// Device: bound to this interface (SO_BINDTODEVICE), it takes
	// packets from it only. Empty: any.
	Device string
}

// Finding is one socket seen from one family.
type Finding struct {
	Proto   string `json:"proto"`
	Family  string `json:"family"` // "ipv4" or "ipv6"
	Address string `json:"address"`
	Port    uint16 `json:"port"`
	// Device is the interface the socket is bound to (SO_BINDTODEVICE).
	Device  string `json:"device,omitempty"`
	PID     int    `json:"pid,omitempty"`
	Process string `json:"process,omitempty"`
	Status  string `json:"status"`
	// From lists the sources (networks, "on IFACE") that reach it when
	// Status is open-some.
	From []string `json:"from,omitempty"`
	// AllowedBy are the policy lines that let it through ("L12: allow 80/tcp").
	AllowedBy []string `json:"allowed_by,omitempty"`
	// Except are the blocklists and bans, and the policy's lines before
	// the allowing rule ("line N (TEXT)"), that still drop some sources
	// of an open socket.
	Except []string `json:"except,omitempty"`
	// RateLimit: new connections over this rate from one source are rejected.
	RateLimit string `json:"rate_limit,omitempty"`
	// AcceptedAhead names the rules ahead of moat's jump that accept (or
	// may accept) new connections to it (status open-ahead,
	// maybe-open-ahead).
	AcceptedAhead []string `json:"accepted_ahead,omitempty"`
	// Unexplained: exposed without a policy line or built-in rule that
	// allows it (moat inactive, or the default policy lets it through).
	Unexplained bool `json:"unexplained"`
}

// Exposed says whether the outside reaches the socket (some or all of it).
func (f Finding) Exposed() bool {
	return f.Status == Open || f.Status == OpenSome || f.Status == Inactive || f.Status == OpenAhead || f.Status == MaybeOpenAhead
}

// UnusedAllow is a policy rule that allows a port nothing listens on.
type UnusedAllow struct {
	Line  int    `json:"line"`
	Rule  string `json:"rule"`
	Proto string `json:"proto"`
	Ports string `json:"ports"`
}

// maxSetProbes bounds the addresses of one set tried as sources.
const maxSetProbes = 64

// Classify audits socks under rs (nil or !active: moat is not active).
// ifaces are the network namespace's interfaces other than loopback,
// where packets from outside come in (none: an interface no rule names).
func Classify(socks []Socket, rs *ruleset.Ruleset, active bool, ifaces []string) []Finding {
	return ClassifyAt(socks, rs, active, ifaces, nil)
}

// ClassifyAt is Classify for a host whose addresses (other than
// loopback) are locals: a socket bound to the wildcard address is
// judged for packets to each of them, since a rule may allow or drop
// packets by destination ('to ADDR'). With none of a family, the
// wildcard address stands for them.
func ClassifyAt(socks []Socket, rs *ruleset.Ruleset, active bool, ifaces []string, locals []netip.Addr) []Finding {
	if len(ifaces) == 0 {
		ifaces = []string{""}
	}
	var ctx classifyCtx
	if rs != nil {
		// Computed once: a blocklist may hold 100k networks.
		for i, v6 := range []bool{false, true} {
			ctx.named[i] = namedPrefixes(rs, v6)
			ctx.anyone[i], ctx.someoneUnnamed[i] = firstGap(ctx.named[i], netip.PrefixFrom(unspecified(v6), 0))
			if !ctx.someoneUnnamed[i] {
				ctx.anyone[i] = unspecified(v6)
			}
		}
		ctx.dstMatters = dstMatters(rs)
	}
	var out []Finding
	for _, s := range socks {
		for _, v6 := range []bool{false, true} {
			if (v6 && !s.V6) || (!v6 && !s.V4) {
				continue
			}
			out = append(out, classifyOne(s, v6, rs, active, ifaces, locals, &ctx))
		}
	}
	return out
}

func familyName(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}

func unspecified(v6 bool) netip.Addr {
	if v6 {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// classifyCtx is what Classify works out once for all sockets.
type classifyCtx struct {
	named          [2][]netip.Prefix // sorted: what rules and sets name
	anyone         [2]netip.Addr     // by family: ipv4, ipv6
	someoneUnnamed [2]bool
	dstMatters     bool
}

// dstMatters says whether a rule of the input path matches on the
// destination address: only then is a wildcard socket judged for each
// of the host's addresses (the cost of the audit grows with them).
func dstMatters(rs *ruleset.Ruleset) bool {
	for _, h := range []ruleset.Hook{ruleset.Prerouting, ruleset.Input} {
		if c := rs.Chain(h); c != nil {
			for _, r := range c.Rules {
				if len(r.Dst) > 0 || r.DstSet != "" {
					return true
				}
			}
		}
	}
	return false
}

func classifyOne(s Socket, v6 bool, rs *ruleset.Ruleset, active bool, ifaces []string, locals []netip.Addr, cx *classifyCtx) Finding {
	addr := s.Local.Addr().Unmap()
	f := Finding{Proto: s.Proto, Family: familyName(v6), Address: addr.String(), Port: s.Local.Port(), PID: s.PID, Process: s.Process, Device: s.Device}
	if s.Device != "" && !slices.Contains(ifaces, "") {
		// Packets from outside come in on ifaces: a socket bound to
		// another interface (loopback) takes none of them.
		if !slices.Contains(ifaces, s.Device) {
			f.Status = LocalOnly
			return f
		}
		ifaces = []string{s.Device}
	}
	if addr.IsLoopback() {
		f.Status = LocalOnly
		return f
	}
	if !active || rs == nil {
		f.Status, f.Unexplained = Inactive, true
		return f
	}
	dsts := []netip.Addr{addr}
	if addr.IsUnspecified() || addr.Is4() == v6 {
		dsts = nil
		for _, l := range locals {
			if l.Is6() == v6 && !l.IsLoopback() {
				dsts = append(dsts, l)
			}
		}
		if len(dsts) == 0 || !cx.dstMatters {
			dsts = []netip.Addr{unspecified(v6)}
		}
	}
	// anyone: a source no rule and no set names (not 0.0.0.0, which a
	// bogon blocklist or a rule may name).
	fi := 0
	if v6 {
		fi = 1
	}
	anyone, someoneUnnamed := cx.anyone[fi], cx.someoneUnnamed[fi]
	pkt := ruleset.Packet{Hook: ruleset.Input, Proto: s.Proto, Src: anyone, Dst: dsts[0],
		SPort: 50000, DPort: s.Local.Port(), CTState: ruleset.CTNew, HopLimit: 64}
	accepted := func(d ruleset.Decision) {
		lines, unexplained := allowedBy(d)
		for _, l := range lines {
			if !slices.Contains(f.AllowedBy, l) {
				f.AllowedBy = append(f.AllowedBy, l)
			}
		}
		f.Unexplained = f.Unexplained || unexplained
		if d.Limit != nil {
			f.RateLimit = fmt.Sprintf("%d new connections within %d s", d.Limit.Count, d.Limit.Seconds)
		}
	}
	// evalOn: the interfaces of ifaces (or iface alone) on which a
	// packet from src is accepted.
	evalOn := func(src netip.Addr, sport uint16, iface string) (on []string, all bool) {
		try := ifaces
		if iface != "" {
			try = matching(ifaces, iface)
			if s.Device != "" {
				// Bound to a device: no other interface reaches it.
				try = slices.DeleteFunc(try, func(i string) bool { return i != s.Device })
				if len(try) == 0 {
					return nil, false
				}
			}
		}
		var ds []ruleset.Decision
		for _, i := range try {
			for _, dst := range dsts {
				p := pkt
				p.Src, p.InIface, p.Dst = src, i, dst
				if sport != 0 {
					p.SPort = sport
				}
				d, err := rs.Evaluate(p)
				if err == nil && d.Verdict == ruleset.Accept {
					on = append(on, i)
					ds = append(ds, d)
					break
				}
			}
		}
		for _, d := range ds {
			accepted(d)
		}
		return on, len(on) == len(try)
	}
	seen := map[string]bool{}
	from := func(label string) {
		if !seen[label] {
			seen[label] = true
			f.From = append(f.From, label)
		}
	}
	if someoneUnnamed {
		on, all := evalOn(pkt.Src, 0, "")
		if all {
			f.Status = Open
			f.Except = exceptions(rs, pkt)
			p := pkt
			p.Dst = dsts[0]
			if len(ifaces) > 0 {
				p.InIface = ifaces[0]
			}
			if d, err := rs.Evaluate(p); err == nil && d.Chain == ruleset.Input && d.Index != 0 {
				upto := d.Index
				if upto < 0 {
					// The default accepts: every rule comes before it.
					upto = len(rs.Chain(ruleset.Input).Rules)
				}
				f.Except = append(f.Except, denyExceptions(rs, p, upto, ifaces)...)
			}
			return f
		}
		for _, i := range on {
			from("any on " + i)
		}
	}
	// Not open to anyone: try the sources and interfaces the accepting
	// rules name.
	for _, c := range candidates(rs, pkt, v6, cx.named[fi]) {
		on, all := evalOn(c.src, c.sport, c.iface)
		switch {
		case len(on) == 0:
		case all && c.iface == "":
			from(c.label)
		default:
			for _, i := range on {
				from(c.label + " on " + i)
			}
		}
	}
	if len(f.From) > 0 {
		f.Status = OpenSome
		return f
	}
	f.Status, f.AllowedBy, f.Unexplained, f.RateLimit = Closed, nil, false, ""
	return f
}

// martians are sources the kernel drops from the outside before any
// firewall rule (zero network, loopback, multicast, v4-mapped): never
// the outside's "anyone".
var martians = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"), netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("224.0.0.0/4"), netip.MustParsePrefix("255.255.255.255/32"),
	netip.MustParsePrefix("::/128"), netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("::ffff:0:0/96"), netip.MustParsePrefix("ff00::/8"),
}

// martian says whether every address of p is a martian source: no
// packet from outside comes from it.
func martian(p netip.Prefix) bool {
	for _, m := range martians {
		if m.Bits() <= p.Bits() && m.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// namedPrefixes are the networks of the family that rules' sources and
// sets name, and the martians, sorted.
func namedPrefixes(rs *ruleset.Ruleset, v6 bool) []netip.Prefix {
	var ps []netip.Prefix
	add := func(p netip.Prefix) {
		// A /0 names every source, which is naming none.
		if p.IsValid() && p.Addr().Is6() == v6 && p.Bits() > 0 {
			ps = append(ps, p.Masked())
		}
	}
	for _, p := range martians {
		add(p)
	}
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			for _, p := range r.Src {
				add(p)
			}
		}
	}
	for _, set := range rs.Sets {
		for _, e := range set.Entries {
			add(e.Prefix)
		}
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return ps
}

// firstGap is the lowest address of within that no prefix of named
// (sorted) narrower than within holds (false when they cover it all):
// with within the whole space, the lowest address no rule or set names.
func firstGap(named []netip.Prefix, within netip.Prefix) (netip.Addr, bool) {
	cur := within.Masked().Addr()
	// The prefixes inside within start at or after its first address.
	i, _ := slices.BinarySearchFunc(named, cur, func(p netip.Prefix, a netip.Addr) int { return p.Addr().Compare(a) })
	for _, p := range named[i:] {
		if !within.Contains(p.Addr()) {
			break
		}
		if p.Bits() <= within.Bits() && within.Bits() > 0 {
			continue
		}
		if cur.Less(p.Addr()) {
			return cur, true
		}
		next := lastAddr(p).Next()
		if !next.IsValid() || !within.Contains(next) {
			return netip.Addr{}, false // the rest is covered
		}
		if cur.Less(next) {
			cur = next
		}
	}
	return cur, true
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// allowedBy names the decision's policy line or built-in rule;
// unexplained when the default policy decided. A built-in rule (the DHCP
// replies a DHCP client needs, the only built-in that opens a socket's
// port to the outside) is moat's documented choice, as ufw's before.rules
// are, not an exposure nobody chose: counting it would make every DHCP
// client host exit 1.
func allowedBy(d ruleset.Decision) ([]string, bool) {
	if d.Origin.Line > 0 && !strings.HasPrefix(d.Origin.ID, "default:") {
		return []string{fmt.Sprintf("line %d: %s", d.Origin.Line, d.Origin.Text)}, false
	}
	if strings.HasPrefix(d.Origin.ID, "builtin:") {
		return []string{"built-in: " + d.Origin.Text}, false
	}
	return []string{d.Origin.Text}, true
}

type candidate struct {
	src   netip.Addr
	sport uint16 // 0: any
	iface string
	label string
}

// candidates are the sources the input chain's accepting rules for the
// packet's protocol and port name: their networks, the networks of
// their sets, and their interfaces (loopback excepted).
func candidates(rs *ruleset.Ruleset, pkt ruleset.Packet, v6 bool, named []netip.Prefix) []candidate {
	c := rs.Chain(ruleset.Input)
	if c == nil {
		return nil
	}
	var out []candidate
	for _, r := range c.Rules {
		if r.Verdict != ruleset.Accept || !protoMatch(r.Protos, pkt.Proto) || !r.DPorts.Contains(pkt.DPort) {
			continue
		}
		if r.InIface == "lo" || len(r.CTStates) > 0 && !slices.Contains(r.CTStates, ruleset.CTNew) {
			continue
		}
		iface := r.InIface
		// A rule for some source ports (the built-in DHCP replies, 67
		// to 68) lets anyone in from them.
		var sport uint16
		suffix := ""
		if len(r.SPorts) > 0 {
			sport = r.SPorts[0].First
			suffix = fmt.Sprintf(" from port %d", sport)
		}
		var prefixes []netip.Prefix
		prefixes = append(prefixes, r.Src...)
		if r.SrcSet != "" {
			if set := rs.Set(r.SrcSet); set != nil {
				for i, e := range set.Entries {
					if i == maxSetProbes {
						break
					}
					prefixes = append(prefixes, e.Prefix)
				}
			}
		}
		if len(prefixes) == 0 {
			if iface != "" || sport != 0 {
				out = append(out, candidate{src: pkt.Src, sport: sport, iface: iface, label: "any" + suffix})
			}
			continue
		}
		for _, p := range prefixes {
			if p.Addr().Is6() != v6 || martian(p) {
				continue
			}
			out = append(out, candidate{src: p.Addr(), sport: sport, iface: iface, label: p.Masked().String() + suffix})
			// A narrower network a rule names (a deny before) may hold
			// p's first address: try the first one none of them holds.
			if a, ok := firstGap(named, p); ok && a != p.Masked().Addr() {
				out = append(out, candidate{src: a, sport: sport, iface: iface, label: p.Masked().String() + suffix})
			}
		}
	}
	return out
}

// matching are the interfaces of ifaces a rule's interface (a trailing
// '+' matches a prefix) names; the name itself when none does.
func matching(ifaces []string, pattern string) []string {
	var out []string
	for _, i := range ifaces {
		if p, ok := strings.CutSuffix(pattern, "+"); ok && strings.HasPrefix(i, p) || i == pattern {
			out = append(out, i)
		}
	}
	if len(out) == 0 {
		out = []string{strings.TrimSuffix(pattern, "+")}
	}
	return out
}

func protoMatch(protos []string, proto string) bool {
	return len(protos) == 0 || slices.Contains(protos, proto)
}

// denyExceptions names the policy's lines before the accepting rule
// (input rules [0, upto)) that drop or reject some sources of the
// packet's family, protocol and port: 'open to anyone' then says which
// sources are not ("except line 4 (deny from 192.0.2.2 ...)"); it named
// only blocklists, and an admin who denied a source read that the port
// was open to it too.
func denyExceptions(rs *ruleset.Ruleset, pkt ruleset.Packet, upto int, ifaces []string) []string {
	c := rs.Chain(ruleset.Input)
	if c == nil || upto > len(c.Rules) {
		return nil
	}
	const most = 5
	var out []string
	lines := 0
	add := func(line int, text string) {
		if lines++; lines <= most {
			out = append(out, fmt.Sprintf("line %d (%s)", line, text))
		}
	}
	v6 := pkt.Src.Is6()
	for _, r := range c.Rules[:upto] {
		if (r.Verdict != ruleset.Drop && r.Verdict != ruleset.Reject) || r.Limit != nil || r.Trap != nil ||
			(len(r.Src) == 0 && r.SrcSet == "") || !protoMatch(r.Protos, pkt.Proto) || !r.DPorts.Contains(pkt.DPort) ||
			(r.Family == policy.FamilyV4 && v6) || (r.Family == policy.FamilyV6 && !v6) ||
			(len(r.CTStates) > 0 && !slices.Contains(r.CTStates, ruleset.CTNew)) {
			continue
		}
		if r.InIface != "" && !slices.ContainsFunc(ifaces, func(i string) bool { return slices.Contains(matching([]string{i}, r.InIface), i) }) {
			continue
		}
		if r.SrcSet == "" {
			if r.Origin.Line > 0 {
				add(r.Origin.Line, r.Origin.Text)
			}
			continue
		}
		set := rs.Set(r.SrcSet)
		if set == nil || set.Blocklist != "" || strings.HasPrefix(r.SrcSet, "ban") {
			continue // blocklists and bans: exceptions() names them
		}
		for _, e := range set.Entries {
			if e.Origin.Line > 0 && e.Prefix.Addr().Is6() == v6 {
				add(e.Origin.Line, e.Origin.Text)
			}
		}
	}
	if lines > most {
		out = append(out, fmt.Sprintf("%d more lines", lines-most))
	}
	return out
}

// exceptions names the blocklists and ban sets that drop some sources
// of the packet's protocol and port before they reach it.
func exceptions(rs *ruleset.Ruleset, pkt ruleset.Packet) []string {
	var out []string
	add := func(s string) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, h := range []ruleset.Hook{ruleset.Prerouting, ruleset.Input} {
		c := rs.Chain(h)
		if c == nil {
			continue
		}
		for _, r := range c.Rules {
			if (r.Verdict != ruleset.Drop && r.Verdict != ruleset.Reject) || r.SrcSet == "" ||
				!protoMatch(r.Protos, pkt.Proto) || !r.DPorts.Contains(pkt.DPort) {
				continue
			}
			set := rs.Set(r.SrcSet)
			switch {
			case set == nil:
			case len(set.Entries) == 0 || set.Family == policy.FamilyV4 && pkt.Src.Is6() || set.Family == policy.FamilyV6 && pkt.Src.Is4():
				// Drops no source of this family.
			case set.Blocklist != "":
				add("blocklist " + set.Blocklist)
			}
		}
	}
	return out
}

// UnusedAllows lists the input rules of the policy's lines that accept
// new connections to TCP or UDP ports on which nothing listens (loopback
// listeners do not count: the rule is for the outside).
func UnusedAllows(socks []Socket, rs *ruleset.Ruleset) []UnusedAllow {
	if rs == nil {
		return nil
	}
	c := rs.Chain(ruleset.Input)
	if c == nil {
		return nil
	}
	var out []UnusedAllow
	seen := map[string]bool{}
	for _, r := range c.Rules {
		if r.Verdict != ruleset.Accept || r.Origin.Line == 0 || len(r.DPorts) == 0 || r.InIface == "lo" {
			continue
		}
		protos := r.Protos
		if len(protos) == 0 {
			protos = []string{"tcp", "udp"}
		}
		for _, proto := range protos {
			if proto != "tcp" && proto != "udp" {
				continue
			}
			if listened(socks, proto, r.DPorts, r.Family) {
				continue
			}
			key := fmt.Sprintf("%d/%s/%s", r.Origin.Line, proto, r.DPorts)
			if seen[key] {
				continue
			}
			seen[key] = true
			out = append(out, UnusedAllow{Line: r.Origin.Line, Rule: r.Origin.Text, Proto: proto, Ports: r.DPorts.String()})
		}
	}
	return out
}

func listened(socks []Socket, proto string, ports policy.Ports, fam policy.Family) bool {
	for _, s := range socks {
		if s.Proto != proto || s.Local.Addr().Unmap().IsLoopback() || !ports.Contains(s.Local.Port()) {
			continue
		}
		switch fam {
		case policy.FamilyV4:
			if !s.V4 {
				continue
			}
		case policy.FamilyV6:
			if !s.V6 {
				continue
			}
		}
		return true
	}
	return false
}
