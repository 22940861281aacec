package xtenc

import (
	"encoding/binary"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// match is one -m (or implicit) match of a line and its options.
type match struct {
	kind string
	seen opts

	// tcp, udp: ports as [first, last]; multiport: the list.
	spts, dpts       [2]uint16
	hasSpt, hasDpt   bool
	mpFlags          uint8 // multiport: XT_MULTIPORT_SOURCE, _DESTINATION
	mpPorts          [][2]uint16
	icmpType         uint8
	ctStates         uint16
	ctInv            bool
	setName, setDirs string
	setInv           bool
	setIndex         uint16
	atSrc, atDst     uint16
	atFlags          uint32
	hl               uint8
	limRate          string
	limBurst         uint32
	hlAbove          string
	hlBurst          uint64
	hlName           string
	hlExpire         uint32
	hlMode           string
}

var matchOptions = map[string][]string{
	"comment":   {"--comment"},
	"conntrack": {"--ctstate"},
	"set":       {"--match-set"},
	"addrtype":  {"--src-type", "--dst-type"},
	"hl":        {"--hl-eq"},
	"multiport": {"--sports", "--dports"},
	"limit":     {"--limit", "--limit-burst"},
	"hashlimit": {"--hashlimit-above", "--hashlimit-burst", "--hashlimit-mode", "--hashlimit-name", "--hashlimit-htable-expire"},
	"tcp":       {"--sport", "--dport"},
	"udp":       {"--sport", "--dport"},
	"icmp":      {"--icmp-type"},
	"icmp6":     {"--icmpv6-type"},
}

func (m *match) owns(opt string) bool { return slices.Contains(matchOptions[m.kind], opt) }

func implicitOwns(kind, opt string) bool { return slices.Contains(matchOptions[kind], opt) }

// abbreviates: opt is a shortening of an option of a loaded match, which
// iptables' getopt_long takes as that option (--dport after -m
// multiport is its --dports).
func (r *rule) abbreviates(opt string) bool {
	for _, m := range r.matches {
		if m.owns(opt) {
			return false
		}
	}
	for _, m := range r.matches {
		for _, o := range matchOptions[m.kind] {
			if o != opt && strings.HasPrefix(o, opt) {
				return true
			}
		}
	}
	return false
}

// implicit is the match iptables loads for -p's protocol.
func (r *rule) implicit() string {
	if !r.hasL4 {
		return ""
	}
	switch r.l4Name {
	case "tcp", "udp", "icmp":
		return r.l4Name
	case "ipv6-icmp":
		return "icmp6"
	}
	return ""
}

func (r *rule) newMatch(name string) (*match, error) {
	switch name {
	case "comment", "conntrack", "set", "addrtype", "limit", "hashlimit":
	case "multiport":
		if r.l4Name != "tcp" && r.l4Name != "udp" {
			return nil, unsupported("multiport without -p tcp or udp before it")
		}
	case "hl":
		if r.fam != unix.NFPROTO_IPV6 {
			return nil, unsupported("-m hl in IPv4")
		}
	default:
		return nil, unsupported("match %q", name)
	}
	return &match{kind: name}, nil
}

func parsePort(s string) (uint16, bool) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != s {
		return 0, false
	}
	return uint16(n), true
}

func parsePortRange(s string) ([2]uint16, bool) {
	a, b, isRange := strings.Cut(s, ":")
	lo, ok := parsePort(a)
	if !ok {
		return [2]uint16{}, false
	}
	if !isRange {
		return [2]uint16{lo, lo}, true
	}
	hi, ok := parsePort(b)
	if !ok || hi <= lo {
		return [2]uint16{}, false
	}
	return [2]uint16{lo, hi}, true
}

func parseUint(s string, bits int) (uint64, bool) {
	n, err := strconv.ParseUint(s, 10, bits)
	if err != nil || strconv.FormatUint(n, 10) != s {
		return 0, false
	}
	return n, true
}

// parseBurst reads a --limit-burst or --hashlimit-burst: a number from 1
// to 10000 (the most iptables takes), written as iptables-save writes it.
func parseBurst(s string) (uint32, bool) {
	n, ok := parseUint(s, 32)
	if !ok || n == 0 || n > 10000 {
		return 0, false
	}
	return uint32(n), true
}

