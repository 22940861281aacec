package safeapply

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// minLimitBurst: a limit that lets a source open fewer new connections at
// once than this would refuse an admin who reconnects and copies a file.
const minLimitBurst = 3

// Problem is a session the new ruleset would cut.
type Problem struct {
	Session  Session
	Decision ruleset.Decision
	Why      string
	Fixes    []string // moat commands that would keep the session
}

// IfaceFor names the interface packets from addr arrive on (the route back
// to it), so rules with 'in on IFACE' are judged right. A scoped address
// (fe80::1%eth1) names its interface itself: for link-local addresses the
// routing table cannot tell, every interface has a route to fe80::/64.
func IfaceFor(addr netip.Addr) string {
	if addr.Zone() != "" {
		return addr.Zone()
	}
	routes, err := netlink.RouteGet(net.IP(addr.AsSlice()))
	if err != nil || len(routes) == 0 {
		return ""
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return ""
	}
	return l.Attrs().Name
}

// newConnection is the packet that opens a session again from source port
// sport: what the policy must accept for the admin to reconnect. (The live
// flow itself rides on conntrack's established state, but the next one
// must be let in.)
func newConnection(s Session, iface string, sport uint16) ruleset.Packet {
	return ruleset.Packet{Hook: ruleset.Input, Proto: "tcp", Src: s.Client.Addr().WithZone(""), Dst: s.Server.Addr().WithZone(""),
		SPort: sport, DPort: s.Server.Port(), CTState: ruleset.CTNew, InIface: iface}
}

// sourcePorts are the source ports to try for a reconnect of s: the first
// of each stretch of its reconnect ranges that the input rules' source
// port matches treat alike, and the session's own port. Trying these is
// the same as trying every port of the ranges.
func sourcePorts(rs *ruleset.Ruleset, s Session, iface string) []uint16 {
	seen := map[uint16]bool{}
	var out []uint16
	add := func(p int, r policy.PortRange) {
		if p >= int(r.First) && p <= int(r.Last) && !seen[uint16(p)] {
			seen[uint16(p)] = true
			out = append(out, uint16(p))
		}
	}
	add(int(s.Client.Port()), policy.PortRange{First: 0, Last: 65535})
	// Only rules that could match the reconnect but for its source port
	// split the ranges: a policy with many source-port rules for other
	// traffic does not multiply the evaluations.
	var edges []policy.PortRange
	if c := rs.Chain(ruleset.Input); c != nil {
		pkt := newConnection(s, iface, 0)
		for i := range c.Rules {
			if len(c.Rules[i].SPorts) > 0 && mayMatch(&c.Rules[i].Match, pkt) {
				edges = append(edges, c.Rules[i].SPorts...)
			}
		}
	}
	// Each stretch starts at a range's first port or where a rule's
	// source ports start or end; its first port stands for all of it.
	for _, r := range s.ReconnectPorts {
		add(int(r.First), r)
		for _, e := range edges {
			add(int(e.First), r)
			add(int(e.Last)+1, r)
		}
	}
	// The session's own port first, then the lowest port that is cut.
	slices.Sort(out[1:])
	return out
}

// mayMatch reports whether m could match p whatever p's source port: it
// errs on the side of yes (address sets, for instance, are not looked up).
func mayMatch(m *ruleset.Match, p ruleset.Packet) bool {
	if m.Family != "" && m.Family != policy.FamilyAny && m.Family != p.Family() {
		return false
	}
	if m.InIface != "" && p.InIface != "" {
		if prefix, wild := strings.CutSuffix(m.InIface, "+"); (wild && !strings.HasPrefix(p.InIface, prefix)) || (!wild && m.InIface != p.InIface) {
			return false
		}
	}
	if len(m.Protos) > 0 && !slices.Contains(m.Protos, p.Proto) {
		return false
	}
	if len(m.CTStates) > 0 && !slices.Contains(m.CTStates, p.CTState) {
		return false
	}
	in := func(ps []netip.Prefix, a netip.Addr) bool {
		if len(ps) == 0 {
			return true
		}
		for _, q := range ps {
			if q.Contains(a) {
				return true
			}
		}
		return false
	}
	return in(m.Src, p.Src) && in(m.Dst, p.Dst) && m.DPorts.Contains(p.DPort)
}

