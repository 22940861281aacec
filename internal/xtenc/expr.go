package xtenc

import (
	"encoding/binary"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nf_tables netlink attributes and values (linux/netfilter/nf_tables.h).
const (
	nftaListElem = 1
	nftaExprName = 1
	nftaExprData = 2

	nftaDataValue   = 1
	nftaDataVerdict = 2
	nftaVerdictCode = 1
	nftaVerdictChan = 2

	nftaMetaDreg = 1
	nftaMetaKey  = 2

	nftaCmpSreg = 1
	nftaCmpOp   = 2
	nftaCmpData = 3

	nftaPayloadDreg   = 1
	nftaPayloadBase   = 2
	nftaPayloadOffset = 3
	nftaPayloadLen    = 4

	nftaBitwiseSreg = 1
	nftaBitwiseDreg = 2
	nftaBitwiseLen  = 3
	nftaBitwiseMask = 4
	nftaBitwiseXor  = 5

	nftaRangeSreg = 1
	nftaRangeOp   = 2
	nftaRangeFrom = 3
	nftaRangeTo   = 4

	nftaLimitRate  = 1
	nftaLimitUnit  = 2
	nftaLimitBurst = 3
	nftaLimitType  = 4
	nftaLimitFlags = 5

	nftaImmediateDreg = 1
	nftaImmediateData = 2

	nftaCounterBytes   = 1
	nftaCounterPackets = 2

	nftaXtName = 1 // NFTA_MATCH_NAME, NFTA_TARGET_NAME
	nftaXtRev  = 2
	nftaXtInfo = 3

	nftaRuleCompatProto = 1
	nftaRuleCompatFlags = 2

	metaIIFName = 6
	metaOIFName = 7
	metaL4Proto = 16

	payloadNetwork   = 1
	payloadTransport = 2

	cmpEq  = 0
	cmpNeq = 1

	regVerdict = 0
	reg1       = 1 // NFT_REG_1: iptables-nft loads every value into it

	verdictDrop   = 0
	verdictAccept = 1
	verdictJump   = 0xfffffffd
	verdictReturn = 0xfffffffb
)

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// exprs builds the NFTA_LIST_ELEM list of a rule.
type exprs struct {
	elems []netlink.Attribute
	err   error
}

func (e *exprs) add(name string, attrs ...netlink.Attribute) {
	if e.err != nil {
		return
	}
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		e.err = err
		return
	}
	el, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: nftaExprName, Data: []byte(name + "\x00")},
		{Type: unix.NLA_F_NESTED | nftaExprData, Data: data},
	})
	if err != nil {
		e.err = err
		return
	}
	e.elems = append(e.elems, netlink.Attribute{Type: unix.NLA_F_NESTED | nftaListElem, Data: el})
}

func (e *exprs) bytes() ([]byte, error) {
	if e.err != nil {
		return nil, e.err
	}
	return netlink.MarshalAttributes(e.elems)
}

func nestData(typ uint16, v []byte) netlink.Attribute {
	b, _ := netlink.MarshalAttributes([]netlink.Attribute{{Type: nftaDataValue, Data: v}})
	return netlink.Attribute{Type: unix.NLA_F_NESTED | typ, Data: b}
}

func (e *exprs) meta(key uint32) {
	e.add("meta", netlink.Attribute{Type: nftaMetaKey, Data: be32(key)}, netlink.Attribute{Type: nftaMetaDreg, Data: be32(reg1)})
}

func (e *exprs) cmp(op uint32, data []byte) {
	e.add("cmp", netlink.Attribute{Type: nftaCmpSreg, Data: be32(reg1)}, netlink.Attribute{Type: nftaCmpOp, Data: be32(op)}, nestData(nftaCmpData, data))
}

func (e *exprs) payload(base, offset, length uint32) {
	e.add("payload",
		netlink.Attribute{Type: nftaPayloadDreg, Data: be32(reg1)},
		netlink.Attribute{Type: nftaPayloadBase, Data: be32(base)},
		netlink.Attribute{Type: nftaPayloadOffset, Data: be32(offset)},
		netlink.Attribute{Type: nftaPayloadLen, Data: be32(length)})
}

func (e *exprs) bitwise(mask []byte) {
	e.add("bitwise",
		netlink.Attribute{Type: nftaBitwiseSreg, Data: be32(reg1)},
		netlink.Attribute{Type: nftaBitwiseDreg, Data: be32(reg1)},
		netlink.Attribute{Type: nftaBitwiseLen, Data: be32(uint32(len(mask)))},
		nestData(nftaBitwiseMask, mask),
		nestData(nftaBitwiseXor, make([]byte, len(mask))))
}

func (e *exprs) rangeEq(from, to []byte) {
	e.add("range",
		netlink.Attribute{Type: nftaRangeSreg, Data: be32(reg1)},
		netlink.Attribute{Type: nftaRangeOp, Data: be32(cmpEq)},
		nestData(nftaRangeFrom, from),
		nestData(nftaRangeTo, to))
}

func (e *exprs) limit(rate, unit uint64, burst uint32) {
	e.add("limit",
		netlink.Attribute{Type: nftaLimitRate, Data: be64(rate)},
		netlink.Attribute{Type: nftaLimitUnit, Data: be64(unit)},
		netlink.Attribute{Type: nftaLimitBurst, Data: be32(burst)},
		netlink.Attribute{Type: nftaLimitType, Data: be32(0)}, // NFT_LIMIT_PKTS
		netlink.Attribute{Type: nftaLimitFlags, Data: be32(0)})
}

func (e *exprs) counter() {
	e.add("counter", netlink.Attribute{Type: nftaCounterBytes, Data: make([]byte, 8)}, netlink.Attribute{Type: nftaCounterPackets, Data: make([]byte, 8)})
}

func (e *exprs) xt(kind, name string, rev uint32, info []byte) {
	e.add(kind,
		netlink.Attribute{Type: nftaXtName, Data: []byte(name + "\x00")},
		netlink.Attribute{Type: nftaXtRev, Data: be32(rev)},
		netlink.Attribute{Type: nftaXtInfo, Data: info})
}

func (e *exprs) verdict(code uint32, chain string) {
	v := []netlink.Attribute{{Type: nftaVerdictCode, Data: be32(code)}}
	if chain != "" {
		v = append(v, netlink.Attribute{Type: nftaVerdictChan, Data: []byte(chain + "\x00")})
	}
	vb, err := netlink.MarshalAttributes(v)
	if err != nil {
		e.err = err
		return
	}
	data, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | nftaDataVerdict, Data: vb}})
	if err != nil {
		e.err = err
		return
	}
	e.add("immediate", netlink.Attribute{Type: nftaImmediateDreg, Data: be32(regVerdict)}, netlink.Attribute{Type: unix.NLA_F_NESTED | nftaImmediateData, Data: data})
}