var ctStateBits = map[string]uint16{"INVALID": 1 << 0, "ESTABLISHED": 1 << 1, "RELATED": 1 << 2, "NEW": 1 << 3, "SNAT": 1 << 6, "DNAT": 1 << 7, "UNTRACKED": 1 << 8}

var addrTypes = map[string]uint16{"UNSPEC": 1 << 0, "UNICAST": 1 << 1, "LOCAL": 1 << 2, "BROADCAST": 1 << 3, "ANYCAST": 1 << 4, "MULTICAST": 1 << 5, "BLACKHOLE": 1 << 6, "UNREACHABLE": 1 << 7, "PROHIBIT": 1 << 8, "THROW": 1 << 9, "NAT": 1 << 10, "XRESOLVE": 1 << 11}

func (m *match) option(r *rule, opt string, inv bool, val func() (string, error), sets SetIndex) error {
	if m.seen.has(opt) {
		return unsupported("%s twice in one match", opt)
	}
	m.seen = append(m.seen, opt)
	invertible := opt == "--ctstate" || opt == "--match-set" || opt == "--src-type" || opt == "--dst-type"
	if inv && !invertible {
		return unsupported("'!' before %s", opt)
	}
	v, err := val()
	if err != nil {
		return err
	}
	switch opt {
	case "--comment":
		*r.comment = v
		r.commentDone = true
	case "--sport", "--dport":
		p, ok := parsePortRange(v)
		if !ok {
			return unsupported("port %q", v)
		}
		if opt == "--sport" {
			m.spts, m.hasSpt = p, true
		} else {
			m.dpts, m.hasDpt = p, true
		}
	case "--sports", "--dports":
		if len(m.seen) > 1 {
			return unsupported("multiport with two options")
		}
		m.mpFlags = 0 // XT_MULTIPORT_SOURCE
		if opt == "--dports" {
			m.mpFlags = 1
		}
		n := 0
		for _, s := range strings.Split(v, ",") {
			p, ok := parsePortRange(s)
			if !ok {
				return unsupported("port %q", s)
			}
			m.mpPorts = append(m.mpPorts, p)
			n++
			if p[0] != p[1] {
				n++
			}
		}
		if n > 15 { // XT_MULTI_PORTS
			return unsupported("%d ports in multiport", n)
		}
	case "--icmp-type", "--icmpv6-type":
		n, ok := parseUint(v, 8)
		if !ok || n == 255 {
			return unsupported("ICMP type %q", v)
		}
		m.icmpType = uint8(n)
	case "--ctstate":
		for _, s := range strings.Split(v, ",") {
			b, ok := ctStateBits[s]
			if !ok {
				return unsupported("conntrack state %q", s)
			}
			m.ctStates |= b
		}
		m.ctInv = inv
	case "--match-set":
		if len(v) > maxSetName || !validName(v) {
			return unsupported("set name %q", v)
		}
		dirs, err := val()
		if err != nil {
			return err
		}
		if dirs != "src" && dirs != "dst" && dirs != "src,dst" && dirs != "dst,src" && dirs != "src,src" && dirs != "dst,dst" {
			return unsupported("set directions %q", dirs)
		}
		if sets == nil {
			return unsupported("a set and no SetIndex")
		}
		idx, err := sets(v, r.fam)
		if err != nil {
			return err
		}
		m.setName, m.setDirs, m.setInv, m.setIndex = v, dirs, inv, idx
	case "--src-type", "--dst-type":
		t, ok := addrTypes[v]
		if !ok {
			return unsupported("address type %q", v)
		}
		if opt == "--src-type" {
			m.atSrc = t
			if inv {
				m.atFlags |= 1
			}
		} else {
			m.atDst = t
			if inv {
				m.atFlags |= 2
			}
		}
	case "--hl-eq":
		n, ok := parseUint(v, 8)
		if !ok {
			return unsupported("hop limit %q", v)
		}
		m.hl = uint8(n)
	case "--limit":
		m.limRate = v
	case "--limit-burst":
		n, ok := parseBurst(v)
		if !ok {
			return unsupported("limit burst %q", v)
		}
		m.limBurst = n
	case "--hashlimit-above":
		m.hlAbove = v
	case "--hashlimit-burst":
		n, ok := parseBurst(v)
		if !ok {
			return unsupported("hashlimit burst %q", v)
		}
		m.hlBurst = uint64(n)
	case "--hashlimit-mode":
		if v != "srcip" {
			return unsupported("hashlimit mode %q", v)
		}
		m.hlMode = v
	case "--hashlimit-name":
		if len(v) > maxHashlimitName || !validName(v) {
			return unsupported("hashlimit name %q", v)
		}
		m.hlName = v
	case "--hashlimit-htable-expire":
		n, ok := parseUint(v, 32)
		if !ok || n == 0 {
			return unsupported("hashlimit expire %q", v)
		}
		m.hlExpire = uint32(n)
	default:
		return unsupported("option %s", opt)
	}
	return nil
}

