package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// This file writes moat's rules over netlink as `nft -f` would write the
// same rule text: the expressions nft 1.0.6 generates for each statement
// (its implicit dependencies, its merge of adjacent port matches, its
// shortened loads of byte-aligned prefixes) and the anonymous sets it
// makes for `{ a, b }`. It knows only the statements moat renders, from
// an explicit list below; any other text is errUnencodable, and the
// whole change then goes through nft (never part of it).
// TestEncoderMatchesNft loads every rule shape both ways into two
// namespaces and compares what the kernel holds, byte for byte.

// errUnencodable says that a rule holds a statement the encoder does not
// know: the change goes through nft.
var errUnencodable = errors.New("rule not encodable over netlink")

func unencodable(what string) error { return fmt.Errorf("%w: %s", errUnencodable, what) }

// ruleEncoder appends rules to a batch. setID numbers the anonymous sets
// of the transaction, as nft numbers them.
type ruleEncoder struct {
	b     *batch
	setID uint32
}

// anonSet is an anonymous set of a rule: its key type and the user data
// nft gives it (byte order and typeof), as nft 1.0.6 writes them.
type anonKey struct {
	typ, size uint32
	udata     []byte
}

// keyUdata is nft's user data for an anonymous set keyed by a payload
// field (byte order big endian, typeof payload DESC FIELD) or by a meta
// key (host byte order, typeof meta KEY).
func payloadKey(typ, size, desc, field uint32) anonKey {
	inner := append(udataU32(0, desc), udataU32(1, field)...)
	typeof := append(udataU32(0, 7), udataTLV(1, inner)...)
	return anonKey{typ, size, append(udataU32(0, 2), udataTLV(3, typeof)...)}
}

func metaKey(typ, size, key uint32) anonKey {
	typeof := append(udataU32(0, 9), udataTLV(1, udataU32(0, key))...)
	return anonKey{typ, size, append(udataU32(0, 1), udataTLV(3, typeof)...)}
}

func udataTLV(typ byte, data []byte) []byte {
	return append([]byte{typ, byte(len(data))}, data...)
}

func udataU32(typ byte, v uint32) []byte {
	return udataTLV(typ, binary.LittleEndian.AppendUint32(nil, v))
}

// nft's datatypes and protocol descriptions (nftables 1.0.6).
const (
	typeInetProto   = 12
	typeInetService = 13
	typeICMP        = 14
	typeICMPv6      = 29
	descICMP        = 4
	descUDP         = 6
	descTCP         = 8
	descTH          = 11
	descICMPv6      = 14
)

