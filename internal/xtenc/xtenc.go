// Package xtenc encodes the rule lines moat's iptables renderer writes
// (internal/ipt: "-A CHAIN args...", one line of an iptables-restore
// script) as the nf_tables rules iptables-nft 1.8.9 makes of them: the
// same expressions, byte for byte, as iptables-restore (ip6tables-restore)
// would send, so that the iptables backend can write a change of both
// families in one nf_tables transaction over netlink instead of running
// two restore processes.
//
// What iptables-nft writes natively is written natively: the interfaces
// (meta iifname/oifname and cmp; a trailing '+' compares the prefix), the
// protocol (meta l4proto), the addresses (payload, bitwise for a prefix
// that ends inside a byte, cmp), the ports of the implicit tcp and udp
// matches (payload and cmp or range; both single ports in one 4-byte
// compare), the limit match (limit). Everything else is the compat match
// or target holding the x_tables info struct exactly as the libxt_*
// extension fills it: conntrack (revision 3), set (4), addrtype (1), hl
// (0), icmp and icmp6 (0), multiport (1), hashlimit (3), LOG (0), REJECT
// (0), SET (3). Every rule gets the counter iptables-nft puts before the
// verdict, and the rule the compat protocol attribute iptables-nft sends
// (the kernel checks the compat extensions' protocols against it).
//
// One deliberate difference: a comment (-m comment --comment C, always
// the last match of a line moat writes) goes into the rule's user data as
// nft writes comments (udata type 0, NUL-terminated) instead of the compat
// comment match. iptables-nft reads it back as that match: iptables-save
// and iptables -S print the rule exactly as they print the compat form,
// and the packet path pays nothing for it (the compat comment match costs
// a call on every packet that reaches it).
//
// A comment must fit the user data (253 bytes; the compat match held 255) and
// be printable UTF-8 without quotes or backslashes: otherwise ErrUnsupported.
//
// Only -A lines are read: a jump moat inserts (-I CHAIN N ...) is the rule of
// "-A CHAIN ...", placed by the caller.
//
// Kernel-side fields are sent as iptables sends them: hashlimit's hinfo
// pointer (the last 8 bytes of its 312) zero, which the kernel keeps for
// itself and dumps as zero; the set match's and SET target's ipset
// indexes are the kernel's of the namespace the rules go to (SetIndex,
// KernelSetIndex), so the same line encodes differently in another
// namespace, as iptables-restore's rules do.
//
// Anything outside that allow-list (an option, match or target not listed,
// a form moat never writes, a text iptables would read otherwise or refuse)
// is ErrUnsupported, never a guess: the caller then runs iptables-restore.
package xtenc

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Rule is one rule's nf_tables attributes.
type Rule struct {
	Chain    string // the chain of the -A line
	Exprs    []byte // payload of NFTA_RULE_EXPRESSIONS: the NFTA_LIST_ELEM list, ready to nest
	UserData []byte // payload of NFTA_RULE_USERDATA (the comment), nil when the rule has none
	// Compat is the payload of NFTA_RULE_COMPAT (nested: the protocol of
	// -p and its inversion flag), which iptables-nft sends with every
	// rule: the kernel checks compat matches and targets that need a
	// protocol (icmp, multiport, REJECT --reject-with tcp-reset) against
	// it, and refuses the rule without it.
	Compat []byte
}

// Attributes are the rule's attributes of an NFT_MSG_NEWRULE message
// into table (filter, raw) of the family it was encoded for, in the order
// iptables-nft sends them (table, chain, expressions, compat), then the
// user data when there is a comment. Position attributes are the
// caller's.
func (r Rule) Attributes(table string) []netlink.Attribute {
	attrs := []netlink.Attribute{
		{Type: nftaRuleTable, Data: []byte(table + "\x00")},
		{Type: nftaRuleChain, Data: []byte(r.Chain + "\x00")},
		{Type: unix.NLA_F_NESTED | nftaRuleExpressions, Data: r.Exprs},
		{Type: unix.NLA_F_NESTED | nftaRuleCompat, Data: r.Compat},
	}
	if r.UserData != nil {
		attrs = append(attrs, netlink.Attribute{Type: nftaRuleUserdata, Data: r.UserData})
	}
	return attrs
}

// SetIndex gives the kernel's index of an ipset by name (iptables' -m set
// and -j SET carry the index) for a rule of family proto: a set of the
// other family is an error, as libxt_set's lookup refuses it ("The
// protocol family of set ... is not applicable"; the kernel would take
// the rule, which then never finds an address in the set).
type SetIndex func(name string, proto uint8) (uint16, error)