// maxHashlimitName: the name is the file of the table in
// /proc/net/ipt_hashlimit; moat's are short.
const maxHashlimitName = 64

// opts are the options given, in order.
type opts []string

func (o opts) has(opt string) bool { return slices.Contains(o, opt) }

// needOptions are the options a match must have.
var needOptions = map[string][]string{
	"comment":   {"--comment"},
	"conntrack": {"--ctstate"},
	"set":       {"--match-set"},
	"hl":        {"--hl-eq"},
	"limit":     {"--limit"},
	"hashlimit": {"--hashlimit-above", "--hashlimit-burst", "--hashlimit-mode", "--hashlimit-name", "--hashlimit-htable-expire"},
	"icmp":      {"--icmp-type"},
	"icmp6":     {"--icmpv6-type"},
}

// finish checks a match has what it needs.
func (m *match) finish() error {
	for _, o := range needOptions[m.kind] {
		if !m.seen.has(o) {
			return unsupported("-m %s without %s", m.kind, o)
		}
	}
	if len(m.seen) == 0 {
		return unsupported("-m %s without options", m.kind)
	}
	switch m.kind {
	case "limit":
		if !m.seen.has("--limit-burst") {
			m.limBurst = 5 // XT_LIMIT_BURST
		}
		// libxt_limit: XT_LIMIT_SCALE times the seconds per packet, in
		// 32 bits, not 0 ("Rate too fast").
		n, secs, ok := rateUnit(m.limRate)
		if !ok || xtLimitScale*secs/n == 0 {
			return unsupported("limit %q", m.limRate)
		}
	case "hashlimit":
		n, secs, ok := rateUnit(m.hlAbove)
		if !ok || xtHashlimitScale2*secs/n == 0 {
			return unsupported("hashlimit %q", m.hlAbove)
		}
	}
	return nil
}

// rateUnit reads "N/unit" as libxt_limit and libxt_hashlimit do: the
// count and the unit's seconds.
func rateUnit(s string) (uint64, uint64, bool) {
	num, unit, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, false
	}
	n, ok := parseUint(num, 32)
	if !ok || n == 0 {
		return 0, 0, false
	}
	secs := map[string]uint64{"sec": 1, "second": 1, "min": 60, "minute": 60, "hour": 3600, "day": 86400}[unit]
	if secs == 0 {
		return 0, 0, false
	}
	return n, secs, true
}

const (
	xtLimitScale      = 10000
	xtHashlimitScale2 = 1000000
)