var l4Numbers = map[string]byte{"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58}

// transport headers moat matches ports of: the description nft keys
// their sets by, and the protocol they need (0: th, any protocol the rule
// matched before).
var portHeaders = map[string]struct {
	desc  uint32
	proto byte
}{"tcp": {descTCP, 6}, "udp": {descUDP, 17}, "th": {descTH, 0}}

// ruleState is what one rule's statements so far established, as nft
// tracks it to add or leave out dependencies.
type ruleState struct {
	exprs   []expr.Any
	nfproto byte // the network protocol matched (unix.NFPROTO_IPV4/6), 0 none
	l4      byte // the one transport protocol matched, 0 none
	l4set   bool // several transport protocols matched (a set)
}

// rule appends one rule (moat's rendered text and comment) to the chain,
// with the anonymous sets it uses before it.
func (e *ruleEncoder) rule(chain, text, comment string) error {
	toks, err := tokenize(text)
	if err != nil {
		return err
	}
	if len(comment) > 127 {
		return unencodable("long comment")
	}
	// nft is given the comment as knftables writes it, quoted by Go's
	// %q, and keeps the quoted text as it is: a character %q escapes (a
	// control, a quote, a character Go does not call printable such as
	// U+200B or U+00A0, a byte that is not UTF-8) is kept by nft as its
	// escape ("\u200b"), not as the character.
	if strconv.Quote(comment) != `"`+comment+`"` {
		return unencodable("comment nft is given escaped")
	}
	var pre []func() // the anonymous sets, written before the rule
	st := &ruleState{}
	verdict := false
	for i := 0; i < len(toks); {
		if verdict {
			return unencodable("statement after verdict")
		}
		t := toks[i]
		next := func(n int) []string {
			if i+n < len(toks) {
				return toks[i+1 : i+1+n]
			}
			return nil
		}
		switch {
		case t == "iif" || t == "oif":
			a := next(1)
			if a == nil || a[0] != `"lo"` {
				return unencodable(t)
			}
			key := expr.MetaKeyIIF
			if t == "oif" {
				key = expr.MetaKeyOIF
			}
			st.exprs = append(st.exprs, &expr.Meta{Key: key, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, 1)})
			i += 2
		case t == "iifname" || t == "oifname":
			a := next(2)
			if a == nil {
				return unencodable(t)
			}
			op, name := expr.CmpOpEq, a[0]
			i += 2
			if a[0] == "!=" {
				op, name = expr.CmpOpNeq, a[1]
				i++
			}
			data, err := ifnameData(name)
			if err != nil {
				return err
			}
			key := expr.MetaKeyIIFNAME
			if t == "oifname" {
				key = expr.MetaKeyOIFNAME
			}
			st.exprs = append(st.exprs, &expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: data})
		case t == "ct":
			a := next(2)
			if a == nil || a[0] != "state" {
				return unencodable("ct")
			}
			mask, err := ctStates(a[1])
			if err != nil {
				return err
			}
			st.exprs = append(st.exprs, &expr.Ct{Key: expr.CtKeySTATE, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binary.NativeEndian.AppendUint32(nil, mask), Xor: make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)})
			i += 3
		case t == "meta":
			a := next(2)
			if a == nil {
				return unencodable("meta")
			}
			switch a[0] {
			case "nfproto":
				var p byte
				switch a[1] {
				case "ipv4":
					p = unix.NFPROTO_IPV4
				case "ipv6":
					p = unix.NFPROTO_IPV6
				default:
					return unencodable("meta nfproto " + a[1])
				}
				if st.nfproto != 0 {
					return unencodable("nfproto twice")
				}
				st.nfproto = p
				st.exprs = append(st.exprs, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}})
				i += 3
			case "l4proto":
				items, n, err := values(toks[i+2:])
				if err != nil {
					return err
				}
				// After a set of protocols, one of them (a TCP reset of
				// a TCP and UDP rule): a compare, no dependency.
				if st.l4 != 0 || st.l4set && len(items) > 1 {
					return unencodable("l4proto twice")
				}
				i += 2 + n
				protos := make([][]byte, len(items))
				for k, it := range items {
					p, err := l4proto(it)
					if err != nil {
						return err
					}
					protos[k] = []byte{p}
				}
				st.exprs = append(st.exprs, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1})
				if len(protos) == 1 {
					st.l4 = protos[0][0]
					st.exprs = append(st.exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: protos[0]})
					break
				}
				st.l4set = true
				pre = append(pre, e.lookupAnon(st, metaKey(typeInetProto, 1, unix.NFT_META_L4PROTO), protos))
			default:
				return unencodable("meta " + a[0])
			}
		case t == "ip" || t == "ip6":
			n, err := st.ipMatch(toks[i:])
			if err != nil {
				return err
			}
			i += n
		case t == "fib":
			a := next(4)
			if a == nil || a[0] != "daddr" || a[1] != "type" || a[2] != "!=" || a[3] != "unicast" {
				return unencodable("fib")
			}
			st.exprs = append(st.exprs, &expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_UNICAST)})
			i += 5
		case portHeaders[t].desc != 0:
			n, set, err := st.portMatch(toks[i:])
			if err != nil {
				return err
			}
			if set != nil {
				pre = append(pre, e.lookupAnonSet(st, set))
			}
			i += n
		case t == "icmp" || t == "icmpv6":
			a := next(1)
			if a == nil || a[0] != "type" {
				return unencodable(t)
			}
			items, n, err := values(toks[i+2:])
			if err != nil {
				return err
			}
			i += 2 + n
			names, proto, nf, key := icmpNames, byte(1), byte(unix.NFPROTO_IPV4), payloadKey(typeICMP, 1, descICMP, 1)
			if t == "icmpv6" {
				names, proto, nf, key = icmp6Names, 58, unix.NFPROTO_IPV6, payloadKey(typeICMPv6, 1, descICMPv6, 1)
			}
			if st.nfproto != nf || st.l4set || st.l4 != 0 && st.l4 != proto {
				return unencodable(t + " without its family")
			}
			types := make([][]byte, len(items))
			for k, it := range items {
				v, err := icmpType(names, it)
				if err != nil {
					return err
				}
				types[k] = []byte{v}
			}
			if st.l4 == 0 {
				st.l4 = proto
				st.exprs = append(st.exprs, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}})
			}
			st.exprs = append(st.exprs, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1})
			if len(types) == 1 {
				st.exprs = append(st.exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: types[0]})
			} else {
				pre = append(pre, e.lookupAnon(st, key, types))
			}
		case t == "update":
			n, err := st.update(toks[i:])
			if err != nil {
				return err
			}
			i += n
		case t == "limit":
			l, n, err := limitStmt(toks[i:], false)
			if err != nil {
				return err
			}
			st.exprs = append(st.exprs, l)
			i += n
		case t == "counter":
			st.exprs = append(st.exprs, &expr.Counter{})
			i++
		case t == "log":
			a := next(2)
			if a == nil || a[0] != "prefix" {
				return unencodable("log")
			}
			p, err := plainString(a[1])
			if err != nil {
				return err
			}
			st.exprs = append(st.exprs, &expr.Log{Key: 1 << unix.NFTA_LOG_PREFIX, Data: []byte(p)})
			i += 3
		case t == "accept" || t == "drop" || t == "return":
			kind := map[string]expr.VerdictKind{"accept": expr.VerdictAccept, "drop": expr.VerdictDrop, "return": expr.VerdictReturn}[t]
			st.exprs = append(st.exprs, &expr.Verdict{Kind: kind})
			verdict = true
			i++
		case t == "jump":
			a := next(1)
			if a == nil || !plainName(a[0]) {
				return unencodable("jump")
			}
			st.exprs = append(st.exprs, &expr.Verdict{Kind: expr.VerdictJump, Chain: a[0]})
			verdict = true
			i += 2
		case t == "reject":
			a := next(3)
			switch {
			case a == nil && i == len(toks)-1:
				// Plain reject: ICMPX port unreachable, when the network
				// protocol is not known (nft picks ICMP or ICMPv6 once it
				// is).
				if st.nfproto != 0 {
					return unencodable("reject of one family")
				}
				st.exprs = append(st.exprs, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
				i++
			case a != nil && a[0] == "with" && a[1] == "tcp" && a[2] == "reset" && st.l4 == 6:
				st.exprs = append(st.exprs, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
				i += 4
			default:
				return unencodable("reject")
			}
			verdict = true
		default:
			return unencodable(strconv.Quote(t))
		}
	}
	exprs := make([]netlink.Attribute, 0, len(st.exprs))
	for _, x := range st.exprs {
		data, err := expr.Marshal(unix.NFPROTO_INET, x)
		if err != nil {
			return err
		}
		exprs = append(exprs, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: data})
	}
	list, err := netlink.MarshalAttributes(exprs)
	if err != nil {
		return err
	}
	for _, f := range pre {
		f()
	}
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: list},
	}
	if comment != "" {
		ud := append([]byte{0, byte(len(comment) + 1)}, comment...)
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_RULE_USERDATA, Data: append(ud, 0)})
	}
	e.b.add(unix.NFT_MSG_NEWRULE, netlink.Create|unix.NLM_F_APPEND, attrs)
	return nil
}

