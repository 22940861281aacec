package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"
)

// Staging: when moat's table is not in the kernel at all (a first enable,
// a boot, an enable after a disable), its filled policy sets are created
// over netlink in a transaction of their own (the stage) before the nft
// transaction that makes the chains, rules and other sets. nft parses a
// set's elements from text, checks and sorts them and encodes them again:
// about half of its time at 100,000 networks; moat has them merged and
// sorted already. Nothing refers to a set the stage made until the nft
// transaction commits the rules that use it, with the sets already full:
// no packet ever sees a rule with an empty or half-filled set. A table
// with sets and no chains filters nothing, so a kill -9 between the two
// leaves the old firewall (none of moat's) and the journal, whose undo
// removes the table (the kernel held no table of moat's before).

// nftaTableUserdata is NFTA_TABLE_USERDATA (not in x/sys).
const nftaTableUserdata = 6

// udata appends one libnftnl user data entry: type, length, value.
func udata(b []byte, typ byte, v []byte) []byte {
	b = append(b, typ, byte(len(v)))
	return append(b, v...)
}

// cstr is a comment as libnftnl stores it: NUL-terminated, at most 128
// bytes with the NUL (nft refuses longer comments).
func cstr(s string) []byte {
	if len(s) > 127 {
		s = s[:127]
	}
	return append([]byte(s), 0)
}

// newTable creates moat's table, as `add table inet moat { comment "C"; }`
// does; the transaction fails if the table exists.
func (b *batch) newTable(comment string) {
	b.add(unix.NFT_MSG_NEWTABLE, netlink.Create|netlink.Excl, []netlink.Attribute{
		{Type: unix.NFTA_TABLE_NAME, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_TABLE_FLAGS, Data: binary.BigEndian.AppendUint32(nil, 0)},
		{Type: nftaTableUserdata, Data: udata(nil, 0, cstr(comment))}, // NFTNL_UDATA_TABLE_COMMENT
	})
}

// newSet creates a set of moat's table as nft does for its `add set`
// command (the same attributes and user data: `nft list` shows the two
// alike), for the definitions moat's policy, ban and rate-limit sets
// have: a type ipv4_addr or ipv6_addr; flags interval, or dynamic and
// timeout; a timeout; a size; a comment. ok is false for any other definition (nothing is added). The
// transaction fails if the set exists.
func (b *batch) newSet(set *knftables.Set, id uint32) (ok bool) {
	keyType, keyLen := uint32(7), uint32(4) // TYPE_IPADDR
	switch set.Type {
	case "ipv4_addr":
	case "ipv6_addr":
		keyType, keyLen = 8, 16 // TYPE_IP6ADDR
	default:
		return false
	}
	if set.TypeOf != "" || set.GCInterval != nil || set.Policy != nil || set.AutoMerge != nil {
		return false
	}
	var flags uint32
	for _, f := range set.Flags {
		switch f {
		case knftables.IntervalFlag:
			flags |= unix.NFT_SET_INTERVAL
		case knftables.DynamicFlag:
			flags |= unix.NFT_SET_EVAL
		case knftables.TimeoutFlag:
			flags |= unix.NFT_SET_TIMEOUT
		default:
			return false
		}
	}
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_SET_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_SET_NAME, Data: []byte(set.Name + "\x00")},
		{Type: unix.NFTA_SET_FLAGS, Data: binary.BigEndian.AppendUint32(nil, flags)},
		{Type: unix.NFTA_SET_KEY_TYPE, Data: binary.BigEndian.AppendUint32(nil, keyType)},
		{Type: unix.NFTA_SET_KEY_LEN, Data: binary.BigEndian.AppendUint32(nil, keyLen)},
		{Type: unix.NFTA_SET_ID, Data: binary.BigEndian.AppendUint32(nil, id)},
	}
	if set.Timeout != nil {
		if *set.Timeout <= 0 || *set.Timeout%time.Millisecond != 0 {
			return false
		}
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_TIMEOUT, Data: binary.BigEndian.AppendUint64(nil, uint64(set.Timeout.Milliseconds()))})
	}
	if set.Size != nil {
		if *set.Size > 1<<32-1 {
			return false
		}
		desc := appendAttr(nil, unix.NFTA_SET_DESC_SIZE, binary.BigEndian.AppendUint32(nil, uint32(*set.Size)))
		attrs = append(attrs, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_SET_DESC, Data: desc})
	}
	// NFTNL_UDATA_SET_KEYBYTEORDER: BYTEORDER_BIG_ENDIAN (2), in host
	// order; NFTNL_UDATA_SET_COMMENT (7).
	ud := udata(nil, 0, binary.NativeEndian.AppendUint32(nil, 2))
	if set.Comment != nil {
		ud = udata(ud, 7, cstr(*set.Comment))
	}
	attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_USERDATA, Data: ud})
	b.add(unix.NFT_MSG_NEWSET, netlink.Create|netlink.Excl, attrs)
	return true
}

