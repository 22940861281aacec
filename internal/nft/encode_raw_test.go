package nft

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// rawDump dumps one kind of object of moat's table over netlink (GETRULE,
// GETSET, GETCHAIN; GETSETELEM of set) as the kernel holds them: each
// object's attributes, handles and the set IDs dropped, hex-encoded, in
// the kernel's order.
func rawDump(typ uint16, set string) ([]string, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }()
	attrs := []netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(TableName + "\x00")}}
	if set != "" {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(set + "\x00")})
	}
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | int(typ)), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, data...),
	})
	if err != nil {
		return nil, fmt.Errorf("dump %d %s: %w", typ, set, err)
	}
	// The attributes that name an object's place rather than its
	// contents: handles, positions, set IDs.
	skip := map[uint16][]uint16{
		unix.NFT_MSG_NEWRULE:    {unix.NFTA_RULE_HANDLE, unix.NFTA_RULE_POSITION, unix.NFTA_RULE_ID},
		unix.NFT_MSG_NEWSET:     {16 /* NFTA_SET_HANDLE */, unix.NFTA_SET_ID},
		unix.NFT_MSG_NEWCHAIN:   {unix.NFTA_CHAIN_HANDLE, 11 /* NFTA_CHAIN_ID */},
		unix.NFT_MSG_NEWSETELEM: {},
	}
	var out []string
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		var parts []string
		for ad.Next() {
			if slices.Contains(skip[uint16(m.Header.Type)&0xff], ad.Type()) {
				continue
			}
			parts = append(parts, fmt.Sprintf("%d=%s", ad.Type(), hex.EncodeToString(ad.Bytes())))
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		out = append(out, strings.Join(parts, " "))
	}
	return out, nil
}