// lookupAnon appends a lookup of register 1 in a new anonymous set of
// items, and returns what writes the set (before the rule).
func (e *ruleEncoder) lookupAnon(st *ruleState, key anonKey, items [][]byte) func() {
	return e.lookupAnonSet(st, &anonItems{key: key, items: items})
}

func (e *ruleEncoder) lookupAnonSet(st *ruleState, set *anonItems) func() {
	e.setID++
	id := e.setID
	key, items := set.key, set.items
	st.exprs = append(st.exprs, &expr.Lookup{SourceRegister: 1, SetName: "__set%d", SetID: id})
	return func() {
		size, flags := uint32(len(items)), uint32(unix.NFT_SET_ANONYMOUS|unix.NFT_SET_CONSTANT)
		if set.interval {
			size, flags = set.size, flags|unix.NFT_SET_INTERVAL
		}
		desc, _ := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_SET_DESC_SIZE, Data: binary.BigEndian.AppendUint32(nil, size)}})
		e.b.add(unix.NFT_MSG_NEWSET, netlink.Create, []netlink.Attribute{
			{Type: unix.NFTA_SET_TABLE, Data: []byte(TableName + "\x00")},
			{Type: unix.NFTA_SET_NAME, Data: []byte("__set%d\x00")},
			{Type: unix.NFTA_SET_FLAGS, Data: binary.BigEndian.AppendUint32(nil, flags)},
			{Type: unix.NFTA_SET_KEY_TYPE, Data: binary.BigEndian.AppendUint32(nil, key.typ)},
			{Type: unix.NFTA_SET_KEY_LEN, Data: binary.BigEndian.AppendUint32(nil, key.size)},
			{Type: unix.NFTA_SET_ID, Data: binary.BigEndian.AppendUint32(nil, id)},
			{Type: unix.NLA_F_NESTED | unix.NFTA_SET_DESC, Data: desc},
			{Type: unix.NFTA_SET_USERDATA, Data: key.udata},
		})
		var list []byte
		for _, it := range items {
			k := appendAttr(nil, unix.NFTA_DATA_VALUE, it)
			el := appendAttr(nil, unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_KEY, k)
			list = appendAttr(list, unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM, el)
		}
		for _, it := range set.elems {
			el := appendAttr(nil, unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_KEY, appendAttr(nil, unix.NFTA_DATA_VALUE, it.key))
			if it.end {
				el = appendAttr(el, unix.NFTA_SET_ELEM_FLAGS, binary.BigEndian.AppendUint32(nil, unix.NFT_SET_ELEM_INTERVAL_END))
			}
			if it.open {
				// NFTNL_UDATA_SET_ELEM_FLAGS: NFTNL_SET_ELEM_F_INTERVAL_OPEN.
				el = appendAttr(el, unix.NFTA_SET_ELEM_USERDATA, []byte{1, 4, 1, 0, 0, 0})
			}
			list = appendAttr(list, unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM, el)
		}
		e.b.add(unix.NFT_MSG_NEWSETELEM, netlink.Create, []netlink.Attribute{
			{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(TableName + "\x00")},
			{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte("__set%d\x00")},
			{Type: unix.NFTA_SET_ELEM_LIST_SET_ID, Data: binary.BigEndian.AppendUint32(nil, id)},
			{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: list},
		})
	}
}