// CheckSessions evaluates a reconnect of every session under the new
// ruleset, from every source port the client may use (Session.
// ReconnectPorts) and on the interface the session runs over (Session.
// Iface, else ifaceFor, which may be nil).
func CheckSessions(rs *ruleset.Ruleset, p *policy.Policy, sessions []Session, ifaceFor func(netip.Addr) string) []Problem {
	var problems []Problem
	for _, s := range sessions {
		iface := s.Iface
		if iface == "" && ifaceFor != nil {
			iface = ifaceFor(s.Client.Addr())
		}
		// The input rules that could decide a reconnect of s, in order:
		// the others cannot match it from any port, so leaving them out
		// changes no first match and makes each evaluation cheaper.
		small, index := relevantRules(rs, newConnection(s, iface, 0))
		for _, sport := range sourcePorts(small, s, iface) {
			d, err := small.Evaluate(newConnection(s, iface, sport))
			if err != nil {
				continue
			}
			if d.Index >= 0 && d.Chain == ruleset.Input {
				d.Index = index[d.Index]
			}
			from := ""
			if sport != s.Client.Port() {
				from = fmt.Sprintf("a reconnect from source port %d ", sport)
			}
			var why string
			switch {
			case d.Verdict != ruleset.Accept:
				why = fmt.Sprintf("%swould be %s by %s", from, verdictWord(d.Verdict), originText(d.Origin))
			case d.Limit != nil && d.Limit.Burst < minLimitBurst:
				why = fmt.Sprintf("%sis rate-limited by %s to %d new connections at once (a reconnect and a file copy need %d)",
					from, originText(d.Origin), d.Limit.Burst, minLimitBurst)
			default:
				continue
			}
			if iface != "" && ruleUsesIface(rs, d) {
				why += fmt.Sprintf(" (it comes in on %s)", iface)
			}
			problems = append(problems, Problem{Session: s, Decision: d, Why: why, Fixes: fixes(p, s, d)})
			break
		}
	}
	return problems
}

// relevantRules returns rs with an input chain of only the rules that may
// match p whatever its source port (mayMatch), and the index in rs of each.
func relevantRules(rs *ruleset.Ruleset, p ruleset.Packet) (*ruleset.Ruleset, []int) {
	small := *rs
	small.Chains = make([]*ruleset.Chain, len(rs.Chains))
	var index []int
	for i, c := range rs.Chains {
		small.Chains[i] = c
		if c.Hook != ruleset.Input {
			continue
		}
		in := *c
		in.Rules = nil
		for j := range c.Rules {
			if mayMatch(&c.Rules[j].Match, p) {
				in.Rules = append(in.Rules, c.Rules[j])
				index = append(index, j)
			}
		}
		small.Chains[i] = &in
	}
	return &small, index
}

// ruleUsesIface reports whether the deciding rule names an interface.
func ruleUsesIface(rs *ruleset.Ruleset, d ruleset.Decision) bool {
	c := rs.Chain(d.Chain)
	return c != nil && d.Index >= 0 && d.Index < len(c.Rules) && c.Rules[d.Index].InIface != ""
}

func verdictWord(v ruleset.Verdict) string {
	switch v {
	case ruleset.Drop:
		return "dropped"
	case ruleset.Reject:
		return "rejected"
	}
	return string(v)
}

func originText(o ruleset.Origin) string {
	if o.Line > 0 {
		return fmt.Sprintf("line %d: %s", o.Line, o.Text)
	}
	return o.Text
}

// fixes proposes rules that keep the session: an allow placed before the
// rule that cuts it (or at the end, when a default cuts it).
func fixes(p *policy.Policy, s Session, d ruleset.Decision) []string {
	port := s.Server.Port()
	// An IPv6 client's address changes within its /64 (privacy
	// addresses rotate daily): a rule for the /128 would keep this
	// session and lock out tomorrow's.
	from := s.Client.Addr().WithZone("").String()
	if a := s.Client.Addr().WithZone(""); a.Is6() && !a.IsLinkLocalUnicast() {
		from = netip.PrefixFrom(a, 64).Masked().String()
	}
	narrow := fmt.Sprintf("allow proto tcp from %s to any port %d", from, port)
	wide := fmt.Sprintf("allow %d/tcp", port)
	pos := 0
	if d.Origin.Line > 0 {
		num, lastLine := 0, -1
		for _, r := range p.RuleSeq() {
			if r.Pos.Line != lastLine {
				num, lastLine = num+1, r.Pos.Line
			}
			if r.Pos.Line == d.Origin.Line {
				pos = num
				break
			}
		}
	}
	if pos > 0 {
		return []string{fmt.Sprintf("moat insert %d %s", pos, narrow), fmt.Sprintf("moat insert %d %s", pos, wide)}
	}
	return []string{"moat " + wide, "moat " + narrow}
}

// LockoutError is returned when a change would cut an SSH session.
type LockoutError struct {
	Problems []Problem
	// Unknown, when set, says the live SSH sessions could not be
	// determined, so the change could not be checked (fail closed).
	Unknown error
}

func (e *LockoutError) Error() string {
	var b strings.Builder
	if e.Unknown != nil {
		fmt.Fprintf(&b, "refusing to apply: cannot tell which SSH sessions are live, so cannot check that the change keeps them: %v\n", e.Unknown)
		b.WriteString("  (--force applies anyway; with --confirm 60s it is rolled back unless confirmed)")
		return b.String()
	}
	b.WriteString("refusing to apply: it would cut your SSH access\n")
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "  session %s\n    %s\n", p.Session, p.Why)
		if len(p.Fixes) > 0 {
			fmt.Fprintf(&b, "    to keep it, first run: %s\n", p.Fixes[0])
			for _, f := range p.Fixes[1:] {
				fmt.Fprintf(&b, "                       or: %s\n", f)
			}
		}
	}
	b.WriteString("  (--force applies anyway; with --confirm 60s it is rolled back unless confirmed)")
	return b.String()
}