// encode writes the match's expressions.
func (m *match) encode(e *exprs, r *rule) {
	ne := binary.NativeEndian
	switch m.kind {
	case "comment":
		// In the rule's user data.
	case "tcp", "udp":
		encodePorts(e, m)
	case "multiport":
		info := make([]byte, 48)
		info[0] = m.mpFlags
		i := 0
		for _, p := range m.mpPorts {
			ne.PutUint16(info[2+2*i:], p[0])
			if p[0] != p[1] {
				info[32+i] = 1
				i++
				ne.PutUint16(info[2+2*i:], p[1])
			}
			i++
		}
		info[1] = byte(i)
		e.xt("match", "multiport", 1, info)
	case "icmp", "icmp6":
		e.xt("match", m.kind, 0, xtAlign([]byte{m.icmpType, 0, 0xff, 0}))
	case "conntrack":
		info := make([]byte, 168)
		ne.PutUint16(info[146:], 1) // match_flags: XT_CONNTRACK_STATE
		if m.ctInv {
			ne.PutUint16(info[148:], 1)
		}
		ne.PutUint16(info[150:], m.ctStates)
		e.xt("match", "conntrack", 3, info)
	case "set":
		info := make([]byte, 48)
		ne.PutUint16(info[0:], m.setIndex)
		dim, flags := setDirs(m.setDirs)
		info[2] = dim
		info[3] = flags
		if m.setInv {
			info[3] |= 1 // IPSET_INV_MATCH
		}
		e.xt("match", "set", 4, info)
	case "addrtype":
		info := make([]byte, 8)
		ne.PutUint16(info[0:], m.atSrc)
		ne.PutUint16(info[2:], m.atDst)
		ne.PutUint32(info[4:], m.atFlags)
		e.xt("match", "addrtype", 1, info)
	case "hl":
		e.xt("match", "hl", 0, xtAlign([]byte{0, m.hl}))
	case "limit":
		n, secs, _ := rateUnit(m.limRate)
		avg := uint32(xtLimitScale * secs / n)
		mult := []uint64{xtLimitScale * 24 * 60 * 60, xtLimitScale * 60 * 60, xtLimitScale * 60, xtLimitScale}
		i := 1
		for ; i < len(mult); i++ {
			if uint64(avg) > mult[i] || mult[i]/uint64(avg) < mult[i]%uint64(avg) {
				break
			}
		}
		e.limit(mult[i-1]/uint64(avg), mult[i-1]/xtLimitScale, m.limBurst)
	case "hashlimit":
		n, secs, _ := rateUnit(m.hlAbove)
		info := make([]byte, 312)
		copy(info, m.hlName)
		ne.PutUint64(info[256:], xtHashlimitScale2*secs/n)
		ne.PutUint64(info[264:], m.hlBurst)
		ne.PutUint32(info[272:], 1<<2|1<<4) // HASH_SIP | INVERT
		ne.PutUint32(info[284:], 1000)      // gc_interval
		ne.PutUint32(info[288:], m.hlExpire)
		ne.PutUint32(info[292:], 0)
		mask := byte(32)
		if r.fam == unix.NFPROTO_IPV6 {
			mask = 128
		}
		info[296], info[297] = mask, mask
		e.xt("match", "hashlimit", 3, info)
	}
}

// setDirs are xt_set_info's dim and flags of "src", "src,dst"...
func setDirs(s string) (dim, flags uint8) {
	for _, d := range strings.Split(s, ",") {
		dim++
		if d == "src" {
			flags |= 1 << dim
		}
	}
	return dim, flags
}

func xtAlign(b []byte) []byte {
	n := (len(b) + 7) &^ 7
	return append(b, make([]byte, n-len(b))...)
}

// encodePorts writes the tcp or udp match as iptables-nft does: both
// single ports in one compare of the first four bytes, else each of a
// source and destination port or range.
func encodePorts(e *exprs, m *match) {
	s, d := [2]uint16{0, 0xffff}, [2]uint16{0, 0xffff}
	if m.hasSpt {
		s = m.spts
	}
	if m.hasDpt {
		d = m.dpts
	}
	if s[0] != 0 && s[0] == s[1] && d[0] != 0 && d[0] == d[1] {
		e.payload(payloadTransport, 0, 4)
		e.cmp(cmpEq, be32(uint32(s[0])<<16|uint32(d[0])))
		return
	}
	one := func(off uint32, p [2]uint16) {
		if p[0] == 0 && p[1] == 0xffff {
			return
		}
		e.payload(payloadTransport, off, 2)
		if p[0] == p[1] {
			e.cmp(cmpEq, binary.BigEndian.AppendUint16(nil, p[0]))
			return
		}
		e.rangeEq(binary.BigEndian.AppendUint16(nil, p[0]), binary.BigEndian.AppendUint16(nil, p[1]))
	}
	one(0, s)
	one(2, d)
}
