package ipt

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ipset's netlink interface (linux/netfilter/ipset/ip_set.h), read
// directly: `ipset list` of a set of 50,000 networks is a process that
// formats every member as text for moat to parse and sort again (about
// 60 ms of the 100 ms a refresh at 100,000 spent reading its two policy
// sets, twice per command); the dump itself is 17 to 20 ms.
const (
	nfnlSubsysIPSet = 6
	ipsetCmdList    = 7
	ipsetProtocol   = 7

	ipsetAttrProtocol = 1
	ipsetAttrSetname  = 2
	ipsetAttrTypename = 3
	ipsetAttrRevision = 4
	ipsetAttrFamily   = 5
	ipsetAttrFlags    = 6
	ipsetAttrData     = 7
	ipsetAttrADT      = 8
	ipsetAttrLineno   = 9

	// Inside IPSET_ATTR_DATA.
	ipsetAttrIP         = 1
	ipsetAttrCIDR       = 3
	ipsetAttrInitval    = 17 // the header's: random hash seed
	ipsetAttrHashsize   = 18
	ipsetAttrMaxelem    = 19
	ipsetAttrReferences = 25
	ipsetAttrMemsize    = 26
	ipsetAttrIPAddrV4   = 1
	ipsetAttrIPAddrV6   = 2

	ipsetFlagListSetname = 1 << 1
	ipsetFlagListHeader  = 1 << 2

	nlaTypeMask = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
)

// errIpsetNetlink marks a netlink answer moat cannot read (another
// protocol version, a message cut short): the caller asks the ipset
// program instead.
var errIpsetNetlink = errors.New("ipset netlink")

// ipsetConn is one netlink socket for a command's ipset reads.
type ipsetConn struct{ c *netlink.Conn }

func dialIpset() (*ipsetConn, error) {
	// Receive buffers of 64 KiB: the kernel sizes each part of a dump
	// after the reader's buffer (up to 32 KiB), and a buffer sized to
	// each message kept the parts at 4 KiB: 327 parts for 50,000 IPv4
	// networks instead of 38, each a walk of the set from its start.
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{MessageBufferSize: 1 << 16})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errIpsetNetlink, err)
	}
	return &ipsetConn{c: c}, nil
}

func (c *ipsetConn) Close() error { return c.c.Close() }

// list dumps one set (name) or every set (name ""), with flags
// (ipsetFlagList*: names or headers only).
func (c *ipsetConn) list(name string, flags uint32) ([]netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint8(ipsetAttrProtocol, ipsetProtocol)
	if name != "" {
		ae.String(ipsetAttrSetname, name)
	}
	if flags != 0 {
		ae.Bytes(ipsetAttrFlags|unix.NLA_F_NET_BYTEORDER, binary.BigEndian.AppendUint32(nil, flags))
	}
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysIPSet<<8 | ipsetCmdList), Flags: netlink.Request | netlink.Dump | netlink.Acknowledge},
		Data:   append([]byte{unix.AF_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	msgs, err := c.c.Execute(req)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: list %q: %w", errIpsetNetlink, name, err)
	}
	return msgs, nil
}