// PortWarnings reports sshd ports that a new connection from anywhere could
// no longer reach (when no session is there to protect, moat warns instead
// of refusing: the admin may be on the console).
func PortWarnings(rs *ruleset.Ruleset, st SSHState) []string {
	var out []string
	for _, l := range st.Listen {
		dst := l.Addr()
		src := netip.MustParseAddr("203.0.113.1")
		if dst.Is6() {
			src = netip.MustParseAddr("2001:db8::1")
		}
		if dst.IsLoopback() {
			continue // loopback is always accepted
		}
		s := Session{Client: netip.AddrPortFrom(src, 40000), Server: l, ReconnectPorts: st.ReconnectPorts}
		for _, sport := range sourcePorts(rs, s, "") {
			d, err := rs.Evaluate(newConnection(s, "", sport))
			if err == nil && d.Verdict != ruleset.Accept {
				from := ""
				if sport != 40000 {
					from = fmt.Sprintf(" from source port %d", sport)
				}
				out = append(out, fmt.Sprintf("new SSH connections to port %d%s would be %s by %s", l.Port(), from, verdictWord(d.Verdict), originText(d.Origin)))
				break
			}
		}
	}
	return dedupe(out)
}

// OutgoingSSHWarnings names the SSH connections this host opened (a
// reverse tunnel, ssh -R, that the admin may come in through) that the new
// rules would not let it open again: the live one rides on conntrack, but
// once it drops, the tunnel and the way in are gone. ifaceFor (may be
// nil) names the interface towards an address.
func OutgoingSSHWarnings(rs *ruleset.Ruleset, conns []OutgoingSSH, ifaceFor func(netip.Addr) string) []string {
	var out []string
	for _, c := range conns {
		iface := ""
		if ifaceFor != nil {
			iface = ifaceFor(c.Remote.Addr())
		}
		d, err := rs.Evaluate(ruleset.Packet{Hook: ruleset.Output, Proto: "tcp", Src: c.Local.Addr().WithZone(""), Dst: c.Remote.Addr().WithZone(""),
			SPort: c.Local.Port(), DPort: c.Remote.Port(), CTState: ruleset.CTNew, OutIface: iface})
		if err != nil || d.Verdict == ruleset.Accept {
			continue
		}
		out = append(out, fmt.Sprintf("this host's SSH connection to %s (ssh: a reverse tunnel you come in through?) could not be opened again: it would be %s by %s; add 'moat allow out to %s port %d proto tcp'",
			c.Remote, verdictWord(d.Verdict), originText(d.Origin), c.Remote.Addr().WithZone(""), c.Remote.Port()))
	}
	return dedupe(out)
}

// OutgoingWarnings tells what a restrictive outgoing policy breaks: DNS to
// the resolvers in resolvConf, and NTP.
func OutgoingWarnings(rs *ruleset.Ruleset, resolvConf string) []string {
	var out []string
	var servers []netip.Addr
	if data, err := os.ReadFile(resolvConf); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "nameserver" {
				if a, err := netip.ParseAddr(f[1]); err == nil && !a.IsLoopback() {
					servers = append(servers, a.WithZone(""))
				}
			}
		}
	}
	if len(servers) == 0 {
		servers = []netip.Addr{netip.MustParseAddr("192.0.2.53")} // any resolver
	}
	for _, ns := range servers {
		for _, proto := range []string{"udp", "tcp"} {
			d, err := rs.Evaluate(ruleset.Packet{Hook: ruleset.Output, Proto: proto, Src: unspecified(ns), Dst: ns, SPort: 40000, DPort: 53, CTState: ruleset.CTNew})
			if err == nil && d.Verdict != ruleset.Accept {
				out = append(out, fmt.Sprintf("DNS (%s to %s port 53) would be %s by %s: add 'moat allow out 53'", proto, ns, verdictWord(d.Verdict), originText(d.Origin)))
			}
		}
	}
	d, err := rs.Evaluate(ruleset.Packet{Hook: ruleset.Output, Proto: "udp", Src: netip.IPv4Unspecified(), Dst: netip.MustParseAddr("192.0.2.123"), SPort: 123, DPort: 123, CTState: ruleset.CTNew})
	if err == nil && d.Verdict != ruleset.Accept {
		out = append(out, fmt.Sprintf("NTP (udp port 123) would be %s by %s: add 'moat allow out 123/udp'", verdictWord(d.Verdict), originText(d.Origin)))
	}
	return dedupe(out)
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