// needFamily adds nft's dependency of an ip or ip6 match (meta nfproto)
// unless the rule matched the family already.
func (st *ruleState) needFamily(p byte) error {
	switch st.nfproto {
	case p:
		return nil
	case 0:
		st.nfproto = p
		st.exprs = append(st.exprs, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}})
		return nil
	}
	return unencodable("two families")
}

// ipMatch: `ip|ip6 saddr|daddr ADDR[/LEN]`, `... [!=] @SET`, `ip6
// hoplimit N`. It returns the tokens used.
func (st *ruleState) ipMatch(toks []string) (int, error) {
	if len(toks) < 3 {
		return 0, unencodable(toks[0])
	}
	p, size := byte(unix.NFPROTO_IPV4), uint32(4)
	if toks[0] == "ip6" {
		p, size = unix.NFPROTO_IPV6, 16
	}
	var off uint32
	switch {
	case toks[1] == "hoplimit" && toks[0] == "ip6":
		n, err := strconv.ParseUint(toks[2], 10, 8)
		if err != nil {
			return 0, unencodable("hoplimit")
		}
		if err := st.needFamily(p); err != nil {
			return 0, err
		}
		if st.lastLoad(expr.PayloadBaseNetworkHeader) {
			return 0, unencodable("adjacent header loads")
		}
		st.exprs = append(st.exprs, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 7, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(n)}})
		return 3, nil
	case toks[1] == "saddr":
		off = 12
		if p == unix.NFPROTO_IPV6 {
			off = 8
		}
	case toks[1] == "daddr":
		off = 16
		if p == unix.NFPROTO_IPV6 {
			off = 24
		}
	default:
		return 0, unencodable(toks[0] + " " + toks[1])
	}
	if err := st.needFamily(p); err != nil {
		return 0, err
	}
	arg, n, invert := toks[2], 3, false
	if arg == "!=" {
		if len(toks) < 4 {
			return 0, unencodable("!=")
		}
		arg, n, invert = toks[3], 4, true
	}
	if name, ok := strings.CutPrefix(arg, "@"); ok {
		if !plainName(name) {
			return 0, unencodable("set name")
		}
		st.exprs = append(st.exprs, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
			&expr.Lookup{SourceRegister: 1, SetName: name, Invert: invert})
		return n, nil
	}
	if invert {
		return 0, unencodable("!= address")
	}
	// An address compare right after another of the network header would
	// be merged by nft when the two are adjacent: not written here.
	if st.lastLoad(expr.PayloadBaseNetworkHeader) {
		return 0, unencodable("adjacent header loads")
	}
	pfx, err := netip.ParsePrefix(arg)
	if err != nil {
		a, aerr := netip.ParseAddr(arg)
		if aerr != nil || a.Zone() != "" {
			return 0, unencodable("address")
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx.Addr().Is4() != (p == unix.NFPROTO_IPV4) || pfx.Masked() != pfx || pfx.Bits() == 0 {
		return 0, unencodable("address")
	}
	addr := pfx.Addr().AsSlice()
	bits := pfx.Bits()
	if bits%8 == 0 {
		// A byte-aligned prefix: nft loads and compares only its bytes.
		st.exprs = append(st.exprs, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(bits / 8)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:bits/8]})
		return n, nil
	}
	mask := make([]byte, size)
	for k := 0; k < bits; k++ {
		mask[k/8] |= 0x80 >> (k % 8)
	}
	st.exprs = append(st.exprs, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr})
	return n, nil
}

