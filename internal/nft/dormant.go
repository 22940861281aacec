package nft

import (
	"encoding/binary"
	"fmt"
	"slices"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// A table with the dormant flag ('nft add table ... { flags dormant; }':
// one committed change that touches no chain, rule or set) filters nothing:
// none of its base chains is hooked. moat's drift check reads the flag of
// the tables that hold its rules, and a repair clears it.

// XtablesTables are the iptables-nft tables that hold moat's iptables
// chains (family as nft names it, and name).
var XtablesTables = [][2]string{{"ip", "filter"}, {"ip", "raw"}, {"ip6", "filter"}, {"ip6", "raw"}}

// TableDormant says whether a table as google/nftables read it carries the
// dormant flag. google/nftables v0.3.0 decodes NFTA_TABLE_FLAGS in the
// host's byte order (its decoder is not told the big-endian order): the
// value is turned back to the bytes the kernel sent and read big-endian.
func TableDormant(t *gnft.Table) bool {
	flags := binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, t.Flags))
	return flags&unix.NFT_TABLE_F_DORMANT != 0
}

// DormantTables lists, of the tables named (family as nft names it, and
// name), those in the calling thread's namespace that are dormant.
func DormantTables(names [][2]string) ([][2]string, error) {
	tables, err := kernelTables()
	if err != nil {
		return nil, err
	}
	var out [][2]string
	for _, t := range tables {
		n := [2]string{familyNames[t.Family], t.Name}
		if slices.Contains(names, n) && TableDormant(t) {
			out = append(out, n)
		}
	}
	return out, nil
}

// WakeTables clears the flags of the tables named (they must exist), in
// one transaction: their base chains filter again.
func WakeTables(tables [][2]string) error {
	var tx batch
	for _, t := range tables {
		fam := map[string]byte{"ip": unix.NFPROTO_IPV4, "ip6": unix.NFPROTO_IPV6, "inet": unix.NFPROTO_INET}[t[0]]
		if fam == 0 {
			return fmt.Errorf("nftables: wake table %s %s: unknown family", t[0], t[1])
		}
		data, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_TABLE_NAME, Data: []byte(t[1] + "\x00")},
			{Type: unix.NFTA_TABLE_FLAGS, Data: binary.BigEndian.AppendUint32(nil, 0)},
		})
		if err != nil {
			return err
		}
		tx.msgs = append(tx.msgs, netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE), Flags: netlink.Request | netlink.Acknowledge},
			Data:   append([]byte{fam, unix.NFNETLINK_V0, 0, 0}, data...),
		})
	}
	if err := tx.send(0); err != nil {
		return fmt.Errorf("wake tables %v: %w", tables, err)
	}
	return nil
}
