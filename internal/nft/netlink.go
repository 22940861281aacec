package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"time"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/moat-fw/moat/internal/ruleset"
)

// kernelAvailable asks the kernel over netlink whether nf_tables answers
// us (module, permission), without starting a process.
func kernelAvailable() error {
	c, done, err := Conn()
	defer done()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if _, err := c.ListTablesOfFamily(gnft.TableFamilyINet); err != nil {
		return fmt.Errorf("nftables: the kernel refuses to list tables: %w", err)
	}
	return nil
}

// familyNames are the table families as nft names them.
var familyNames = map[gnft.TableFamily]string{gnft.TableFamilyIPv4: "ip", gnft.TableFamilyIPv6: "ip6", gnft.TableFamilyINet: "inet",
	gnft.TableFamilyARP: "arp", gnft.TableFamilyBridge: "bridge", gnft.TableFamilyNetdev: "netdev"}

// kernelTables lists the tables of the calling thread's namespace over
// netlink, without fetching any set.
func kernelTables() ([]*gnft.Table, error) {
	c, done, err := Conn()
	defer done()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("nftables: list tables: %w", err)
	}
	return tables, nil
}

// ListTables lists every nftables table of this network namespace (family
// as nft names it, and name) over netlink, without fetching any set.
func ListTables() ([][2]string, error) {
	tables, err := kernelTables()
	if err != nil {
		return nil, err
	}
	out := make([][2]string, 0, len(tables))
	for _, t := range tables {
		if f, ok := familyNames[t.Family]; ok {
			out = append(out, [2]string{f, t.Name})
		}
	}
	return out, nil
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
	// Banned says whether one address is in a ban set.
	Banned(set string, addr netip.Addr) (bool, error)
}

// NetlinkReader is the Reader on the kernel of the calling thread's
// network namespace.
type NetlinkReader struct{}

var moatTable = &gnft.Table{Name: TableName, Family: gnft.TableFamilyINet}

