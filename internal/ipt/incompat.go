package ipt

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Which rule makes iptables-save print "# Table `filter' is
// incompatible": iptables-nft (1.8.x) prints a table only when every
// expression of every rule is one it can turn back into iptables text
// (nft_is_expr_compatible of iptables' nft.c), and every base chain is
// one of the table's built-in chains at its hook and priority. The rules
// (and chains) that are not are read over netlink, so that the admin is
// told which one to look at, not only the table.

// xtCompatExprs are the expressions iptables-nft reads back whatever
// their data.
var xtCompatExprs = []string{"match", "target", "payload", "meta", "cmp", "bitwise", "counter", "immediate", "lookup", "range"}

// xtExprCompatible says whether iptables-nft reads back e: one of
// xtCompatExprs, a limit in packets without flags, a log to an NFLOG
// group.
func xtExprCompatible(e nlExpr) bool {
	if slices.Contains(xtCompatExprs, e.name) {
		return true
	}
	switch e.name {
	case "limit":
		typ, flags := uint32(0), uint32(0)
		_ = walkAttrs(e.data, func(t uint16, v []byte) {
			if len(v) == 4 {
				switch t {
				case 4: // NFTA_LIMIT_TYPE
					typ = binary.BigEndian.Uint32(v)
				case 5: // NFTA_LIMIT_FLAGS
					flags = binary.BigEndian.Uint32(v)
				}
			}
		})
		return typ == 0 && flags == 0 // NFT_LIMIT_PKTS
	case "log":
		group := false
		_ = walkAttrs(e.data, func(t uint16, _ []byte) { group = group || t == 1 }) // NFTA_LOG_GROUP
		return group
	}
	return false
}

// builtinHooks are the built-in chains of iptables' tables: hook and
// priority.
var builtinHooks = map[string]map[string][2]int32{
	"filter":   {"INPUT": {1, 0}, "FORWARD": {2, 0}, "OUTPUT": {3, 0}},
	"raw":      {"PREROUTING": {0, -300}, "OUTPUT": {3, -300}},
	"mangle":   {"PREROUTING": {0, -150}, "INPUT": {1, -150}, "FORWARD": {2, -150}, "OUTPUT": {3, -150}, "POSTROUTING": {4, -150}},
	"nat":      {"PREROUTING": {0, -100}, "INPUT": {1, 100}, "OUTPUT": {3, -100}, "POSTROUTING": {4, 100}},
	"security": {"INPUT": {1, 150}, "FORWARD": {2, 150}, "OUTPUT": {3, 150}},
}

// incompatibleParts lists what in table (of family proto) iptables-save
// cannot print: each rule by chain and handle with the expressions it
// cannot read, and each base chain that is not one of the table's
// built-in chains at its hook and priority. Read over netlink.
func incompatibleParts(proto uint8, table string) ([]string, error) {
	c, err := dialNetfilter()
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }() // read only
	var out []string
	chains, err := dumpBaseChains(c, proto, table)
	if err != nil {
		return nil, err
	}
	for _, ch := range chains {
		want, ok := builtinHooks[table][ch.name]
		if !ok || want != ch.hook {
			out = append(out, fmt.Sprintf("base chain %q (hook %d, priority %d), which is not one of iptables' built-in chains of table %s", ch.name, ch.hook[0], ch.hook[1], table))
		}
	}
	rules, err := dumpRules(context.Background(), c, proto, table)
	if err != nil {
		return nil, err
	}
	for _, r := range rules {
		var bad []string
		for _, e := range r.exprs {
			if !xtExprCompatible(e) && !slices.Contains(bad, e.name) {
				bad = append(bad, e.name)
			}
		}
		if len(bad) > 0 {
			out = append(out, fmt.Sprintf("rule handle %d in chain %q (nftables expression %s)", r.handle, r.chain, strings.Join(bad, ", ")))
		}
	}
	return out, nil
}

type nlBaseChain struct {
	name string
	hook [2]int32 // hook number, priority
}

// dumpBaseChains reads the base chains (those with a hook) of one table.
func dumpBaseChains(c *netlink.Conn, proto uint8, table string) ([]nlBaseChain, error) {
	msgs, _, err := executeWithin(context.Background(), c, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETCHAIN), Flags: netlink.Request | netlink.Dump},
		Data:   []byte{proto, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return nil, fmt.Errorf("list chains over netlink: %w", err)
	}
	var out []nlBaseChain
	for _, m := range msgs {
		var ch nlBaseChain
		var tbl string
		hooked := false
		if err := walkAttrs(nfPayload(m), func(typ uint16, v []byte) {
			switch typ {
			case nftaChainTable:
				tbl = cString(v)
			case nftaChainName:
				ch.name = cString(v)
			case 4: // NFTA_CHAIN_HOOK
				hooked = true
				_ = walkAttrs(v, func(t uint16, v []byte) {
					if len(v) == 4 {
						switch t {
						case 1: // NFTA_HOOK_HOOKNUM
							ch.hook[0] = int32(binary.BigEndian.Uint32(v))
						case 2: // NFTA_HOOK_PRIORITY
							ch.hook[1] = int32(binary.BigEndian.Uint32(v))
						}
					}
				})
			}
		}); err != nil {
			return nil, fmt.Errorf("list chains over netlink: %w", err)
		}
		if tbl == table && hooked {
			out = append(out, ch)
		}
	}
	return out, nil
}
