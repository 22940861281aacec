package foreign

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Bypasses: with moat's iptables backend, iptables' ACCEPT ends the
// packet's walk through the built-in chain that holds it, so a rule ahead
// of moat's jump in that chain that accepts a packet lets it past moat
// entirely (moat keeps foreign rules ahead of its jump on purpose:
// fail2ban's "-I INPUT 1 -j f2b-sshd" relies on it). A jump ahead of
// moat's to another chain that holds an ACCEPT may do the same. On
// nftables an accept ends one base chain only: moat's table still sees
// the packet, so no other table's rule bypasses moat there.

// Packet is what a bypass is judged against: unknown fields (a zero
// address, port 0, an empty interface, FamilyUnknown) are ones the
// rule's conditions on them may or may not match.
type Packet struct {
	Proto             string // "tcp", "udp", "icmp", "ipv6-icmp", ...
	Src, Dst          netip.Addr
	SPort, DPort      uint16
	InIface, OutIface string
	State             string // "new" (or ""), "established", "related", "invalid"
	Chain             string // "input", "output", "forward" or "prerouting"
	V6, FamilyUnknown bool
}

// Match is whether a rule matches a packet: No, Maybe (a condition
// cannot be evaluated) or Yes.
type Match int

// The answers of Finding.Accepts.
const (
	No Match = iota
	Maybe
	Yes
)

func and(a, b Match) Match { return min(a, b) }

// xrule is one rule of iptables-save, its conditions read.
type xrule struct {
	text   string
	target string
	conds  []func(Packet) Match
	opaque bool // a condition not understood: Maybe at best
}

// Accepts says whether the packet is accepted ahead of moat's jump by the
// rules of this finding (a bypass finding; No for the others): Yes only
// for an ACCEPT rule of the built-in chain itself whose every condition
// matches, Maybe when a condition cannot be evaluated or the accept is in
// a chain jumped to (whose other rules may return or drop first).
func (f Finding) Accepts(p Packet) Match {
	if f.Bypass == "" || !slices.Contains(f.Hooks, p.Chain) || !p.FamilyUnknown && !f.SeesFamily(p.V6) {
		return No
	}
	best := No
	for _, path := range f.paths {
		m := Yes
		for _, r := range path {
			m = and(m, r.match(p))
		}
		if len(path) > 1 {
			m = and(m, Maybe)
		}
		best = max(best, m)
	}
	if p.FamilyUnknown && (f.SeesFamily(true) != f.SeesFamily(false)) {
		best = min(best, Maybe) // the packet may be of the other family
	}
	return best
}

func (r *xrule) match(p Packet) Match {
	m := Yes
	if r.opaque {
		m = Maybe
	}
	for _, c := range r.conds {
		m = and(m, c(p))
	}
	return m
}