// TableExists lists the inet tables.
func (NetlinkReader) TableExists() (bool, error) {
	c, done, err := Conn()
	defer done()
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
	if ok, err := r.TableExists(); err != nil || !ok {
		if err == nil {
			err = fmt.Errorf("no table inet %s", TableName)
		}
		return nil, fmt.Errorf("nftables: list table inet %s: %w", TableName, err)
	}
	c, done, err := Conn()
	defer done()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
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
			id := ruleset.OriginID(RuleComment(rule.UserData))
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

// RuleComment finds the comment in a rule's user data: TLVs of a type
// byte and a length byte, the comment (type 0) NUL-terminated.
func RuleComment(ud []byte) string { return udataString(ud, 0) }

// udataString is the NUL-terminated string of type want in user data
// (TLVs of a type byte and a length byte).
func udataString(ud []byte, want byte) string {
	for len(ud) >= 2 {
		typ, n := ud[0], int(ud[1])
		if len(ud) < 2+n {
			return ""
		}
		if typ == want {
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

// Banned asks the kernel whether addr is in a ban set: one element lookup
// (what `nft get element` does), whatever the size of the set.
func (NetlinkReader) Banned(set string, addr netip.Addr) (bool, error) {
	req, err := getElemRequest(set, addr)
	if err != nil {
		return false, err
	}
	msgs, err := execute(req)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("nftables: get element %s from %s: %w", addr, set, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		els, err := parseElemList(m.Data[4:])
		if err != nil {
			return false, err
		}
		for _, e := range els {
			if a, ok := netip.AddrFromSlice(e.Key); ok && a.Unmap() == addr.Unmap() && !e.End {
				return true, nil
			}
		}
	}
	return false, nil
}

// Elem is one set element as the kernel dumps it.
type Elem struct {
	Key     []byte
	End     bool // the end of an interval (the first value after it)
	Timeout time.Duration
	Expires time.Duration
	Comment string
}

// Bans dumps one ban set's elements (see BansChanging).
func (r NetlinkReader) Bans(set string) ([]ruleset.Ban, error) {
	bans, _, err := r.BansChanging(set)
	return bans, err
}

// BansChanging dumps one ban set's elements. While bans keep being added
// (a storm: every ban is a commit, and a dump of 200,000 bans takes
// seconds) no dump may be whole at one generation: it then returns what
// DumpElementsChanging merged, with changed true, rather than an error
// that would stop `moat bans`, an apply that redefines a ban set, and the
// guard's restore exactly when they are needed.
func (NetlinkReader) BansChanging(set string) (bans []ruleset.Ban, changed bool, err error) {
	els, changed, err := DumpElementsChanging(set)
	if err != nil {
		return nil, false, err
	}
	return elemBans(els), changed, nil
}

// elemBans are the addresses of a ban set's elements.
func elemBans(els []Elem) []ruleset.Ban {
	out := make([]ruleset.Ban, 0, len(els))
	for _, e := range els {
		if a, ok := netip.AddrFromSlice(e.Key); ok && !e.End {
			out = append(out, ruleset.Ban{Addr: a.Unmap(), Timeout: e.Timeout, Expires: e.Expires, Reason: e.Comment})
		}
	}
	return out
}

// DumpElements dumps the elements of one set of moat's table, in parts of
// dumpBuffer. The parts are taken only from a dump at one ruleset
// generation (the same before and after, and no part marked
// NLM_F_DUMP_INTR), else the set is dumped again (dumpTries times, then
// an error): a commit landing between two parts may make the kernel skip
// elements or send them twice, and what was read is then neither the set
// before nor the one after.
//
// The generation check is what makes it exact: nf_tables does not mark
// the parts of a set element dump NLM_F_DUMP_INTR (nf_tables_dump_set
// sets cb->seq but never calls nl_dump_check_consistent; measured: a
// dump of 200,000 bans in 249 parts while 24 commits landed had no part
// marked, and sent 19 elements twice).
func DumpElements(set string) ([]Elem, error) {
	els, _, err := dumpElements(set, false)
	return els, err
}

// DumpElementsChanging is DumpElements for sets that may keep changing
// while they are read and whose readers can use a set read while it
// changed (the ban sets): when every dump was interrupted it returns the
// union of the dumps' elements, one per key (the last read wins: its
// timeout, time left and comment are the newest), and changed true. An
// element in the set from the first dump to the last is in it: a commit
// between two parts of a dump makes the kernel send an element twice
// (an insert before the dump's position) or skip one (a delete before
// it), and no one element is skipped by every dump unless the set is
// changed at that very place in each (or a hash set is resized under
// each): not a proof, so changed says what it is. An element deleted
// meanwhile may be in it too: a ban lifted during the read is listed or
// carried once more, which errs on the side of keeping bans.
func DumpElementsChanging(set string) (els []Elem, changed bool, err error) {
	return dumpElements(set, true)
}

// dumpElements is DumpElements, merging interrupted dumps when merge.
func dumpElements(set string, merge bool) ([]Elem, bool, error) {
	conn, err := dialDump()
	if err != nil {
		return nil, false, fmt.Errorf("nftables: %w", err)
	}
	defer CloseLater(conn.Close) // read only; off the caller's path (closeLater)
	var (
		union  map[string]int // key -> index in merged
		merged []Elem
	)
	for try := 1; ; try++ {
		out, err := dumpElementsOnce(conn, set)
		if err == nil {
			return out, false, nil
		}
		var mixed *interruptedDump
		if !errors.As(err, &mixed) {
			return nil, false, fmt.Errorf("nftables: list set %s: %w", set, err)
		}
		if merge {
			if union == nil {
				union = make(map[string]int, len(mixed.els))
			}
			for _, e := range mixed.els {
				k := dumpKey(e)
				if i, ok := union[k]; ok {
					merged[i] = e
					continue
				}
				union[k] = len(merged)
				merged = append(merged, e)
			}
		}
		if try == dumpTries {
			if merge {
				return merged, true, nil
			}
			return nil, false, fmt.Errorf("nftables: list set %s: %w", set, err)
		}
		dumpBackoff(try)
	}
}

// dumpKey tells elements apart: the key, and the end of an interval from
// its start.
func dumpKey(e Elem) string {
	if e.End {
		return "end " + string(e.Key)
	}
	return string(e.Key)
}

// interruptedDump is a dump that ErrDumpInterrupted spoils, with what it read.
type interruptedDump struct {
	why string
	els []Elem
}

func (e *interruptedDump) Error() string { return e.why + ": " + ErrDumpInterrupted.Error() }
func (e *interruptedDump) Unwrap() error { return ErrDumpInterrupted }

// dumpBackoff waits a little before the next dump of an interrupted set:
// a burst of commits (an apply, a batch of bans) is often over by then.
var dumpBackoff = func(try int) { time.Sleep(time.Duration(try) * 20 * time.Millisecond) }

// ErrDumpInterrupted says that the ruleset changed while it was read: the
// kernel marked a part of a dump NLM_F_DUMP_INTR (nf_tables does for
// tables, chains, rules and sets when a commit lands between two parts,
// never for set elements), or the generation moved between the dumps. What was read is read again, never taken as it is.
var ErrDumpInterrupted = errors.New("the ruleset changed while it was read")

// Interrupted says whether a part of a dump was marked NLM_F_DUMP_INTR
// (mdlayher/netlink passes the flag on silently).
func Interrupted(msgs []netlink.Message) bool {
	return slices.ContainsFunc(msgs, func(m netlink.Message) bool { return m.Header.Flags&netlink.DumpInterrupted != 0 })
}

// dumpTries bounds the dumps of a set while other commits keep
// interrupting them.
const dumpTries = 3

// dialDump opens the socket a set is dumped on, and dumpGeneration reads
// the ruleset generation around the dump (variables for the tests, which
// answer with made-up messages).
var (
	dialDump = func() (*netlink.Conn, error) {
		return netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{MessageBufferSize: dumpBuffer})
	}
	dumpGeneration = Generation
)

// dumpElementsOnce is one dump of DumpElements.
func dumpElementsOnce(conn *netlink.Conn, set string) ([]Elem, error) {
	g0, err := dumpGeneration()
	if err != nil {
		return nil, err
	}
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
		return nil, err
	}
	var out []Elem
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		els, err := parseElemList(m.Data[4:])
		if err != nil {
			return nil, err
		}
		out = append(out, els...)
	}
	if g1, err := dumpGeneration(); err != nil {
		return nil, err
	} else if g1 != g0 {
		return nil, &interruptedDump{why: fmt.Sprintf("generation %d, then %d", g0, g1), els: out}
	}
	if Interrupted(msgs) { // not sent for set element dumps today (see DumpElements)
		return nil, &interruptedDump{why: "a part marked NLM_F_DUMP_INTR", els: out}
	}
	return out, nil
}

// parseElemList reads the elements of one NFT_MSG_NEWSETELEM message.
// It walks the attributes in place (a dump or the lookups of 200,000 bans
// decode 200,000 of these: a decoder per nested attribute cost a tenth
// of 'moat bans --all'); parseElemListRef in the tests is the decoder it
// answers as (FuzzParseElemList).
func parseElemList(data []byte) ([]Elem, error) {
	var out []Elem
	err := eachAttr(data, func(typ uint16, v []byte) error {
		if typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			return nil
		}
		return eachAttr(v, func(typ uint16, v []byte) error {
			if typ != unix.NFTA_LIST_ELEM {
				return nil
			}
			var e Elem
			err := eachAttr(v, func(typ uint16, v []byte) error {
				switch typ {
				case unix.NFTA_SET_ELEM_KEY:
					return eachAttr(v, func(typ uint16, v []byte) error {
						if typ == unix.NFTA_DATA_VALUE {
							e.Key = slices.Clone(v)
							if e.Key == nil {
								e.Key = []byte{}
							}
						}
						return nil
					})
				case unix.NFTA_SET_ELEM_FLAGS:
					if len(v) != 4 {
						return fmt.Errorf("netlink: attribute %d is not a uint32; length: %d", typ, len(v))
					}
					e.End = binary.BigEndian.Uint32(v)&unix.NFT_SET_ELEM_INTERVAL_END != 0
				case unix.NFTA_SET_ELEM_TIMEOUT, unix.NFTA_SET_ELEM_EXPIRATION:
					if len(v) != 8 {
						return fmt.Errorf("netlink: attribute %d is not a uint64; length: %d", typ, len(v))
					}
					d := time.Duration(binary.BigEndian.Uint64(v)) * time.Millisecond
					if typ == unix.NFTA_SET_ELEM_TIMEOUT {
						e.Timeout = d
					} else {
						e.Expires = d
					}
				case unix.NFTA_SET_ELEM_USERDATA:
					e.Comment = RuleComment(v) // comment: type 0, as a rule's
				}
				return nil
			})
			if err != nil {
				return err
			}
			if e.Key != nil {
				out = append(out, e)
			}
			return nil
		})
	})
	return out, err
}