// ErrUnsupported: the line holds something outside the encoder's
// allow-list; the caller then uses iptables-restore for the whole change.
var ErrUnsupported = errors.New("xtenc: not encoded (use iptables-restore)")

// Encode encodes one rule line of an iptables-restore script exactly as
// moat's renderer (internal/ipt/render.go) writes it: "-A CHAIN args..."
// (quoted comments as render.go quotes them) for proto unix.NFPROTO_IPV4
// or NFPROTO_IPV6. A line iptables expands into several rules (-s or -d
// with a list of addresses) is ErrUnsupported here: EncodeAll encodes it.
func Encode(proto uint8, line string, sets SetIndex) (Rule, error) {
	rules, err := EncodeAll(proto, line, sets)
	if err != nil {
		return Rule{}, err
	}
	if len(rules) != 1 {
		return Rule{}, fmt.Errorf("%w: the line makes %d rules (use EncodeAll)", ErrUnsupported, len(rules))
	}
	return rules[0], nil
}

// EncodeAll is Encode of a line that may make several rules: iptables
// makes one rule per pair of a source and a destination address of -s
// and -d lists (each source in turn, with each destination), in that
// order.
func EncodeAll(proto uint8, line string, sets SetIndex) ([]Rule, error) {
	if proto != unix.NFPROTO_IPV4 && proto != unix.NFPROTO_IPV6 {
		return nil, fmt.Errorf("%w: family %d", ErrUnsupported, proto)
	}
	args, err := split(line)
	if err != nil {
		return nil, err
	}
	r, err := parse(proto, args, sets)
	if err != nil {
		return nil, err
	}
	return r.encode()
}

// iptables' limits.
const (
	ifNameSize   = 16  // IFNAMSIZ
	maxChainName = 28  // XT_EXTENSION_MAXNAMELEN - 1
	maxSetName   = 31  // IPSET_MAXNAMELEN - 1
	maxComment   = 253 // NFT_USERDATA_MAXLEN (256) less the type, length and NUL
	maxLogPrefix = 29
)

// rule is a parsed line.
type rule struct {
	fam          uint8
	chain        string
	inIf, outIf  string
	inInv, outIn bool
	l4           uint8
	l4Name       string // as given to -p
	hasL4        bool
	src, dst     []netip.Prefix
	srcInv       bool
	dstInv       bool
	matches      []*match
	comment      *string
	target       target
	tstate       *targetState
	commentDone  bool
}

type target struct {
	verdict uint32
	chain   string // jump
	xtName  string // compat target
	xtRev   uint32
	info    []byte
}

func unsupported(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUnsupported}, a...)...)
}

