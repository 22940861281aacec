package ipt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
)

// With iptables-nft, MOAT-GEN is a chain of the nftables table ip (ip6)
// filter and each of its rules, `-m comment --comment "C" -j RETURN`, is
// an nftables rule of three expressions: the compat match comment
// (revision 0: the comment in 256 bytes), a counter and a return. moat
// writes them itself when only the record changes (the "changing" mark
// before a set is changed in place, the record after): one nftables
// transaction for both families, instead of one iptables-restore per
// family (three processes for a change of sets). The expressions are
// exactly those iptables-restore writes, so iptables-save and iptables -S
// list them as before (TestKernelGenRecordNetlink compares the rules'
// netlink dumps and the listings).

const (
	xtCommentLen = 256 // XT_MAX_COMMENT_LEN
	nftReturn    = 0xfffffffb
	nlmFAppend   = 0x800 // NLM_F_APPEND
)

var errGenComment = errors.New("a MOAT-GEN comment iptables cannot hold")

// genRuleExprs are the expressions of one MOAT-GEN rule with comment c,
// as the kernel dumps those iptables-restore wrote.
func genRuleExprs(c string) ([]byte, error) {
	if len(c) >= xtCommentLen || strings.IndexByte(c, 0) >= 0 {
		return nil, errGenComment
	}
	info := make([]byte, xtCommentLen)
	copy(info, c)
	match, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: nftaXtName, Data: []byte("comment\x00")},
		{Type: nftaXtRev, Data: []byte{0, 0, 0, 0}},
		{Type: nftaXtInfo, Data: info},
	})
	if err != nil {
		return nil, err
	}
	counter, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_COUNTER_BYTES, Data: make([]byte, 8)},
		{Type: unix.NFTA_COUNTER_PACKETS, Data: make([]byte, 8)},
	})
	if err != nil {
		return nil, err
	}
	verdict, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: nftaVerdictCode, Data: binary.BigEndian.AppendUint32(nil, nftReturn)}})
	if err != nil {
		return nil, err
	}
	data, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | nftaDataVerdict, Data: verdict}})
	if err != nil {
		return nil, err
	}
	imm, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: nftaImmediateDreg, Data: []byte{0, 0, 0, 0}},
		{Type: unix.NLA_F_NESTED | nftaImmediateData, Data: data},
	})
	if err != nil {
		return nil, err
	}
	var elems []netlink.Attribute
	for _, e := range []struct {
		name string
		data []byte
	}{{"match", match}, {"counter", counter}, {"immediate", imm}} {
		el, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: nftaExprName, Data: []byte(e.name + "\x00")},
			{Type: unix.NLA_F_NESTED | nftaExprData, Data: e.data},
		})
		if err != nil {
			return nil, err
		}
		elems = append(elems, netlink.Attribute{Type: unix.NLA_F_NESTED | nftaListElem, Data: el})
	}
	return netlink.MarshalAttributes(elems)
}

// writeGen replaces the rules of MOAT-GEN in each family of recs with
// rules of those comments (genComments), in one nftables transaction,
// counted for LastApply. MOAT-GEN must exist in each (the caller
// checks: the transaction fails whole otherwise). On an error the
// caller restores the record with iptables-restore instead: a
// transaction refused committed nothing, and one whose answer was lost
// counts as unknown.
func (b *Backend) writeGen(recs map[policy.Family][]string) error {
	var x nft.XtBatch
	for i, f := range families {
		comments, ok := recs[f.fam]
		if !ok {
			continue
		}
		proto := nlFamilies[i].proto
		chain := []netlink.Attribute{
			{Type: nftaRuleTable, Data: []byte(tableFilter + "\x00")},
			{Type: nftaRuleChain, Data: []byte(GenChain + "\x00")},
		}
		x.Add(proto, unix.NFT_MSG_DELRULE, 0, chain)
		for _, c := range comments {
			exprs, err := genRuleExprs(c)
			if err != nil {
				return fmt.Errorf("MOAT-GEN record %q: %w", c, err)
			}
			x.Add(proto, unix.NFT_MSG_NEWRULE, netlink.Create|nlmFAppend,
				append(chain[:2:2], netlink.Attribute{Type: unix.NLA_F_NESTED | nftaRuleExpressions, Data: exprs}))
		}
	}
	err := x.Send()
	if err != nil {
		b.track.known = false
		return err
	}
	b.track.commits++
	return nil
}