// lastLoad says whether the rule's last expressions compare a load of
// that header (nft would merge an adjacent compare into it).
func (st *ruleState) lastLoad(base expr.PayloadBase) bool {
	n := len(st.exprs)
	if n < 2 {
		return false
	}
	for k := n - 1; k >= 0 && k >= n-3; k-- {
		switch x := st.exprs[k].(type) {
		case *expr.Payload:
			_, isCmp := st.exprs[n-1].(*expr.Cmp)
			return x.Base == base && isCmp
		case *expr.Cmp, *expr.Bitwise:
			continue
		default:
			return false
		}
	}
	return false
}

// anonItems is an anonymous set: its key and its values, or (interval)
// its elements and the size nft declares.
type anonItems struct {
	key      anonKey
	items    [][]byte
	interval bool
	elems    []anonElem
	size     uint32
}

// anonElem is one element of an interval set.
type anonElem struct {
	key       []byte
	end, open bool
}

// portMatch: `tcp|udp|th sport|dport PORTS`, where PORTS is a port, a
// range or a set of ports (no ranges); a source port and a destination
// port one each are one load and compare, as nft merges them.
func (st *ruleState) portMatch(toks []string) (int, *anonItems, error) {
	h := portHeaders[toks[0]]
	if len(toks) < 3 || toks[1] != "sport" && toks[1] != "dport" {
		return 0, nil, unencodable(toks[0])
	}
	switch {
	case h.proto == 0 && !st.l4set:
		return 0, nil, unencodable("th without protocols")
	case h.proto != 0 && st.l4set, h.proto != 0 && st.l4 != 0 && st.l4 != h.proto:
		return 0, nil, unencodable("ports of another protocol")
	}
	if st.lastLoad(expr.PayloadBaseTransportHeader) {
		return 0, nil, unencodable("adjacent header loads")
	}
	if h.proto != 0 && st.l4 == 0 {
		st.l4 = h.proto
		st.exprs = append(st.exprs, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{h.proto}})
	}
	field, off := uint32(1), uint32(0)
	if toks[1] == "dport" {
		field, off = 2, 2
	}
	items, n, err := values(toks[2:])
	if err != nil {
		return 0, nil, err
	}
	n += 2
	if len(items) == 1 {
		first, last, err := portRange(items[0])
		if err != nil {
			return 0, nil, err
		}
		if first != last {
			st.exprs = append(st.exprs, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
				&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binary.BigEndian.AppendUint16(nil, first)},
				&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: binary.BigEndian.AppendUint16(nil, last)})
			return n, nil, nil
		}
		// sport P dport Q: nft loads and compares the four bytes at once.
		if field == 1 && len(toks) >= n+3 && toks[n] == toks[0] && toks[n+1] == "dport" {
			if d, dn, err := values(toks[n+2:]); err == nil && len(d) == 1 {
				if df, dl, err := portRange(d[0]); err == nil && df == dl {
					st.exprs = append(st.exprs, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 4},
						&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, first), df)})
					return n + 2 + dn, nil, nil
				}
			}
			return 0, nil, unencodable("source and destination ports")
		}
		st.exprs = append(st.exprs, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, first)})
		return n, nil, nil
	}
	ports := make([][]byte, len(items))
	ranges := make([][2]uint16, len(items))
	interval := false
	for k, it := range items {
		first, last, err := portRange(it)
		if err != nil {
			return 0, nil, err
		}
		ports[k] = binary.BigEndian.AppendUint16(nil, first)
		ranges[k] = [2]uint16{first, last}
		interval = interval || first != last
	}
	st.exprs = append(st.exprs, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2})
	key := payloadKey(typeInetService, 2, h.desc, field)
	if interval {
		return n, portIntervals(key, ranges), nil
	}
	return n, &anonItems{key: key, items: ports}, nil
}

