package nft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/ruleset"
)

// A snapshot for --confirm written by `nft list table` cost 10 to 28 s
// with 200,000 bans (nft fetches every element of every set first), and
// its restore loaded every ban again. The rollback no longer takes the
// bans from the snapshot (it puts back those in force when it runs), so
// moat's table is read over netlink instead, without the ban sets'
// elements: the table, its chains, sets (definitions), the elements of
// every set but the two ban sets, and the rules, as the kernel dumps
// them, keeping only the attributes that make each object again. A
// table holding named objects or flowtables is still listed by nft, and
// such text snapshots restore through nft -f.
//
// A netlink snapshot is restored in one of two ways, each one
// transaction:
//   - keeping the ban sets (RestoreKeepingBans, the rollback of a change
//     that kept the backend): when the kernel's table and ban sets have
//     the snapshot's definitions, the table's chains and other sets are
//     emptied and deleted and made again, the ban sets left as they are
//     (the bans made and lifted meanwhile stay so); committed only for the
//     ruleset generation of its read of the table;
//   - refilling them (Restore, and when the first cannot): the table is
//     deleted and made again with the ban sets empty, and the rollback
//     then puts back the bans in force (engine: pending.bans).

// netlinkSnapMagic starts a snapshot read over netlink; a snapshot of
// `nft list table` (taken by an older moat) starts with "table inet".
const netlinkSnapMagic = "moat nftables netlink snapshot 1\n"

// Netlink attribute numbers of the kernel's nf_tables.h (not all are in
// x/sys).
const (
	tableName, tableFlags, tableUserdata = 1, 2, 6

	chainTable, chainName, chainHook, chainPolicy, chainType, chainUserdata = 1, 3, 4, 5, 7, 12

	setTable, setName, setFlags, setKeyType, setKeyLen, setDataType, setDataLen, setPolicy, setDesc, setID,
	setTimeout, setGCInterval, setUserdata, setObjType, setExpr, setExprs = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 17, 18

	elemListTable, elemListSet, elemListElements = 1, 2, 3
	snapElemKey, snapElemFlags                   = 1, 3

	ruleTable, ruleChain, ruleExprs, ruleUserdata = 1, 2, 4, 7
)

// keepAttrs are, by message type, the attributes a snapshot keeps: those
// that make the object again (not handles, use counts, positions).
var keepAttrs = map[uint16][]uint16{
	unix.NFT_MSG_NEWTABLE:   {tableName, tableFlags, tableUserdata},
	unix.NFT_MSG_NEWCHAIN:   {chainTable, chainName, chainHook, chainPolicy, chainType, chainUserdata},
	unix.NFT_MSG_NEWSET:     {setTable, setName, setFlags, setKeyType, setKeyLen, setDataType, setDataLen, setPolicy, setDesc, setTimeout, setGCInterval, setUserdata, setObjType, setExpr, setExprs},
	unix.NFT_MSG_NEWSETELEM: {elemListTable, elemListSet, elemListElements},
	unix.NFT_MSG_NEWRULE:    {ruleTable, ruleChain, ruleExprs, ruleUserdata},
}

// tableAttr is, by message type, the attribute naming the table.
var tableAttr = map[uint16]uint16{
	unix.NFT_MSG_NEWTABLE: tableName, unix.NFT_MSG_NEWCHAIN: chainTable, unix.NFT_MSG_NEWSET: setTable,
	unix.NFT_MSG_NEWSETELEM: elemListTable, unix.NFT_MSG_NEWRULE: ruleTable,
}

// errSnapOther says that moat's table holds objects a netlink snapshot
// does not copy (named objects, flowtables, made by hand): nft lists them.
var errSnapOther = errors.New("the table holds objects other than chains and sets")

// dumpMsgs dumps objects of one type of the inet family (the data of each
// reply after its nfgenmsg), in parts of dumpBuffer.
func dumpMsgs(typ uint16, attrs []netlink.Attribute) ([][]byte, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{MessageBufferSize: dumpBuffer})
	if err != nil {
		return nil, err
	}
	defer CloseLater(conn.Close) // read only; off the caller's path (closeLater)
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	flags := netlink.Request
	if typ != unix.NFT_MSG_GETTABLE {
		flags |= netlink.Dump
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | int(typ)), Flags: flags},
		Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, data...),
	})
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(msgs))
	for _, m := range msgs {
		if len(m.Data) >= 4 {
			out = append(out, m.Data[4:])
		}
	}
	return out, nil
}

// attrsOf decodes one message's attributes.
func attrsOf(data []byte) ([]netlink.Attribute, error) {
	return netlink.UnmarshalAttributes(data)
}

