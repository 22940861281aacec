package labtest

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// RawExpr is one expression of a rule as netlink carries it: its name and
// its NFTA_EXPR_DATA (nil: none).
type RawExpr struct {
	Name string
	Data []byte
}

// ExprAttrs is the NFTA_EXPR_DATA of an expression made of attrs, each a
// 32-bit big-endian value (the registers, keys, ops, lengths of most
// expressions).
func ExprAttrs(attrs map[uint16]uint32) []byte {
	var as []netlink.Attribute
	for typ := range uint16(32) {
		if v, ok := attrs[typ]; ok {
			as = append(as, netlink.Attribute{Type: typ, Data: binary.BigEndian.AppendUint32(nil, v)})
		}
	}
	b, err := netlink.MarshalAttributes(as)
	if err != nil {
		panic(err) // only fixed sizes above: cannot fail
	}
	return b
}

// ReplaceRuleRaw replaces, over raw netlink in the calling thread's
// network namespace (one NFT_MSG_NEWRULE with NLM_F_REPLACE, in a batch
// of its own), the first rule of table (of family proto: NFPROTO_INET,
// NFPROTO_IPV4...) for which pick says true (given its chain, handle,
// user data and expression names) with the rule edit makes of its
// expressions: what a tool other than nft or iptables can write, such as
// expressions google/nftables cannot decode.
func ReplaceRuleRaw(proto uint8, table string, pick func(chain string, handle uint64, udata []byte, names []string) bool, edit func([]RawExpr) []RawExpr) error {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")}})
	if err != nil {
		return err
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{proto, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return fmt.Errorf("dump the rules of %s: %w", table, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return err
		}
		ad.ByteOrder = binary.BigEndian
		var keep []netlink.Attribute
		var chain string
		var handle uint64
		var udata []byte
		var exprs []RawExpr
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_POSITION, unix.NFTA_RULE_ID:
				continue
			case unix.NFTA_RULE_CHAIN:
				chain = ad.String()
			case unix.NFTA_RULE_HANDLE:
				handle = ad.Uint64()
			case unix.NFTA_RULE_USERDATA:
				udata = ad.Bytes()
			case unix.NFTA_RULE_EXPRESSIONS:
				ad.Nested(func(nad *netlink.AttributeDecoder) error {
					for nad.Next() {
						var e RawExpr
						nad.Nested(func(ead *netlink.AttributeDecoder) error {
							for ead.Next() {
								switch ead.Type() {
								case unix.NFTA_EXPR_NAME:
									e.Name = ead.String()
								case unix.NFTA_EXPR_DATA:
									e.Data = ead.Bytes()
								}
							}
							return nil
						})
						exprs = append(exprs, e)
					}
					return nil
				})
				continue
			}
			keep = append(keep, netlink.Attribute{Type: ad.Type(), Data: ad.Bytes()})
		}
		if err := ad.Err(); err != nil {
			return err
		}
		names := make([]string, len(exprs))
		for i, e := range exprs {
			names[i] = e.Name
		}
		if !pick(chain, handle, udata, names) {
			continue
		}
		var elems []netlink.Attribute
		for _, e := range edit(exprs) {
			ea := []netlink.Attribute{{Type: unix.NFTA_EXPR_NAME, Data: []byte(e.Name + "\x00")}}
			if e.Data != nil {
				ea = append(ea, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: e.Data})
			}
			b, err := netlink.MarshalAttributes(ea)
			if err != nil {
				return err
			}
			elems = append(elems, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: b})
		}
		list, err := netlink.MarshalAttributes(elems)
		if err != nil {
			return err
		}
		data, err := netlink.MarshalAttributes(append(keep, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: list}))
		if err != nil {
			return err
		}
		hdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}
		if _, err := conn.SendMessages([]netlink.Message{
			{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request}, Data: hdr},
			{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE), Flags: netlink.Request | netlink.Acknowledge | netlink.Replace},
				Data: append([]byte{proto, unix.NFNETLINK_V0, 0, 0}, data...)},
			{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request}, Data: hdr},
		}); err != nil {
			return err
		}
		if _, err := conn.Receive(); err != nil {
			return fmt.Errorf("replace rule %d of %s %s: %w", handle, table, chain, err)
		}
		return nil
	}
	return fmt.Errorf("no rule of %s to replace", table)
}

// BeforeVerdict is an edit for ReplaceRuleRaw: the rule's expressions
// with e put before the final one, the verdict (e alone for a rule of
// none).
func BeforeVerdict(e RawExpr) func([]RawExpr) []RawExpr {
	return func(es []RawExpr) []RawExpr {
		if len(es) == 0 {
			return []RawExpr{e}
		}
		return append(es[:len(es)-1:len(es)-1], e, es[len(es)-1])
	}
}