// eachAttr calls fn with the type (flags cleared) and value of each
// netlink attribute in b; a length that does not fit is an error.
func eachAttr(b []byte, fn func(typ uint16, v []byte) error) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return errors.New("netlink: attribute too short")
		}
		n := int(binary.NativeEndian.Uint16(b))
		if n > len(b) || n != 0 && n < 4 {
			return fmt.Errorf("netlink: bad attribute length %d of %d bytes", n, len(b))
		}
		n = max(n, 4) // a length of 0: no value (as the netlink package reads it)
		if err := fn(binary.NativeEndian.Uint16(b[2:])&attrTypeMask, b[4:n]); err != nil {
			return err
		}
		b = b[min((n+3)&^3, len(b)):]
	}
	return nil
}

// attrTypeMask clears an attribute type's nested and byte order flags.
const attrTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

// SyncComments reads the comments of the sync chain's rules: moat's
// record of what it loaded (see SyncChain), a few rules, no process.
func (NetlinkReader) SyncComments() ([]string, error) {
	c, done, err := Conn()
	defer done()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	rules, err := c.GetRules(moatTable, &gnft.Chain{Name: SyncChain, Table: moatTable})
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rules))
	for _, r := range rules {
		out = append(out, RuleComment(r.UserData))
	}
	return out, nil
}