// attr is the value of attribute typ (nested flag ignored), or nil.
func attr(as []netlink.Attribute, typ uint16) []byte {
	for _, a := range as {
		if a.Type&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == typ {
			return a.Data
		}
	}
	return nil
}

// keep returns the attributes of as that keepAttrs keeps for typ.
func keep(typ uint16, as []netlink.Attribute) []netlink.Attribute {
	out := make([]netlink.Attribute, 0, len(as))
	for _, a := range as {
		if slices.Contains(keepAttrs[typ], a.Type&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER)) {
			out = append(out, a)
		}
	}
	return out
}

// netlinkSnapshot reads moat's table over netlink into a snapshot (nil:
// no table). errSnapOther: the table holds what it does not copy.
func netlinkSnapshot() ([]byte, error) {
	name := []byte(TableName + "\x00")
	tables, err := dumpMsgs(unix.NFT_MSG_GETTABLE, []netlink.Attribute{{Type: tableName, Data: name}})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get table: %w", err)
	}
	if len(tables) != 1 {
		return nil, fmt.Errorf("get table: %d replies", len(tables))
	}
	snap := []byte(netlinkSnapMagic)
	put := func(typ uint16, as []netlink.Attribute) error {
		data, err := netlink.MarshalAttributes(keep(typ, as))
		if err != nil {
			return err
		}
		snap = binary.BigEndian.AppendUint16(snap, typ)
		snap = binary.BigEndian.AppendUint32(snap, uint32(len(data)))
		snap = append(snap, data...)
		return nil
	}
	ta, err := attrsOf(tables[0])
	if err != nil {
		return nil, fmt.Errorf("get table: %w", err)
	}
	if err := put(unix.NFT_MSG_NEWTABLE, ta); err != nil {
		return nil, err
	}

	sets, err := dumpMsgs(unix.NFT_MSG_GETSET, []netlink.Attribute{{Type: setTable, Data: name}})
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	var setNames []string
	for _, s := range sets {
		as, err := attrsOf(s)
		if err != nil {
			return nil, fmt.Errorf("list sets: %w", err)
		}
		if !bytes.Equal(attr(as, setTable), name) {
			continue
		}
		if err := put(unix.NFT_MSG_NEWSET, as); err != nil {
			return nil, err
		}
		setNames = append(setNames, string(bytes.TrimRight(attr(as, setName), "\x00")))
	}
	for _, set := range setNames {
		if set == ruleset.BanSet4 || set == ruleset.BanSet6 {
			continue // the rollback puts back the bans in force
		}
		els, err := dumpMsgs(unix.NFT_MSG_GETSETELEM, []netlink.Attribute{
			{Type: elemListTable, Data: name}, {Type: elemListSet, Data: []byte(set + "\x00")}})
		if err != nil {
			return nil, fmt.Errorf("list set %s: %w", set, err)
		}
		for _, m := range els {
			as, err := attrsOf(m)
			if err != nil {
				return nil, fmt.Errorf("list set %s: %w", set, err)
			}
			if attr(as, elemListElements) == nil {
				continue
			}
			if err := put(unix.NFT_MSG_NEWSETELEM, as); err != nil {
				return nil, err
			}
		}
	}

	chains, err := dumpMsgs(unix.NFT_MSG_GETCHAIN, nil)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var chainNames [][]byte
	for _, c := range chains {
		as, err := attrsOf(c)
		if err != nil {
			return nil, fmt.Errorf("list chains: %w", err)
		}
		if !bytes.Equal(attr(as, chainTable), name) {
			continue
		}
		if err := put(unix.NFT_MSG_NEWCHAIN, as); err != nil {
			return nil, err
		}
		chainNames = append(chainNames, attr(as, chainName))
	}
	// Named objects and flowtables (moat makes none; made by hand): nft
	// copies them.
	for _, typ := range []uint16{unix.NFT_MSG_GETOBJ, unix.NFT_MSG_GETFLOWTABLE} {
		objs, err := dumpMsgs(typ, []netlink.Attribute{{Type: 1, Data: name}}) // NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE
		if err != nil {
			return nil, fmt.Errorf("list objects: %w", err)
		}
		for _, o := range objs {
			as, err := attrsOf(o)
			if err != nil {
				return nil, fmt.Errorf("list objects: %w", err)
			}
			if bytes.Equal(attr(as, 1), name) {
				return nil, errSnapOther
			}
		}
	}
	for _, chain := range chainNames {
		rules, err := dumpMsgs(unix.NFT_MSG_GETRULE, []netlink.Attribute{{Type: ruleTable, Data: name}, {Type: ruleChain, Data: chain}})
		if err != nil {
			return nil, fmt.Errorf("list chain %s: %w", bytes.TrimRight(chain, "\x00"), err)
		}
		for _, r := range rules {
			as, err := attrsOf(r)
			if err != nil {
				return nil, fmt.Errorf("list chain %s: %w", bytes.TrimRight(chain, "\x00"), err)
			}
			if !bytes.Equal(attr(as, ruleTable), name) || !bytes.Equal(attr(as, ruleChain), chain) {
				continue
			}
			if err := put(unix.NFT_MSG_NEWRULE, as); err != nil {
				return nil, err
			}
		}
	}
	return snap, nil
}

