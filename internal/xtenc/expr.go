package xtenc

import (
	"encoding/binary"

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

	nftaRuleTable       = 1
	nftaRuleChain       = 2
	nftaRuleExpressions = 4
	nftaRuleCompat      = 5
	nftaRuleUserdata    = 7

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

// exprs builds the NFTA_LIST_ELEM list of a rule, appending netlink
// attributes (header in native byte order, value, padding to 4 bytes) to
// one buffer; a nested attribute's length is written when it ends.
type exprs struct {
	b []byte
}

type attr struct {
	typ uint16
	v   []byte
}

func (e *exprs) put(typ uint16, v []byte) {
	e.b = binary.NativeEndian.AppendUint16(e.b, uint16(4+len(v)))
	e.b = binary.NativeEndian.AppendUint16(e.b, typ)
	e.b = append(e.b, v...)
	for len(e.b)%4 != 0 {
		e.b = append(e.b, 0)
	}
}

func (e *exprs) begin(typ uint16) int {
	at := len(e.b)
	e.b = binary.NativeEndian.AppendUint16(e.b, 0)
	e.b = binary.NativeEndian.AppendUint16(e.b, unix.NLA_F_NESTED|typ)
	return at
}

func (e *exprs) end(at int) { binary.NativeEndian.PutUint16(e.b[at:], uint16(len(e.b)-at)) }

// add appends one expression: its name and its data's attributes.
func (e *exprs) add(name string, attrs ...attr) {
	el := e.begin(nftaListElem)
	e.b = binary.NativeEndian.AppendUint16(e.b, uint16(4+len(name)+1))
	e.b = binary.NativeEndian.AppendUint16(e.b, nftaExprName)
	e.b = append(e.b, name...)
	e.b = append(e.b, 0)
	for len(e.b)%4 != 0 {
		e.b = append(e.b, 0)
	}
	data := e.begin(nftaExprData)
	for _, a := range attrs {
		if a.typ&unix.NLA_F_NESTED != 0 {
			// A value nested in NFTA_DATA_VALUE, or a verdict's
			// attributes (marshaled already).
			n := e.begin(a.typ &^ unix.NLA_F_NESTED)
			if a.typ&^unix.NLA_F_NESTED == nftaImmediateData {
				e.b = append(e.b, a.v...)
			} else {
				e.put(nftaDataValue, a.v)
			}
			e.end(n)
			continue
		}
		e.put(a.typ, a.v)
	}
	e.end(data)
	e.end(el)
}

func (e *exprs) bytes() ([]byte, error) {
	if len(e.b) > 0xffff-4 { // nested by the caller under a 4-byte header
		return nil, unsupported("a rule of %d bytes", len(e.b))
	}
	return e.b, nil
}

// nestData is a value nested in NFTA_DATA_VALUE under typ.
func nestData(typ uint16, v []byte) attr { return attr{unix.NLA_F_NESTED | typ, v} }

func (e *exprs) meta(key uint32) {
	e.add("meta", attr{nftaMetaKey, be32(key)}, attr{nftaMetaDreg, be32(reg1)})
}

func (e *exprs) cmp(op uint32, data []byte) {
	e.add("cmp", attr{nftaCmpSreg, be32(reg1)}, attr{nftaCmpOp, be32(op)}, nestData(nftaCmpData, data))
}

func (e *exprs) payload(base, offset, length uint32) {
	e.add("payload",
		attr{nftaPayloadDreg, be32(reg1)},
		attr{nftaPayloadBase, be32(base)},
		attr{nftaPayloadOffset, be32(offset)},
		attr{nftaPayloadLen, be32(length)})
}

func (e *exprs) bitwise(mask []byte) {
	e.add("bitwise",
		attr{nftaBitwiseSreg, be32(reg1)},
		attr{nftaBitwiseDreg, be32(reg1)},
		attr{nftaBitwiseLen, be32(uint32(len(mask)))},
		nestData(nftaBitwiseMask, mask),
		nestData(nftaBitwiseXor, make([]byte, len(mask))))
}

func (e *exprs) rangeEq(from, to []byte) {
	e.add("range",
		attr{nftaRangeSreg, be32(reg1)},
		attr{nftaRangeOp, be32(cmpEq)},
		nestData(nftaRangeFrom, from),
		nestData(nftaRangeTo, to))
}

func (e *exprs) limit(rate, unit uint64, burst uint32) {
	e.add("limit",
		attr{nftaLimitRate, be64(rate)},
		attr{nftaLimitUnit, be64(unit)},
		attr{nftaLimitBurst, be32(burst)},
		attr{nftaLimitType, be32(0)}, // NFT_LIMIT_PKTS
		attr{nftaLimitFlags, be32(0)})
}

func (e *exprs) counter() {
	e.add("counter", attr{nftaCounterBytes, make([]byte, 8)}, attr{nftaCounterPackets, make([]byte, 8)})
}

func (e *exprs) xt(kind, name string, rev uint32, info []byte) {
	e.add(kind,
		attr{nftaXtName, []byte(name + "\x00")},
		attr{nftaXtRev, be32(rev)},
		attr{nftaXtInfo, info})
}

// verdict writes the immediate expression of a verdict (a jump names its
// chain).
func (e *exprs) verdict(code uint32, chain string) {
	var v exprs
	vd := v.begin(nftaDataVerdict)
	v.put(nftaVerdictCode, be32(code))
	if chain != "" {
		v.put(nftaVerdictChan, []byte(chain+"\x00"))
	}
	v.end(vd)
	e.add("immediate", attr{nftaImmediateDreg, be32(regVerdict)}, attr{unix.NLA_F_NESTED | nftaImmediateData, v.b})
}