// portIntervals is the interval set nft makes of a port set with ranges:
// the ranges merged where they overlap or touch, each a start and an end
// (the port after it), a range that runs to 65535 a start marked open, an
// end at port 0 when no range starts there; its size counts each range's
// start and end and that end at 0. nft marks its user data
// NFTNL_UDATA_SET_MERGE_ELEMENTS.
func portIntervals(key anonKey, ranges [][2]uint16) *anonItems {
	slices.SortFunc(ranges, func(a, b [2]uint16) int { return int(a[0]) - int(b[0]) })
	var merged [][2]uint16
	for _, r := range ranges {
		if n := len(merged); n > 0 && int(r[0]) <= int(merged[n-1][1])+1 {
			merged[n-1][1] = max(merged[n-1][1], r[1])
			continue
		}
		merged = append(merged, r)
	}
	it := &anonItems{key: key, interval: true, size: uint32(2 * len(merged))}
	// Byte order, merge elements, typeof: the merge entry after the first.
	bo := key.udata[:6]
	it.key.udata = append(append(append([]byte{}, bo...), udataU32(2, 1)...), key.udata[6:]...)
	port := func(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }
	if merged[0][0] != 0 {
		it.elems = append(it.elems, anonElem{key: port(0), end: true})
		it.size++
	}
	for _, r := range merged {
		if r[1] == 65535 {
			it.elems = append(it.elems, anonElem{key: port(r[0]), open: true})
			continue
		}
		it.elems = append(it.elems, anonElem{key: port(r[0])}, anonElem{key: port(r[1] + 1), end: true})
	}
	return it
}