// snapMsg is one object of a netlink snapshot.
type snapMsg struct {
	typ   uint16
	attrs []netlink.Attribute
}

// parseNetlinkSnapshot reads a netlink snapshot, refusing anything that
// is not an object of moat's table in the order netlinkSnapshot writes.
func parseNetlinkSnapshot(snap []byte) ([]snapMsg, error) {
	data, ok := bytes.CutPrefix(snap, []byte(netlinkSnapMagic))
	if !ok {
		return nil, errors.New("not a netlink snapshot")
	}
	name := []byte(TableName + "\x00")
	order := map[uint16]int{unix.NFT_MSG_NEWTABLE: 0, unix.NFT_MSG_NEWSET: 1, unix.NFT_MSG_NEWSETELEM: 2, unix.NFT_MSG_NEWCHAIN: 3, unix.NFT_MSG_NEWRULE: 4}
	var out []snapMsg
	last := 0
	for off := 0; len(data) > 0; off++ {
		if len(data) < 6 {
			return nil, fmt.Errorf("object %d: cut short", off)
		}
		typ, n := binary.BigEndian.Uint16(data), binary.BigEndian.Uint32(data[2:])
		data = data[6:]
		if uint64(n) > uint64(len(data)) {
			return nil, fmt.Errorf("object %d: cut short", off)
		}
		rank, ok := order[typ]
		if !ok || rank < last || (typ == unix.NFT_MSG_NEWTABLE) != (off == 0) {
			return nil, fmt.Errorf("object %d: unexpected type %d", off, typ)
		}
		last = rank
		as, err := attrsOf(data[:n])
		if err != nil {
			return nil, fmt.Errorf("object %d: %w", off, err)
		}
		data = data[n:]
		if !bytes.Equal(attr(as, tableAttr[typ]), name) {
			return nil, fmt.Errorf("object %d: not of table inet %s", off, TableName)
		}
		out = append(out, snapMsg{typ: typ, attrs: keep(typ, as)})
	}
	if len(out) == 0 {
		return nil, errors.New("no table")
	}
	return out, nil
}

// restoreNetlink makes moat's table exactly a netlink snapshot in one
// transaction: the table (if any) deleted, then made again with the
// snapshot's objects. Interval sets get their elements in ascending order
// (an end before a start at the same address), as nft sends them.
//
// With keepBans, the ban sets are left as they are (their bans, made or
// lifted while the change waited, stay as they are) when the kernel's
// table and ban sets have the snapshot's definitions: the transaction
// then empties and deletes the table's chains and other sets instead of
// the table, and makes them again. kept says whether it did; when it
// cannot (a definition changed, no table, objects made by hand), nothing
// is done and kept is false.
//
// The keeping transaction is built from a read of the kernel's table and
// committed only if the ruleset generation is still that of the read
// (else read again, a few times: the guard's bans move it too), so a
// change made in between cannot leave a chain or set of its own.
func restoreNetlink(snap []byte, keepBans bool) (kept bool, err error) {
	msgs, err := parseNetlinkSnapshot(snap)
	if err != nil {
		return false, fmt.Errorf("corrupt snapshot: %w", err)
	}
	if !keepBans {
		return false, restoreNetlinkOnce(msgs, false, 0)
	}
	for range 5 {
		gen, err := Generation()
		if err != nil {
			return false, err
		}
		err = restoreNetlinkOnce(msgs, true, gen)
		if errors.Is(err, errCannotKeep) {
			return false, nil
		}
		if !errors.Is(err, errGenerationMoved) {
			return err == nil, err
		}
	}
	return false, nil
}

// beforeKeepSend, in tests, runs before a keeping restore is sent.
var beforeKeepSend func()

// errCannotKeep: the ban sets cannot be kept (restoreNetlink).
var errCannotKeep = errors.New("the ban sets cannot be kept")