// BansUpTo dumps one ban set's elements until more than n are read
// (more: the dump was stopped there, the set holds others). The kernel
// walks a hash set from its start for each 32 KiB part of a dump, so a
// whole dump of 200,000 bans costs seconds while the first parts cost
// microseconds; the socket is closed early, which ends the dump.
func (NetlinkReader) BansUpTo(set string, n int) (bans []ruleset.Ban, more bool, err error) {
	els, more, err := dumpElementsUpTo(set, n)
	if err != nil {
		return nil, false, err
	}
	for _, e := range els {
		if a, ok := netip.AddrFromSlice(e.Key); ok && !e.End {
			if len(bans) == n {
				return bans, true, nil
			}
			bans = append(bans, ruleset.Ban{Addr: a.Unmap(), Timeout: e.Timeout, Expires: e.Expires, Reason: e.Comment})
		}
	}
	return bans, more, nil
}

// dumpElementsUpTo is DumpElements stopped once more than n elements were
// read (more is then true). It reads the socket itself: the netlink
// package's readers drain a dump to its end.
func dumpElementsUpTo(set string, n int) (out []Elem, more bool, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, false, fmt.Errorf("nftables: %w", err)
	}
	defer func() { _ = unix.Close(fd) }() // closing ends the kernel's dump
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, false, fmt.Errorf("nftables: %w", err)
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(set + "\x00")},
	})
	if err != nil {
		return nil, false, err
	}
	const seq = 1
	msg := netlink.Message{
		Header: netlink.Header{
			Type:     netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags:    netlink.Request | netlink.Dump,
			Sequence: seq,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	msg.Header.Length = uint32(unix.NLMSG_HDRLEN + len(msg.Data))
	req, err := msg.MarshalBinary()
	if err != nil {
		return nil, false, err
	}
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, false, fmt.Errorf("nftables: list set %s: %w", set, err)
	}
	buf := make([]byte, 2*dumpBuffer)
	for {
		m, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("nftables: list set %s: %w", set, err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:m])
		if err != nil {
			return nil, false, fmt.Errorf("nftables: list set %s: %w", set, err)
		}
		for _, nm := range msgs {
			if nm.Header.Seq != seq {
				continue
			}
			switch nm.Header.Type {
			case unix.NLMSG_DONE:
				return out, false, nil
			case unix.NLMSG_ERROR:
				if len(nm.Data) < 4 {
					return nil, false, fmt.Errorf("nftables: list set %s: short error message", set)
				}
				if code := int32(binary.NativeEndian.Uint32(nm.Data[:4])); code != 0 {
					return nil, false, fmt.Errorf("nftables: list set %s: %w", set, syscall.Errno(-code))
				}
				return out, false, nil
			}
			if len(nm.Data) < 4 {
				continue
			}
			els, err := parseElemList(nm.Data[4:])
			if err != nil {
				return nil, false, fmt.Errorf("nftables: list set %s: %w", set, err)
			}
			out = append(out, els...)
		}
		if len(out) > n {
			return out, true, nil
		}
	}
}