// validName: a chain or interface name of characters iptables and the
// kernel take as they are.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func parse(fam uint8, args []string, sets SetIndex) (*rule, error) {
	if len(args) < 2 || args[0] != "-A" {
		return nil, unsupported("not an -A line")
	}
	r := &rule{fam: fam, chain: args[1]}
	if !validName(r.chain) || len(r.chain) > maxChainName {
		return nil, unsupported("chain name %q", r.chain)
	}
	var cur *match
	haveTarget := false
	for i := 2; i < len(args); i++ {
		a := args[i]
		inv := false
		if a == "!" {
			inv = true
			i++
			if i >= len(args) {
				return nil, unsupported("'!' at the end")
			}
			a = args[i]
		}
		val := func() (string, error) {
			i++
			if i >= len(args) {
				return "", unsupported("%s without a value", a)
			}
			return args[i], nil
		}
		if haveTarget {
			if inv {
				return nil, unsupported("'!' in the target's options")
			}
			if err := r.targetOption(a, val); err != nil {
				return nil, err
			}
			continue
		}
		if r.commentDone && a != "-j" {
			// iptables-nft lists a comment kept in user data after the
			// other matches: only there is it listed in place.
			return nil, unsupported("%s after the comment", a)
		}
		switch a {
		case "-i", "-o":
			v, err := val()
			if err != nil {
				return nil, err
			}
			if err := checkIface(v); err != nil {
				return nil, err
			}
			if a == "-i" {
				if r.inIf != "" {
					return nil, unsupported("-i twice")
				}
				r.inIf, r.inInv = v, inv
			} else {
				if r.outIf != "" {
					return nil, unsupported("-o twice")
				}
				r.outIf, r.outIn = v, inv
			}
			continue
		case "-s", "-d":
			v, err := val()
			if err != nil {
				return nil, err
			}
			ps, err := parseAddrs(fam, v)
			if err != nil {
				return nil, err
			}
			if inv && (len(ps) > 1 || ps[0].Bits() == 0) {
				return nil, unsupported("'!' before %s", v)
			}
			if a == "-s" {
				if r.src != nil {
					return nil, unsupported("-s twice")
				}
				r.src, r.srcInv = ps, inv
			} else {
				if r.dst != nil {
					return nil, unsupported("-d twice")
				}
				r.dst, r.dstInv = ps, inv
			}
			continue
		case "-p":
			if inv {
				return nil, unsupported("'! -p'")
			}
			v, err := val()
			if err != nil {
				return nil, err
			}
			if r.hasL4 {
				return nil, unsupported("-p twice")
			}
			n, err := parseProto(fam, v)
			if err != nil {
				return nil, err
			}
			r.l4, r.l4Name, r.hasL4 = n, v, true
			continue
		case "-m":
			if inv {
				return nil, unsupported("'! -m'")
			}
			v, err := val()
			if err != nil {
				return nil, err
			}
			m, err := r.newMatch(v)
			if err != nil {
				return nil, err
			}
			if m.kind == "comment" {
				if r.comment != nil {
					return nil, unsupported("two comments")
				}
				s := ""
				r.comment = &s
			}
			r.matches = append(r.matches, m)
			cur = m
			continue
		case "-j":
			if inv {
				return nil, unsupported("'! -j'")
			}
			v, err := val()
			if err != nil {
				return nil, err
			}
			if err := r.setTarget(v); err != nil {
				return nil, err
			}
			haveTarget = true
			continue
		}
		if !strings.HasPrefix(a, "--") {
			return nil, unsupported("argument %q", a)
		}
		if r.abbreviates(a) {
			return nil, unsupported("%s, which iptables reads as a longer option", a)
		}
		m := cur
		if m == nil || !m.owns(a) {
			// --sport, --dport, --icmp-type load -p's match, as
			// iptables does for an option no loaded match knows.
			m = nil
			if im := r.implicit(); im != "" && implicitOwns(im, a) {
				for _, x := range r.matches {
					if x.kind == im {
						return nil, unsupported("%s apart from its match", a)
					}
				}
				m = &match{kind: im}
				r.matches = append(r.matches, m)
				cur = m
			}
		}
		if m == nil {
			return nil, unsupported("option %s", a)
		}
		if err := m.option(r, a, inv, val, sets); err != nil {
			return nil, err
		}
	}
	if !haveTarget {
		return nil, unsupported("no target")
	}
	// iptables: "Can't use -o with INPUT" (and PREROUTING), "Can't use -i
	// with OUTPUT" (and POSTROUTING): the packets have no such interface.
	switch r.chain {
	case "INPUT", "PREROUTING":
		if r.outIf != "" {
			return nil, unsupported("-o in %s", r.chain)
		}
	case "OUTPUT", "POSTROUTING":
		if r.inIf != "" {
			return nil, unsupported("-i in %s", r.chain)
		}
	}
	if (len(r.src) > 1 || len(r.dst) > 1) && (r.srcInv || r.dstInv) {
		// iptables: "! not allowed with multiple source or destination
		// IP addresses".
		return nil, unsupported("'!' with a list of addresses")
	}
	for _, m := range r.matches {
		if err := m.finish(); err != nil {
			return nil, err
		}
	}
	if r.comment != nil {
		if err := checkComment(*r.comment); err != nil {
			return nil, err
		}
	}
	return r, r.finishTarget(sets)
}

func checkIface(v string) error {
	name := strings.TrimSuffix(v, "+")
	if len(v) >= ifNameSize || !validName(name) {
		return unsupported("interface %q", v)
	}
	return nil
}