// restoreNetlinkOnce is one try of restoreNetlink, committed for
// generation gen (0: any).
func restoreNetlinkOnce(msgs []snapMsg, keepBans bool, gen uint32) error {
	exists, err := NetlinkReader{}.TableExists()
	if err != nil {
		return err
	}
	var tx batch
	skipSet := map[string]bool{}
	if keepBans {
		if !exists {
			return errCannotKeep
		}
		del, ok, err := keepBansPrelude(msgs)
		if err != nil {
			return err
		}
		if !ok {
			return errCannotKeep
		}
		tx.msgs = del.msgs
		skipSet[ruleset.BanSet4+"\x00"], skipSet[ruleset.BanSet6+"\x00"] = true, true
	} else if exists {
		tx.deleteTable()
	}
	prelude := len(tx.msgs)
	interval := map[string]bool{}
	id := uint32(0)
	for _, m := range msgs {
		switch m.typ {
		case unix.NFT_MSG_NEWTABLE:
			if !keepBans {
				tx.add(m.typ, netlink.Create|netlink.Excl, m.attrs)
			}
		case unix.NFT_MSG_NEWSET:
			if skipSet[string(attr(m.attrs, setName))] {
				continue
			}
			id++
			if f := attr(m.attrs, setFlags); len(f) == 4 && binary.BigEndian.Uint32(f)&unix.NFT_SET_INTERVAL != 0 {
				interval[string(attr(m.attrs, setName))] = true
			}
			tx.add(m.typ, netlink.Create|netlink.Excl, append(m.attrs, netlink.Attribute{Type: setID, Data: binary.BigEndian.AppendUint32(nil, id)}))
		case unix.NFT_MSG_NEWCHAIN:
			tx.add(m.typ, netlink.Create|netlink.Excl, m.attrs)
		case unix.NFT_MSG_NEWRULE:
			tx.add(m.typ, netlink.Create|unix.NLM_F_APPEND, m.attrs)
		}
	}
	// Elements after every set (they were read after them), in messages
	// of at most listBytes of elements.
	bySet := map[string][][]byte{}
	var setOrder []string
	for _, m := range msgs {
		if m.typ != unix.NFT_MSG_NEWSETELEM {
			continue
		}
		set := string(attr(m.attrs, elemListSet))
		if skipSet[set] {
			continue
		}
		if _, ok := bySet[set]; !ok {
			setOrder = append(setOrder, set)
			bySet[set] = nil
		}
		list, err := netlink.UnmarshalAttributes(attr(m.attrs, elemListElements))
		if err != nil {
			return fmt.Errorf("corrupt snapshot: set %s: %w", set, err)
		}
		for _, e := range list {
			bySet[set] = append(bySet[set], e.Data)
		}
	}
	var els []netlink.Message
	{
		var tmp batch
		for _, set := range setOrder {
			raw := bySet[set]
			if interval[set] {
				sortIntervalElems(raw)
			}
			var list []byte
			flush := func() {
				if len(list) == 0 {
					return
				}
				tmp.add(unix.NFT_MSG_NEWSETELEM, netlink.Create, []netlink.Attribute{
					{Type: elemListTable, Data: []byte(TableName + "\x00")},
					{Type: elemListSet, Data: []byte(set)},
					{Type: unix.NLA_F_NESTED | elemListElements, Data: list},
				})
				list = nil
			}
			for _, e := range raw {
				if len(list)+len(e)+4 > listBytes {
					flush()
				}
				list = appendAttr(list, unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM, e)
			}
			flush()
		}
		if tmp.err != nil {
			return tmp.err
		}
		els = tmp.msgs
	}
	// Table, sets, their elements, chains, rules.
	nsets := prelude + int(id)
	if !keepBans {
		nsets++ // the table
	}
	tx.msgs = slices.Concat(tx.msgs[:nsets], els, tx.msgs[nsets:])
	if keepBans && beforeKeepSend != nil {
		beforeKeepSend()
	}
	return tx.send(gen)
}