// update: `update @SET { ip|ip6 saddr limit rate over N/UNIT burst B
// packets }`, a per-source meter.
func (st *ruleState) update(toks []string) (int, error) {
	if len(toks) < 6 || !strings.HasPrefix(toks[1], "@") || !plainName(toks[1][1:]) || toks[2] != "{" || toks[4] != "saddr" {
		return 0, unencodable("update")
	}
	p, off, size := byte(unix.NFPROTO_IPV4), uint32(12), uint32(4)
	switch toks[3] {
	case "ip":
	case "ip6":
		p, off, size = unix.NFPROTO_IPV6, 8, 16
	default:
		return 0, unencodable("update key")
	}
	if st.nfproto != p {
		return 0, unencodable("update key without its family")
	}
	l, n, err := limitStmt(toks[5:], true)
	if err != nil {
		return 0, err
	}
	if len(toks) < 5+n+1 || toks[5+n] != "}" {
		return 0, unencodable("update")
	}
	st.exprs = append(st.exprs, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
		&expr.Dynset{SrcRegKey: 1, SetName: toks[1][1:], Operation: unix.NFT_DYNSET_OP_UPDATE, Exprs: []expr.Any{l}})
	return 5 + n + 1, nil
}

// limitStmt: `limit rate [over] N/UNIT burst B packets`.
func limitStmt(toks []string, over bool) (*expr.Limit, int, error) {
	n := 6
	if len(toks) < 2 || toks[1] != "rate" {
		return nil, 0, unencodable("limit")
	}
	rest := toks[2:]
	if over {
		if len(rest) == 0 || rest[0] != "over" {
			return nil, 0, unencodable("limit")
		}
		rest, n = rest[1:], 7
	}
	if len(rest) < 4 || rest[1] != "burst" || rest[3] != "packets" {
		return nil, 0, unencodable("limit")
	}
	num, unit, ok := strings.Cut(rest[0], "/")
	rate, err := strconv.ParseUint(num, 10, 32)
	burst, berr := strconv.ParseUint(rest[2], 10, 32)
	units := map[string]expr.LimitTime{"second": expr.LimitTimeSecond, "minute": expr.LimitTimeMinute, "hour": expr.LimitTimeHour, "day": expr.LimitTimeDay}
	u, uok := units[unit]
	if !ok || err != nil || berr != nil || !uok || rate == 0 || burst == 0 {
		return nil, 0, unencodable("limit")
	}
	return &expr.Limit{Type: expr.LimitTypePkts, Rate: rate, Over: over, Unit: u, Burst: uint32(burst)}, n, nil
}

// tokenize splits rule text at spaces; a quoted string is one token
// (kept quoted).
func tokenize(s string) ([]string, error) {
	var out []string
	for i := 0; i < len(s); {
		switch s[i] {
		case ' ':
			i++
			continue
		case '"':
			j := strings.IndexByte(s[i+1:], '"')
			if j < 0 {
				return nil, unencodable("quote")
			}
			out = append(out, s[i:i+j+2])
			i += j + 2
			if i < len(s) && s[i] != ' ' {
				return nil, unencodable("quote")
			}
			continue
		}
		j := strings.IndexByte(s[i:], ' ')
		if j < 0 {
			j = len(s) - i
		}
		out = append(out, s[i:i+j])
		i += j
	}
	return out, nil
}