// deleteSet deletes a set of moat's table (the transaction fails if a
// rule still refers to it).
func (b *batch) deleteSet(name string) {
	b.add(unix.NFT_MSG_DELSET, 0, []netlink.Attribute{
		{Type: unix.NFTA_SET_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_SET_NAME, Data: []byte(name + "\x00")},
	})
}

// deleteChain deletes a chain of moat's table (the transaction fails if
// it holds rules or a rule jumps to it).
func (b *batch) deleteChain(name string) {
	b.add(unix.NFT_MSG_DELCHAIN, 0, []netlink.Attribute{
		{Type: unix.NFTA_CHAIN_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_CHAIN_NAME, Data: []byte(name + "\x00")},
	})
}

// deleteTable deletes moat's table (NFT_MSG_DESTROYTABLE is newer than
// some kernels moat runs on: the transaction fails if there is none).
func (b *batch) deleteTable() {
	b.add(unix.NFT_MSG_DELTABLE, 0, []netlink.Attribute{
		{Type: unix.NFTA_TABLE_NAME, Data: []byte(TableName + "\x00")},
	})
}

// stage builds the staging transaction for a whole plan of d into a table
// that holds nothing (existing lists no object): the table, and d's sets
// in d's order up to the last policy set with elements, those filled. The
// sets come in d's order so that the table lists them as a load through
// nft alone does. It returns the names of the sets it makes, or nothing
// when no policy set would be filled (or one before it has a definition
// newSet does not make: nft makes them all then).
func stage(d *desired) (*batch, map[string]bool) {
	last := -1
	for i, s := range d.sets {
		if !(s.kind == policySet && s.src != nil || s.kind == banSet) {
			break
		}
		if s.kind == policySet && len(s.elems()) > 0 {
			last = i
		}
	}
	if last < 0 {
		return nil, nil
	}
	tx := &batch{}
	tx.newTable(d.comment)
	names := map[string]bool{}
	for i, s := range d.sets[:last+1] {
		if !tx.newSet(s.set, uint32(i+1)) {
			return nil, nil
		}
		if s.kind == policySet {
			w := tx.elementWriter(createElems, s.set.Name)
			eachIntervalElem(s.elems(), w.add)
			w.flush()
		}
		names[s.set.Name] = true
	}
	return tx, names
}

// errStaged wraps the failure of the nft transaction after a stage: the
// stage's table is gone again (or could not be deleted: said in the
// error).
var errStaged = errors.New("nftables: the sets loaded before it were removed")

// unstage deletes the table a stage made, after the transaction that was
// to complete it failed: the kernel held no table of moat's before.
func unstage(err error) error {
	var tx batch
	tx.deleteTable()
	if derr := tx.send(0); derr != nil {
		return fmt.Errorf("%w; deleting the table the sets were loaded into failed too: %v", err, derr)
	}
	return fmt.Errorf("%w (%w)", err, errStaged)
}

// appendAttr appends one netlink attribute (header, value, padding).
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// appendIntervalElem appends one element of an interval set as attrs
// encodes it, for an element with no timeout, comment or open mark: a
// list entry with the key, and the end flag for an end.
func appendIntervalElem(b []byte, addr netip.Addr, end bool) []byte {
	var raw [16]byte
	key := raw[:4]
	if addr.Is4() {
		a := addr.As4()
		copy(key, a[:])
	} else {
		raw = addr.As16()
		key = raw[:]
	}
	value := 4 + len(key) // NFTA_DATA_VALUE, padded (4 or 16 bytes: none)
	keyAttr := 4 + value
	size := 4 + keyAttr
	if end {
		size += 8
	}
	b = binary.NativeEndian.AppendUint16(b, uint16(size))
	b = binary.NativeEndian.AppendUint16(b, unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM)
	b = binary.NativeEndian.AppendUint16(b, uint16(keyAttr))
	b = binary.NativeEndian.AppendUint16(b, unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_KEY)
	b = appendAttr(b, unix.NFTA_DATA_VALUE, key)
	if end {
		b = appendAttr(b, unix.NFTA_SET_ELEM_FLAGS, binary.BigEndian.AppendUint32(nil, unix.NFT_SET_ELEM_INTERVAL_END))
	}
	return b
}