// splitRule splits a rule of iptables-save into words, reading its
// double quotes (a comment's text) as iptables-save writes them.
func splitRule(line string) []string {
	var out []string
	var cur strings.Builder
	in, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quoted, in = !quoted, true
		case !quoted && (c == ' ' || c == '\t'):
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// parseRule reads "-A CHAIN ..." words into a rule.
func parseRule(words []string, text string) *xrule {
	r := &xrule{text: text}
	neg := false
	add := func(c func(Packet) Match) {
		if neg {
			inner := c
			c = func(p Packet) Match { return Yes - inner(p) }
		}
		r.conds = append(r.conds, c)
		neg = false
	}
	for i := 2; i < len(words); i++ {
		w := words[i]
		val := ""
		if i+1 < len(words) {
			val = words[i+1]
		}
		switch w {
		case "!":
			neg = true
			continue
		case "-j", "-g":
			r.target = val
			i++
			// Target options (--reject-with, --log-prefix, ...) follow.
			for i+1 < len(words) && strings.HasPrefix(words[i+1], "--") {
				i += 2
			}
		case "-m":
			i++
			switch val {
			case "tcp", "udp", "multiport", "comment", "conntrack", "state", "icmp", "icmp6":
			default:
				r.opaque = true
			}
		case "--comment":
			i++
		case "-p":
			i++
			proto := strings.ToLower(val)
			add(func(p Packet) Match {
				switch {
				case proto == "all":
					return Yes
				case p.Proto == "":
					return Maybe
				case proto == p.Proto, proto == "icmpv6" && p.Proto == "ipv6-icmp", proto == "ipv6-icmp" && p.Proto == "icmp6":
					return Yes
				}
				return No
			})
		case "-s", "-d":
			i++
			pfx, err := parsePrefix(val)
			if err != nil {
				r.opaque = true
				neg = false
				continue
			}
			src := w == "-s"
			add(func(p Packet) Match {
				a := p.Dst
				if src {
					a = p.Src
				}
				if !a.IsValid() || a.IsUnspecified() || a.Is6() != pfx.Addr().Is6() {
					return Maybe
				}
				if pfx.Contains(a.Unmap()) {
					return Yes
				}
				return No
			})
		case "-i", "-o":
			i++
			name, in := val, w == "-i"
			add(func(p Packet) Match {
				iface := p.OutIface
				if in {
					iface = p.InIface
				}
				if iface == "" {
					return Maybe
				}
				if prefix, ok := strings.CutSuffix(name, "+"); ok && strings.HasPrefix(iface, prefix) || iface == name {
					return Yes
				}
				return No
			})
		case "--dport", "--sport", "--dports", "--sports", "--destination-port", "--source-port", "--destination-ports", "--source-ports":
			i++
			ranges, ok := parsePorts(val)
			if !ok {
				r.opaque = true
				neg = false
				continue
			}
			dst := strings.HasPrefix(w, "--d")
			add(func(p Packet) Match {
				port := p.SPort
				if dst {
					port = p.DPort
				}
				if port == 0 {
					return Maybe
				}
				for _, rg := range ranges {
					if port >= rg[0] && port <= rg[1] {
						return Yes
					}
				}
				return No
			})
		case "--ctstate", "--state":
			i++
			states := strings.Split(strings.ToLower(val), ",")
			add(func(p Packet) Match {
				st := p.State
				if st == "" {
					st = "new"
				}
				if slices.Contains(states, st) {
					return Yes
				}
				return No
			})
		default:
			r.opaque = true
			if i+1 < len(words) && !strings.HasPrefix(words[i+1], "-") && words[i+1] != "!" {
				i++
			}
		}
		neg = false
	}
	return r
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parsePorts reads "80", "1000:2000" or multiport's "80,443,1000:2000".
func parsePorts(s string) ([][2]uint16, bool) {
	var out [][2]uint16
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		if !isRange {
			hi = lo
		}
		a, err1 := strconv.ParseUint(lo, 10, 16)
		b, err2 := strconv.ParseUint(hi, 10, 16)
		if lo == "" && isRange {
			a, err1 = 0, nil
		}
		if hi == "" && isRange {
			b, err2 = 65535, nil
		}
		if err1 != nil || err2 != nil || a > b {
			return nil, false
		}
		out = append(out, [2]uint16{uint16(a), uint16(b)})
	}
	return out, len(out) > 0
}

// onlyEstablished: the rule matches established or related packets alone,
// which moat's jumps let through too (they send new packets to moat).
func (r *xrule) onlyEstablished() bool {
	for _, st := range []string{"new", "invalid", "untracked"} {
		if r.match(Packet{State: st}) != No {
			return false
		}
	}
	return true
}

// bypasses finds, in one table of iptables-save (rules: chain → its
// rules' words and text), the rules of each built-in chain that holds
// moat's jump that are ahead of it and accept, or jump to a chain that
// may accept.
func bypasses(tool, table string, rules map[string][]*xrule) []Finding {
	var out []Finding
	for _, builtin := range moatJumps[table] {
		jump := slices.IndexFunc(rules[builtin], func(r *xrule) bool { return r.target == "MOAT-"+builtin })
		if jump < 0 {
			continue // no jump: drift reports it
		}
		var paths [][]*xrule
		var texts, accepts, jumps []string
		kind := ""
		for _, r := range rules[builtin][:jump] {
			if r.onlyEstablished() || (builtin == "INPUT" || builtin == "PREROUTING") && r.loopback(true) || builtin == "OUTPUT" && r.loopback(false) {
				continue // moat accepts these too
			}
			switch {
			case r.target == "ACCEPT":
				paths = append(paths, []*xrule{r})
				accepts, kind = append(accepts, r.text), "accept"
				texts = append(texts, r.text)
			case r.target != "" && !moatChain(table, r.target) && rules[r.target] != nil:
				sub := acceptPaths(rules, table, r.target, map[string]bool{builtin: true})
				for _, s := range sub {
					paths = append(paths, append([]*xrule{r}, s...))
				}
				if len(sub) > 0 {
					jumps = append(jumps, r.text)
					texts = append(texts, r.text)
					if kind == "" {
						kind = "may accept"
					}
				}
			}
		}
		if len(paths) == 0 {
			continue
		}
		var parts []string
		if len(accepts) > 0 {
			parts = append(parts, fmt.Sprintf("%s ahead of moat's jump accepting packets moat would refuse (%s)", count(len(accepts), "rule"), strings.Join(accepts, "; ")))
		}
		if len(jumps) > 0 {
			parts = append(parts, fmt.Sprintf("%s ahead of moat's jump to chains that accept: may bypass moat (%s)", count(len(jumps), "rule"), strings.Join(jumps, "; ")))
		}
		what := strings.Join(parts, "; ")
		out = append(out, Finding{Tool: owner(firstTarget(texts)), Where: fmt.Sprintf("%s %s chain %s", tool, table, builtin), What: what,
			Hooks: []string{builtinHook[builtin]}, Bypass: kind, Rules: texts, paths: paths})
	}
	return out
}

func firstTarget(texts []string) string {
	if len(texts) == 0 {
		return ""
	}
	w := splitRule(texts[0])
	for i := range w {
		if (w[i] == "-j" || w[i] == "-g") && i+1 < len(w) {
			return w[i+1]
		}
	}
	return ""
}

// loopback: the rule matches packets in on lo (out on lo: !in) alone,
// which moat accepts too.
func (r *xrule) loopback(in bool) bool {
	lo, other := Packet{InIface: "lo"}, Packet{InIface: "moat-not-lo"}
	if !in {
		lo, other = Packet{OutIface: "lo"}, Packet{OutIface: "moat-not-lo"}
	}
	return r.match(lo) != No && r.match(other) == No
}

// acceptPaths are the ACCEPT rules reachable from chain, each with the
// jumps that lead to it.
func acceptPaths(rules map[string][]*xrule, table, chain string, seen map[string]bool) [][]*xrule {
	if seen[chain] {
		return nil
	}
	seen[chain] = true
	var out [][]*xrule
	for _, r := range rules[chain] {
		switch {
		case r.target == "ACCEPT":
			out = append(out, []*xrule{r})
		case rules[r.target] != nil && !moatChain(table, r.target):
			for _, sub := range acceptPaths(rules, table, r.target, seen) {
				out = append(out, append([]*xrule{r}, sub...))
			}
		}
	}
	return out
}
