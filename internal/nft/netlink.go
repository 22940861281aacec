package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/ruleset"
)

// kernelAvailable asks the kernel over netlink whether nf_tables answers
// us (module, permission), without starting a process.
func kernelAvailable() error {
	c, err := gnft.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if _, err := c.ListTablesOfFamily(gnft.TableFamilyINet); err != nil {
		return fmt.Errorf("nftables: the kernel refuses to list tables: %w", err)
	}
	return nil
}

// Reader reads moat's table from the kernel without the nft program.
//
// Every `nft list ...` (even `list tables`, even --terse) makes nft 1.0.x
// fetch and decode every element of every set into its cache first: with
// 200,000 bans each call took 10 to 20 s, so status, rule edits and the
// guard's ban checks took as long. Over netlink, the kernel dumps only what
// is asked: a table list, a chain's rules, one set's elements.
type Reader interface {
	// TableExists reports whether moat's table is loaded.
	TableExists() (bool, error)
	// Counters are the counters of moat's rules, summed by origin ID.
	Counters() (map[string]ruleset.Counter, error)
	// Bans lists a ban set's elements (address, timeout, time left,
	// comment).
	Bans(set string) ([]ruleset.Ban, error)
}

// NetlinkReader is the Reader on the kernel of the calling thread's
// network namespace.
type NetlinkReader struct{}

var moatTable = &gnft.Table{Name: TableName, Family: gnft.TableFamilyINet}

// TableExists lists the inet tables.
func (NetlinkReader) TableExists() (bool, error) {
	c, err := gnft.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(gnft.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("nftables: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}

// Counters reads the rules of moat's chains: each rule's comment (its
// origin) and its counter expression.
func (r NetlinkReader) Counters() (map[string]ruleset.Counter, error) {
	c, err := gnft.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	if ok, err := r.TableExists(); err != nil || !ok {
		if err == nil {
			err = fmt.Errorf("no table inet %s", TableName)
		}
		return nil, fmt.Errorf("nftables: list table inet %s: %w", TableName, err)
	}
	chains, err := c.ListChainsOfTableFamily(gnft.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: list chains: %w", err)
	}
	out := map[string]ruleset.Counter{}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != TableName {
			continue
		}
		rules, err := c.GetRules(moatTable, ch)
		if err != nil {
			return nil, fmt.Errorf("nftables: list chain %s: %w", ch.Name, err)
		}
		for _, rule := range rules {
			id := ruleset.OriginID(ruleComment(rule.UserData))
			if id == "" {
				continue
			}
			for _, e := range rule.Exprs {
				if n, ok := e.(*expr.Counter); ok {
					sum := out[id]
					sum.Packets += n.Packets
					sum.Bytes += n.Bytes
					out[id] = sum
				}
			}
		}
	}
	return out, nil
}

// ruleComment finds the comment in a rule's user data: TLVs of a type
// byte and a length byte, the comment (type 0) NUL-terminated.
func ruleComment(ud []byte) string {
	for len(ud) >= 2 {
		typ, n := ud[0], int(ud[1])
		if len(ud) < 2+n {
			return ""
		}
		if typ == 0 {
			v := ud[2 : 2+n]
			for len(v) > 0 && v[len(v)-1] == 0 {
				v = v[:len(v)-1]
			}
			return string(v)
		}
		ud = ud[2+n:]
	}
	return ""
}

// dumpBuffer is the receive buffer for dumps. The kernel sizes each part
// of a dump to the reader's buffer (up to 32 KiB) and walks a hash set from
// its start for every part, so small parts make a dump of n elements cost
// n²: with google/nftables' page-sized reads, 200,000 bans took 50 s.
const dumpBuffer = 32 << 10

// Bans dumps one set's elements.
func (NetlinkReader) Bans(set string) ([]ruleset.Ban, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{MessageBufferSize: dumpBuffer})
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	defer func() { _ = conn.Close() }() // read only
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(set + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: netlink.Request | netlink.Dump,
		},
		// nfgenmsg: family, version, resource ID.
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		return nil, fmt.Errorf("nftables: list set %s: %w", set, err)
	}
	var out []ruleset.Ban
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		bans, err := parseElemList(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("nftables: list set %s: %w", set, err)
		}
		out = append(out, bans...)
	}
	return out, nil
}

// parseElemList reads the elements of one NFT_MSG_NEWSETELEM message.
func parseElemList(data []byte) ([]ruleset.Ban, error) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	var out []ruleset.Ban
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				if list.Type() != unix.NFTA_LIST_ELEM {
					continue
				}
				var ban ruleset.Ban
				end := false
				list.Nested(func(el *netlink.AttributeDecoder) error {
					el.ByteOrder = binary.BigEndian
					for el.Next() {
						switch el.Type() {
						case unix.NFTA_SET_ELEM_KEY:
							el.Nested(func(k *netlink.AttributeDecoder) error {
								for k.Next() {
									if k.Type() == unix.NFTA_DATA_VALUE {
										if a, ok := netip.AddrFromSlice(k.Bytes()); ok {
											ban.Addr = a.Unmap()
										}
									}
								}
								return nil
							})
						case unix.NFTA_SET_ELEM_FLAGS:
							end = el.Uint32()&unix.NFT_SET_ELEM_INTERVAL_END != 0
						case unix.NFTA_SET_ELEM_TIMEOUT:
							ban.Timeout = time.Duration(el.Uint64()) * time.Millisecond
						case unix.NFTA_SET_ELEM_EXPIRATION:
							ban.Expires = time.Duration(el.Uint64()) * time.Millisecond
						case unix.NFTA_SET_ELEM_USERDATA:
							ban.Reason = ruleComment(el.Bytes()) // comment: type 0, as a rule's
						}
					}
					return nil
				})
				if ban.Addr.IsValid() && !end {
					out = append(out, ban)
				}
			}
			return nil
		})
	}
	return out, ad.Err()
}