// values reads one value or a `{ a, b }` set: the items and the tokens
// used.
func values(toks []string) ([]string, int, error) {
	if len(toks) == 0 {
		return nil, 0, unencodable("value")
	}
	if toks[0] != "{" {
		if strings.ContainsAny(toks[0], "{},") {
			return nil, 0, unencodable("value")
		}
		return toks[:1], 1, nil
	}
	var items []string
	for k := 1; k < len(toks); k++ {
		t := toks[k]
		if t == "}" {
			if len(items) < 2 {
				return nil, 0, unencodable("set")
			}
			return items, k + 1, nil
		}
		t, comma := strings.CutSuffix(t, ",")
		if comma != (k+1 < len(toks) && toks[k+1] != "}") || t == "" || strings.ContainsAny(t, "{},") {
			return nil, 0, unencodable("set")
		}
		items = append(items, t)
	}
	return nil, 0, unencodable("set")
}

func portRange(s string) (first, last uint16, err error) {
	a, b, isRange := strings.Cut(s, "-")
	f, err1 := strconv.ParseUint(a, 10, 16)
	l := f
	var err2 error
	if isRange {
		l, err2 = strconv.ParseUint(b, 10, 16)
	}
	if err1 != nil || err2 != nil || l < f || isRange && l == f {
		return 0, 0, unencodable("port " + strconv.Quote(s))
	}
	return uint16(f), uint16(l), nil
}

func l4proto(s string) (byte, error) {
	if p, ok := l4Numbers[s]; ok {
		return p, nil
	}
	if n, err := strconv.ParseUint(s, 10, 8); err == nil && strconv.Itoa(int(n)) == s {
		return byte(n), nil
	}
	return 0, unencodable("protocol " + strconv.Quote(s))
}

func icmpType(names map[uint8]string, s string) (byte, error) {
	for v, n := range names {
		if n == s {
			return v, nil
		}
	}
	return 0, unencodable("icmp type " + strconv.Quote(s))
}

var ctBits = map[string]uint32{"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}

func ctStates(s string) (uint32, error) {
	var mask uint32
	for _, st := range strings.Split(s, ",") {
		b, ok := ctBits[st]
		if !ok || mask&b != 0 {
			return 0, unencodable("ct state " + strconv.Quote(s))
		}
		mask |= b
	}
	return mask, nil
}

// ifnameData is the compare of an interface name: the name and its NUL
// padded to 16 bytes, or a name ending in * its prefix alone.
func ifnameData(tok string) ([]byte, error) {
	name, err := plainString(tok)
	if err != nil {
		return nil, err
	}
	if p, ok := strings.CutSuffix(name, "*"); ok {
		if p == "" || !plainName(p) {
			return nil, unencodable("interface")
		}
		return []byte(p), nil
	}
	if !plainName(name) || len(name) >= unix.IFNAMSIZ {
		return nil, unencodable("interface")
	}
	data := make([]byte, unix.IFNAMSIZ)
	copy(data, name)
	return data, nil
}

// plainString is a quoted token's text when it holds only characters nft
// takes as they are (letters, digits, space and a few signs).
func plainString(tok string) (string, error) {
	if len(tok) < 2 || tok[0] != '"' || tok[len(tok)-1] != '"' {
		return "", unencodable("string")
	}
	s := tok[1 : len(tok)-1]
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(" _-.:[]/+=@,#*", c) >= 0) {
			return "", unencodable("string")
		}
	}
	return s, nil
}

// plainName: a chain, set or interface name of letters, digits, _ . -.
func plainName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}