// Objects lists the names of the chains, sets and maps of moat's table
// (none when it is absent): what a whole apply replaces. `nft -j -t list
// table` fetched every element of every set first (10 to 20 s with
// 200,000 bans), though only the names are used.
func (NetlinkReader) Objects() (map[string][]string, error) {
	out := map[string][]string{}
	if ok, err := (NetlinkReader{}).TableExists(); err != nil || !ok {
		return out, err
	}
	c, done, err := Conn()
	defer done()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(gnft.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == TableName {
			out["chain"] = append(out["chain"], ch.Name)
		}
	}
	sets, err := c.GetSets(moatTable)
	if err != nil {
		return nil, fmt.Errorf("nftables: list sets: %w", err)
	}
	for _, s := range sets {
		if s.Anonymous {
			continue // a rule's own { ... }: nft lists it with the rule
		}
		typ := "set"
		if s.IsMap {
			typ = "map"
		}
		out[typ] = append(out[typ], s.Name)
	}
	return out, nil
}

// SetIs says whether moat's table holds a set named as want with want's
// definition (key type, flags, size, default timeout, comment): a ban set
// that is needs no re-creation, and its bans need not be read.
func (NetlinkReader) SetIs(want *knftables.Set) (bool, error) {
	c, done, err := Conn()
	defer done()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	s, err := c.GetSetByName(moatTable, want.Name)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("nftables: get set %s: %w", want.Name, err)
	}
	var size uint32
	if want.Size != nil {
		size = uint32(*want.Size)
	}
	var timeout time.Duration
	if want.Timeout != nil {
		timeout = *want.Timeout
	}
	comment := ""
	if want.Comment != nil {
		comment = *want.Comment
	}
	have, err := setComment(want.Name)
	if err != nil {
		return false, err
	}
	return have == comment && s.KeyType.Name == want.Type && !s.IsMap && !s.Constant && !s.Concatenation &&
		s.Dynamic == slices.Contains(want.Flags, knftables.DynamicFlag) &&
		s.HasTimeout == slices.Contains(want.Flags, knftables.TimeoutFlag) &&
		s.Interval == slices.Contains(want.Flags, knftables.IntervalFlag) &&
		s.Size == size && s.Timeout == timeout, nil
}

// setComment reads the comment of a set of moat's table (google/nftables
// does not decode it): its user data, comment type 7 (libnftnl's
// NFTNL_UDATA_SET_COMMENT).
func setComment(set string) (string, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return "", fmt.Errorf("nftables: %w", err)
	}
	defer CloseLater(conn.Close) // read only; off the caller's path (closeLater)
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_SET_NAME, Data: []byte(set + "\x00")},
	})
	if err != nil {
		return "", err
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSET), Flags: netlink.Request},
		Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return "", fmt.Errorf("nftables: get set %s: %w", set, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return "", err
		}
		for ad.Next() {
			if ad.Type() == unix.NFTA_SET_USERDATA {
				return udataString(ad.Bytes(), 7), nil
			}
		}
	}
	return "", nil
}