func parseAddrs(fam uint8, v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(v, ",") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, unsupported("address %q", s)
		}
		if p.Addr().Zone() != "" || p.Addr().Is4In6() || p.Addr().Is4() != (fam == unix.NFPROTO_IPV4) {
			return nil, unsupported("address %q", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

var protoNames = map[string]uint8{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "icmp": unix.IPPROTO_ICMP, "ipv6-icmp": unix.IPPROTO_ICMPV6}

func parseProto(fam uint8, v string) (uint8, error) {
	if n, ok := protoNames[v]; ok {
		if (n == unix.IPPROTO_ICMP) != (fam == unix.NFPROTO_IPV4) && (n == unix.IPPROTO_ICMP || n == unix.IPPROTO_ICMPV6) {
			return 0, unsupported("-p %s in this family", v)
		}
		return n, nil
	}
	n, err := strconv.ParseUint(v, 10, 8)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != v {
		return 0, unsupported("-p %q", v)
	}
	switch uint8(n) {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6:
		// By number, iptables loads the same implicit match as by name:
		// moat writes names.
		return 0, unsupported("-p %q", v)
	}
	return uint8(n), nil
}

// checkComment: a comment kept in user data, listed as iptables lists the
// compat match's.
func checkComment(c string) error {
	if c == "" || len(c) > maxComment || !utf8.ValidString(c) {
		return unsupported("comment of %d bytes", len(c))
	}
	return checkText(c)
}

func (r *rule) setTarget(v string) error {
	switch v {
	case "ACCEPT":
		r.target.verdict = verdictAccept
	case "DROP":
		r.target.verdict = verdictDrop
	case "RETURN":
		r.target.verdict = verdictReturn
	case "REJECT":
		r.target.xtName = "REJECT"
	case "LOG":
		r.target.xtName = "LOG"
	case "SET":
		r.target.xtName = "SET"
		r.target.xtRev = 3
	default:
		// A jump: iptables takes a name as a chain when no target
		// extension has it; those are upper case, moat's chains are not
		// all upper case.
		if !validName(v) || len(v) > maxChainName || strings.ToUpper(v) == v && !strings.Contains(v, "-") || v == "standard" {
			return unsupported("target %q", v)
		}
		r.target.verdict = verdictJump
		r.target.chain = v
	}
	return nil
}

// encode writes the rules of r: one per source and destination.
func (r *rule) encode() ([]Rule, error) {
	srcs, dsts := r.src, r.dst
	if srcs == nil {
		srcs = []netip.Prefix{{}}
	}
	if dsts == nil {
		dsts = []netip.Prefix{{}}
	}
	var ud []byte
	if r.comment != nil {
		ud = append([]byte{0, byte(len(*r.comment) + 1)}, *r.comment...)
		ud = append(ud, 0)
	}
	compat, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: nftaRuleCompatProto, Data: be32(uint32(r.l4))},
		{Type: nftaRuleCompatFlags, Data: be32(0)},
	})
	if err != nil {
		return nil, err
	}
	var out []Rule
	for _, s := range srcs {
		for _, d := range dsts {
			e := exprs{b: make([]byte, 0, 1024)}
			r.header(&e, s, d)
			for _, m := range r.matches {
				m.encode(&e, r)
			}
			e.counter()
			if r.target.xtName != "" {
				e.xt("target", r.target.xtName, r.target.xtRev, r.target.info)
			} else {
				e.verdict(r.target.verdict, r.target.chain)
			}
			b, err := e.bytes()
			if err != nil {
				return nil, err
			}
			out = append(out, Rule{Chain: r.chain, Exprs: b, UserData: ud, Compat: compat})
		}
	}
	return out, nil
}

// header writes what iptables-nft writes of the ip(6)tables entry, in its
// order: interfaces, protocol, addresses.
func (r *rule) header(e *exprs, src, dst netip.Prefix) {
	iface := func(key uint32, name string, inv bool) {
		if name == "" {
			return
		}
		e.meta(key)
		op := uint32(cmpEq)
		if inv {
			op = cmpNeq
		}
		if p, ok := strings.CutSuffix(name, "+"); ok {
			if p != "" {
				e.cmp(op, []byte(p))
			}
			return
		}
		e.cmp(op, append([]byte(name), 0))
	}
	iface(metaIIFName, r.inIf, r.inInv)
	iface(metaOIFName, r.outIf, r.outIn)
	if r.hasL4 {
		e.meta(metaL4Proto)
		e.cmp(cmpEq, []byte{r.l4})
	}
	addr := func(p netip.Prefix, off4, off6 uint32, inv bool) {
		if !p.IsValid() || p.Bits() == 0 {
			// Any address: iptables writes nothing for it.
			return
		}
		off := off4
		if p.Addr().Is6() {
			off = off6
		}
		full := p.Addr().AsSlice()
		op := uint32(cmpEq)
		if inv {
			op = cmpNeq
		}
		if p.Bits()%8 == 0 {
			n := p.Bits() / 8
			e.payload(payloadNetwork, off, uint32(n))
			e.cmp(op, full[:n])
			return
		}
		mask := make([]byte, len(full))
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		e.payload(payloadNetwork, off, uint32(len(full)))
		e.bitwise(mask)
		e.cmp(op, full)
	}
	addr(src, 12, 8, r.srcInv)
	addr(dst, 16, 24, r.dstInv)
}