// keepBansPrelude checks that the kernel's table can take the snapshot
// msgs with its ban sets kept (the table and both ban sets defined as in
// the snapshot, no named objects or flowtables), and returns the
// messages that empty it of all else: every chain's rules, then the
// chains, then the sets but the ban sets (anonymous sets go with their
// rules).
func keepBansPrelude(msgs []snapMsg) (*batch, bool, error) {
	name := []byte(TableName + "\x00")
	enc := func(typ uint16, as []netlink.Attribute) string {
		data, _ := netlink.MarshalAttributes(keep(typ, as))
		return string(data)
	}
	want := map[string]string{}
	for _, m := range msgs {
		switch m.typ {
		case unix.NFT_MSG_NEWTABLE:
			want[""] = enc(m.typ, m.attrs)
		case unix.NFT_MSG_NEWSET:
			if n := string(attr(m.attrs, setName)); n == ruleset.BanSet4+"\x00" || n == ruleset.BanSet6+"\x00" {
				want[n] = enc(m.typ, m.attrs)
			}
		}
	}
	if len(want) != 3 {
		return nil, false, nil
	}
	tables, err := dumpMsgs(unix.NFT_MSG_GETTABLE, []netlink.Attribute{{Type: tableName, Data: name}})
	if err != nil || len(tables) != 1 {
		return nil, false, err
	}
	ta, err := attrsOf(tables[0])
	if err != nil || enc(unix.NFT_MSG_NEWTABLE, ta) != want[""] {
		return nil, false, err
	}
	for _, typ := range []uint16{unix.NFT_MSG_GETOBJ, unix.NFT_MSG_GETFLOWTABLE} {
		objs, err := dumpMsgs(typ, []netlink.Attribute{{Type: 1, Data: name}})
		if err != nil {
			return nil, false, err
		}
		for _, o := range objs {
			if as, err := attrsOf(o); err != nil || bytes.Equal(attr(as, 1), name) {
				return nil, false, err
			}
		}
	}
	var tx batch
	sets, err := dumpMsgs(unix.NFT_MSG_GETSET, []netlink.Attribute{{Type: setTable, Data: name}})
	if err != nil {
		return nil, false, err
	}
	var delSets [][]byte
	found := 0
	for _, s := range sets {
		as, err := attrsOf(s)
		if err != nil {
			return nil, false, err
		}
		if !bytes.Equal(attr(as, setTable), name) {
			continue
		}
		n := string(attr(as, setName))
		if w, ok := want[n]; ok && n != "" {
			if enc(unix.NFT_MSG_NEWSET, as) != w {
				return nil, false, nil // redefined: made again, refilled
			}
			found++
			continue
		}
		if f := attr(as, setFlags); len(f) == 4 && binary.BigEndian.Uint32(f)&unix.NFT_SET_ANONYMOUS != 0 {
			continue
		}
		delSets = append(delSets, attr(as, setName))
	}
	if found != 2 {
		return nil, false, nil
	}
	chains, err := dumpMsgs(unix.NFT_MSG_GETCHAIN, nil)
	if err != nil {
		return nil, false, err
	}
	var delChains [][]byte
	for _, c := range chains {
		as, err := attrsOf(c)
		if err != nil {
			return nil, false, err
		}
		if bytes.Equal(attr(as, chainTable), name) {
			delChains = append(delChains, attr(as, chainName))
		}
	}
	for _, c := range delChains {
		tx.add(unix.NFT_MSG_DELRULE, 0, []netlink.Attribute{{Type: ruleTable, Data: name}, {Type: ruleChain, Data: c}})
	}
	for _, c := range delChains {
		tx.add(unix.NFT_MSG_DELCHAIN, 0, []netlink.Attribute{{Type: chainTable, Data: name}, {Type: chainName, Data: c}})
	}
	for _, s := range delSets {
		tx.add(unix.NFT_MSG_DELSET, 0, []netlink.Attribute{{Type: setTable, Data: name}, {Type: setName, Data: s}})
	}
	return &tx, true, nil
}

// elemSortKey is an element's key and whether it ends an interval.
func elemSortKey(e []byte) (key []byte, end bool) {
	as, err := netlink.UnmarshalAttributes(e)
	if err != nil {
		return nil, false
	}
	if k, err := netlink.UnmarshalAttributes(attr(as, snapElemKey)); err == nil {
		key = attr(k, unix.NFTA_DATA_VALUE)
	}
	if f := attr(as, snapElemFlags); len(f) == 4 {
		end = binary.BigEndian.Uint32(f)&unix.NFT_SET_ELEM_INTERVAL_END != 0
	}
	return key, end
}

// sortIntervalElems orders an interval set's elements as nft sends them:
// by key, an end before a start at the same key.
func sortIntervalElems(els [][]byte) {
	type k struct {
		key []byte
		end bool
		raw []byte
	}
	ks := make([]k, len(els))
	for i, e := range els {
		key, end := elemSortKey(e)
		ks[i] = k{key, end, e}
	}
	slices.SortStableFunc(ks, func(a, b k) int {
		if c := bytes.Compare(a.key, b.key); c != 0 {
			return c
		}
		switch {
		case a.end == b.end:
			return 0
		case a.end:
			return -1
		}
		return 1
	})
	for i := range ks {
		els[i] = ks[i].raw
	}
}