// names lists the names of every set.
func (c *ipsetConn) names() ([]string, error) {
	msgs, err := c.list("", ipsetFlagListSetname)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range msgs {
		err := walkAttrs(nfPayload(m), func(typ uint16, v []byte) {
			if typ == ipsetAttrSetname {
				out = append(out, cString(v))
			}
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// maxelem is the most entries a set takes, from its header (0: unknown).
func (c *ipsetConn) maxelem(name string) int {
	msgs, err := c.list(name, ipsetFlagListHeader)
	if err != nil {
		return 0
	}
	n := 0
	for _, m := range msgs {
		_ = walkAttrs(nfPayload(m), func(typ uint16, v []byte) {
			if typ != ipsetAttrData {
				return
			}
			_ = walkAttrs(v, func(typ uint16, v []byte) {
				if typ == ipsetAttrMaxelem && len(v) == 4 {
					n = int(binary.BigEndian.Uint32(v))
				}
			})
		})
	}
	return n
}

// ipsetMember is a member of a set as the kernel dumps it: its network
// and, in the order dumped, any other attribute (a flag such as nomatch,
// a timeout, a comment, a port), so that a member added by hand with
// one differs from the plain network.
type ipsetMember struct {
	p     netip.Prefix
	extra string
}

// hashSet hashes a set as the kernel holds it, read over netlink: its
// type, family and header without the hash seed, hash size, references
// and size in memory (none of them part of what was loaded: the same
// networks loaded again differ in them), and its members sorted (the
// kernel dumps them in hash order, which the random seed decides). A
// missing set is said to be missing. The form is moat's own, tagged so
// that it never equals a hash of `ipset list`'s text (hashSetListing).
func (c *ipsetConn) hashSet(h io.Writer, name string) error {
	head, members, missing, err := c.readSet(name, 0)
	if err != nil {
		return err
	}
	writeSetDigest(h, name, head, members, missing)
	return nil
}

// hashSetLoaded is hashSet of a set whose members are nets (what moat
// loaded into it): the header is read, the members are not. It equals
// hashSet of the set when it holds exactly nets.
func (c *ipsetConn) hashSetLoaded(h io.Writer, name string, nets []netip.Prefix) error {
	head, _, missing, err := c.readSet(name, ipsetFlagListHeader)
	if err != nil {
		return err
	}
	members := make([]ipsetMember, len(nets))
	for i, p := range nets {
		members[i] = ipsetMember{p: p.Masked()}
	}
	sortMembers(members)
	writeSetDigest(h, name, head, members, missing)
	return nil
}

func writeSetDigest(h io.Writer, name string, head []string, members []ipsetMember, missing bool) {
	if missing {
		fmt.Fprintf(h, "set %s missing\n", name)
		return
	}
	fmt.Fprintf(h, "set %s (netlink)\n", name)
	for _, l := range head {
		fmt.Fprintln(h, l)
	}
	hashMembers(h, members)
}

// sortMembers sorts members by address, then length and family, then
// their other attributes: one order for the members read and for those
// loaded. Plain members (no other attribute: all of moat's) are sorted by
// radix on integer keys, the passes over bytes every key shares skipped:
// a comparison sort of 50,000 members was a tenth of a command's CPU at
// 100,000 entries.
func sortMembers(members []ipsetMember) {
	keys := make([]memberKey, len(members))
	plain := true
	for i := range members {
		m := &members[i]
		a := m.p.Addr().As16()
		bits := m.p.Bits() + 1 // 0 for none
		if m.p.Addr().Is4() {
			bits += 256 // not the IPv6 member ::ffff:a.b.c.d
		}
		keys[i] = memberKey{w: [3]uint64{uint64(bits), binary.BigEndian.Uint64(a[8:]), binary.BigEndian.Uint64(a[:8])}, idx: i}
		plain = plain && m.extra == ""
	}
	compare := func(a, b memberKey) int {
		for f := 2; f >= 0; f-- {
			if c := cmp.Compare(a.w[f], b.w[f]); c != 0 {
				return c
			}
		}
		return strings.Compare(members[a.idx].extra, members[b.idx].extra)
	}
	switch {
	case slices.IsSortedFunc(keys, compare):
		return // what moat loaded comes sorted
	case plain:
		radixSortKeys(keys)
	default:
		slices.SortFunc(keys, compare)
	}
	sorted := make([]ipsetMember, len(members))
	for i, k := range keys {
		sorted[i] = members[k.idx]
	}
	copy(members, sorted)
}

type memberKey struct {
	w   [3]uint64 // bits, lo, hi: least significant first
	idx int
}

// radixSortKeys sorts keys by hi, then lo, then bits: a stable counting
// sort per byte, least significant first (bits' two bytes, lo's eight,
// hi's eight), skipping a byte that all keys share.
func radixSortKeys(keys []memberKey) {
	if len(keys) < 2 {
		return
	}
	tmp := make([]memberKey, len(keys))
	src, dst := keys, tmp
	for pass := 0; pass < 18; pass++ {
		f, shift := 0, 8*pass
		switch {
		case pass >= 10:
			f, shift = 2, 8*(pass-10)
		case pass >= 2:
			f, shift = 1, 8*(pass-2)
		}
		var count [256]int
		for i := range src {
			count[byte(src[i].w[f]>>shift)]++
		}
		if count[byte(src[0].w[f]>>shift)] == len(src) {
			continue // every key has this byte
		}
		pos := 0
		for d := range count {
			c := count[d]
			count[d] = pos
			pos += c
		}
		for i := range src {
			d := byte(src[i].w[f] >> shift)
			dst[count[d]] = src[i]
			count[d]++
		}
		src, dst = dst, src
	}
	if &src[0] != &keys[0] {
		copy(keys, src)
	}
}

// readSet reads a set's header lines (sorted) and members (sorted; none
// with ipsetFlagListHeader), or says it is missing.
func (c *ipsetConn) readSet(name string, flags uint32) (head []string, members []ipsetMember, missing bool, err error) {
	msgs, err := c.list(name, flags)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil, true, nil
	}
	if err != nil {
		return nil, nil, false, err
	}
	for _, m := range msgs {
		var perr error
		err := walkAttrs(nfPayload(m), func(typ uint16, v []byte) {
			switch typ {
			case ipsetAttrProtocol, ipsetAttrSetname, ipsetAttrLineno:
			case ipsetAttrData:
				perr = errors.Join(perr, walkAttrs(v, func(typ uint16, v []byte) {
					switch typ {
					case ipsetAttrInitval, ipsetAttrHashsize, ipsetAttrReferences, ipsetAttrMemsize:
					default:
						head = append(head, fmt.Sprintf("data %d %x", typ, v))
					}
				}))
			case ipsetAttrADT:
				perr = errors.Join(perr, walkAttrs(v, func(typ uint16, v []byte) {
					if typ != ipsetAttrData {
						members = append(members, ipsetMember{extra: fmt.Sprintf("adt %d %x", typ, v)})
						return
					}
					mb, err := parseMember(v)
					perr = errors.Join(perr, err)
					members = append(members, mb)
				}))
			default:
				head = append(head, fmt.Sprintf("attr %d %x", typ, v))
			}
		})
		if err = errors.Join(err, perr); err != nil {
			return nil, nil, false, fmt.Errorf("%w: set %s: %w", errIpsetNetlink, name, err)
		}
	}
	// The header comes with the first message; a repeat of it in a
	// later one says nothing more.
	slices.Sort(head)
	head = slices.Compact(head)
	sortMembers(members)
	return head, members, false, nil
}

// hashMembers writes the members in a compact binary form (sorted).
func hashMembers(h io.Writer, members []ipsetMember) {
	buf := make([]byte, 0, 64*1024)
	for _, m := range members {
		if len(buf) > 60*1024 {
			_, _ = h.Write(buf)
			buf = buf[:0]
		}
		a := m.p.Addr().As16()
		buf = append(buf, 'm')
		buf = append(buf, a[:]...)
		buf = append(buf, byte(m.p.Bits()+1), byte(len(m.extra)>>8), byte(len(m.extra)))
		if m.p.Addr().Is4() {
			buf = append(buf, '4')
		}
		buf = append(buf, m.extra...)
	}
	_, _ = h.Write(buf)
	fmt.Fprintf(h, "\n%d members\n", len(members))
}

// parseMember reads one member's attributes.
func parseMember(v []byte) (ipsetMember, error) {
	var mb ipsetMember
	var addr netip.Addr
	bits := -1
	var extra []string
	err := walkAttrs(v, func(typ uint16, v []byte) {
		switch {
		case typ == ipsetAttrIP && !addr.IsValid():
			_ = walkAttrs(v, func(t uint16, v []byte) {
				if (t == ipsetAttrIPAddrV4 || t == ipsetAttrIPAddrV6) && !addr.IsValid() {
					addr, _ = netip.AddrFromSlice(v)
					return
				}
				extra = append(extra, fmt.Sprintf("ip %d %x", t, v))
			})
		case typ == ipsetAttrCIDR && len(v) == 1 && bits < 0:
			bits = int(v[0])
		default:
			extra = append(extra, fmt.Sprintf("%d %x", typ, v))
		}
	})
	if !addr.IsValid() {
		extra = append(extra, fmt.Sprintf("raw %x", v))
	} else {
		if bits < 0 {
			bits = addr.BitLen()
		}
		p := netip.PrefixFrom(addr, bits)
		if !p.IsValid() {
			extra = append(extra, fmt.Sprintf("cidr %d", bits))
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		mb.p = p
	}
	mb.extra = strings.Join(extra, ",")
	return mb, err
}

// nfPayload is a netfilter message's attributes (after struct nfgenmsg).
func nfPayload(m netlink.Message) []byte {
	if len(m.Data) < 4 {
		return nil
	}
	return m.Data[4:]
}

// walkAttrs calls fn for each netlink attribute of b, its type without
// the nested and byte-order flags. It allocates nothing: a dump of
// 50,000 members has 150,000 of them.
func walkAttrs(b []byte, fn func(typ uint16, v []byte)) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return fmt.Errorf("attribute cut short (%d bytes)", len(b))
		}
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < 4 || l > len(b) {
			return fmt.Errorf("attribute of length %d in %d bytes", l, len(b))
		}
		fn(typ, b[4:l])
		al := (l + 3) &^ 3
		if al > len(b) {
			al = len(b)
		}
		b = b[al:]
	}
	return nil
}

// cString is a NUL-terminated netlink string.
func cString(v []byte) string {
	if i := slices.Index(v, 0); i >= 0 {
		v = v[:i]
	}
	return string(v)
}

// kind is a set's type and family as the kernel lists them in its header
// ("hash:net inet"; family 0 for types without one, such as list:set).
func (c *ipsetConn) kind(name string) (typ string, family uint8, err error) {
	msgs, err := c.list(name, ipsetFlagListHeader)
	if err != nil {
		return "", 0, err
	}
	for _, m := range msgs {
		err := walkAttrs(nfPayload(m), func(t uint16, v []byte) {
			switch {
			case t == ipsetAttrTypename && typ == "":
				typ = cString(v)
			case t == ipsetAttrFamily && len(v) == 1 && family == 0:
				family = v[0]
			}
		})
		if err != nil {
			return "", 0, fmt.Errorf("%w: set %s: %w", errIpsetNetlink, name, err)
		}
	}
	return typ, family, nil
}
