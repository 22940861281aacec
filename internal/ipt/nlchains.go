package ipt

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/nft"
)

// With iptables-nft, moat's chains are chains of the nftables tables ip
// and ip6 filter and raw, and every rule iptables-restore writes is an
// nftables rule: its expressions (native ones, and compat matches and
// targets holding the x_tables data) read over netlink say exactly what
// the rule does, in the bytes the kernel keeps. The fingerprint of moat's
// chains is taken from them instead of from iptables-save, which a
// command ran twice (one process per family) after every rule change:
// the text form is read only to explain a difference (the drift check).
//
// The form: per family, per table, moat's chains (MOAT-*) by name, each
// with its rules in order, and the built-in chains' jumps to moat's
// chains (a rule whose verdict is the jump to moat's chain of its hook,
// whatever condition comes before it: isJumpToMoat), each rule as its
// expressions (name and data; a counter's data, which traffic changes,
// left out), its compat attribute (the protocol and flags of `-p`) and
// its user data. Handles and positions are left out: the same rules
// written again get new handles. A rule iptables-save cannot show (a set
// lookup added with nft) is in its expressions. Every dump is read at
// one ruleset generation (hashChainsNetlink).

// nftables netlink attributes (linux/netfilter/nf_tables.h).
const (
	nftaChainTable = 1
	nftaChainName  = 3

	nftaRuleTable       = 1
	nftaRuleChain       = 2
	nftaRuleHandle      = 3
	nftaRuleExpressions = 4
	nftaRuleCompat      = 5
	nftaRuleUserdata    = 7

	nftaListElem = 1
	nftaExprName = 1
	nftaExprData = 2

	nftaXtName = 1 // NFTA_MATCH_NAME, NFTA_TARGET_NAME
	nftaXtRev  = 2
	nftaXtInfo = 3

	nftaImmediateDreg = 1
	nftaImmediateData = 2
	nftaDataVerdict   = 2
	nftaVerdictCode   = 1
	nftaVerdictChain  = 2

	nftJump = 0xfffffffd // NFT_JUMP (-3)

	ipsetAttrIndex     = 11 // IPSET_ATTR_INDEX
	ipsetCmdGetByIndex = 15 // IPSET_CMD_GET_BYINDEX
	ipsetInvalidID     = 0xffff
)

// nlRule is one rule of an iptables-nft table as read over netlink.
type nlRule struct {
	chain  string
	handle uint64
	exprs  []nlExpr
	compat []byte
	udata  []byte
}

type nlExpr struct {
	name string
	data []byte
}

// nlChainsRead is moat's chains of both families read over netlink.
type nlChainsRead struct {
	// any: some moat chain exists (in either family).
	any bool
	// sets are the ipset indexes moat's rules refer to (set matches,
	// the SET target).
	sets map[uint16]bool
}

// nlFamilies are the nftables families of iptables-nft's tables, in the
// order of families.
var nlFamilies = []struct {
	proto uint8
	name  string
}{{unix.NFPROTO_IPV4, "ip"}, {unix.NFPROTO_IPV6, "ip6"}}

// hashChains is hashChainsNetlink (a variable for the tests of the
// fallback to iptables-save).
var hashChains = hashChainsNetlink

// dialNetfilter opens the netlink socket the chains are read on (a
// variable for the tests, which answer with made-up messages).
var dialNetfilter = func() (*netlink.Conn, error) { return netlink.Dial(unix.NETLINK_NETFILTER, nil) }

// errDumpInterrupted says that the ruleset changed while it was read
// (rules may then be skipped or read twice): read again, never taken as
// it is. interrupted says whether a part of a dump was marked
// NLM_F_DUMP_INTR. Both are nftables' (its set dumps check the same).
var (
	errDumpInterrupted = nft.ErrDumpInterrupted
	interrupted        = nft.Interrupted
)

// nlReadTries bounds the reads of moat's chains while other commits keep
// interrupting them; then the error stands (the caller falls back to
// iptables-save, which retries on its own).
const nlReadTries = 3

// hashChainsNetlink writes moat's chains, rules and jumps of both
// families, read over netlink, into h (the form above). The dumps are
// read whole at one ruleset generation (the same before and after, and
// no part marked interrupted), else again; only such a read is written
// into h.
func hashChainsNetlink(ctx context.Context, h hash.Hash) (nlChainsRead, error) {
	c, err := dialNetfilter()
	if err != nil {
		return nlChainsRead{}, fmt.Errorf("read moat's chains over netlink: %w", err)
	}
	defer nft.CloseLater(c.Close) // read only; off the caller's path (ipsetConn.Close)
	var buf bytes.Buffer
	for try := 1; ; try++ {
		buf.Reset()
		out, err := readChainsNetlink(ctx, c, &buf)
		if err == nil {
			h.Write(buf.Bytes())
			return out, nil
		}
		if !errors.Is(err, errDumpInterrupted) || try == nlReadTries {
			return nlChainsRead{}, err
		}
	}
}

// readChainsNetlink is one read of hashChainsNetlink, into w.
func readChainsNetlink(ctx context.Context, c *netlink.Conn, w io.Writer) (nlChainsRead, error) {
	out := nlChainsRead{sets: map[uint16]bool{}}
	g0, err := nftGeneration()
	if err != nil {
		return out, fmt.Errorf("read moat's chains over netlink: %w", err)
	}
	for _, fam := range nlFamilies {
		chains, err := moatChains(ctx, c, fam.proto)
		if err != nil {
			return out, err
		}
		fmt.Fprintf(w, "# netlink %s\n", fam.name)
		for _, t := range tables {
			rules, err := dumpRules(ctx, c, fam.proto, t)
			if err != nil {
				return out, fmt.Errorf("read %s %s rules over netlink: %w", fam.name, t, err)
			}
			byChain := map[string][]nlRule{}
			for _, r := range rules {
				if strings.HasPrefix(r.chain, "MOAT-") || r.isJumpToMoat() {
					byChain[r.chain] = append(byChain[r.chain], r)
				}
			}
			names := slices.Clone(chains[t])
			for n := range byChain {
				if !slices.Contains(names, n) {
					names = append(names, n)
				}
			}
			slices.Sort(names)
			fmt.Fprintf(w, "*%s\n", t)
			for _, n := range names {
				switch {
				case strings.HasPrefix(n, "MOAT-"):
					out.any = true
					fmt.Fprintf(w, ":%s\n", n)
				case oddChainName(n):
					// Not moat's, but it forges iptables-save's text
					// (oddchains.go): seen as drift.
					fmt.Fprintf(w, "!odd %q\n", n)
				}
				for _, r := range byChain[n] {
					r.hash(w)
					r.setIndexes(out.sets)
				}
			}
		}
	}
	if g1, err := nftGeneration(); err != nil {
		return out, fmt.Errorf("read moat's chains over netlink: %w", err)
	} else if g1 != g0 {
		return out, fmt.Errorf("read moat's chains over netlink: generation %d, then %d: %w", g0, g1, errDumpInterrupted)
	}
	return out, nil
}

// hash writes the rule in a form that tells every two rules apart.
func (r nlRule) hash(h io.Writer) {
	field := func(tag byte, b []byte) {
		var n [5]byte
		n[0] = tag
		binary.BigEndian.PutUint32(n[1:], uint32(len(b)))
		_, _ = h.Write(n[:]) // a hash: never fails
		_, _ = h.Write(b)
	}
	field('r', []byte(r.chain))
	for _, e := range r.exprs {
		field('e', []byte(e.name))
		if e.name != "counter" {
			field('d', e.data)
		}
	}
	field('c', r.compat)
	field('u', r.udata)
	_, _ = h.Write([]byte{'\n'})
}

// isJumpToMoat says whether the rule is a built-in chain's jump to moat's
// chain of the same hook: its verdict is that jump, whatever comes before
// it (moat's jumps carry conditions: ParseJump; a jump with another
// condition, made by hand, is hashed too, so the fingerprint sees it).
func (r nlRule) isJumpToMoat() bool {
	if strings.HasPrefix(r.chain, "MOAT-") {
		return false
	}
	var verdict []nlExpr
	for _, e := range r.exprs {
		if e.name == "immediate" {
			verdict = append(verdict, e)
		}
	}
	if len(verdict) != 1 || r.exprs[len(r.exprs)-1].name != "immediate" {
		return false
	}
	code, chain, ok := immediateVerdict(verdict[0].data)
	return ok && code == nftJump && chain == "MOAT-"+r.chain
}

// immediateVerdict reads an immediate expression's verdict (code and the
// chain of a jump or goto); ok is false when it loads no verdict.
func immediateVerdict(data []byte) (code uint32, chain string, ok bool) {
	dreg := -1
	_ = walkAttrs(data, func(typ uint16, v []byte) {
		switch typ {
		case nftaImmediateDreg:
			if len(v) == 4 {
				dreg = int(binary.BigEndian.Uint32(v))
			}
		case nftaImmediateData:
			_ = walkAttrs(v, func(typ uint16, v []byte) {
				if typ != nftaDataVerdict {
					return
				}
				_ = walkAttrs(v, func(typ uint16, v []byte) {
					switch typ {
					case nftaVerdictCode:
						if len(v) == 4 {
							code, ok = binary.BigEndian.Uint32(v), true
						}
					case nftaVerdictChain:
						chain = cString(v)
					}
				})
			})
		}
	})
	return code, chain, ok && dreg == 0
}

// setIndexes adds the ipset indexes the rule's set matches and SET
// targets refer to (xt_set.h: each set is a struct xt_set_info, its
// index first; a target's are add_set, del_set and, from revision 3,
// map_set, in a row). Revision 0 (another layout) is read as none: the
// rule's bytes still hold the index, and the sets' digests are then
// missing from the fingerprint, which then differs from the one taken
// when they were read, and the chains are compared whole.
func (r nlRule) setIndexes(into map[uint16]bool) {
	for _, e := range r.exprs {
		if e.name != "match" && e.name != "target" {
			continue
		}
		var name string
		var rev uint32
		var info []byte
		_ = walkAttrs(e.data, func(typ uint16, v []byte) {
			switch typ {
			case nftaXtName:
				name = cString(v)
			case nftaXtRev:
				if len(v) == 4 {
					rev = binary.BigEndian.Uint32(v)
				}
			case nftaXtInfo:
				info = v
			}
		})
		n := 0
		switch {
		case e.name == "match" && name == "set" && rev >= 1:
			n = 1
		case e.name == "target" && name == "SET" && rev >= 1 && rev <= 2:
			n = 2
		case e.name == "target" && name == "SET" && rev >= 3:
			n = 3
		}
		for i := 0; i < n && 4*i+2 <= len(info); i++ {
			if idx := binary.NativeEndian.Uint16(info[4*i:]); idx != ipsetInvalidID {
				into[idx] = true
			}
		}
	}
}

// moatChains lists the names of moat's chains of one family by table,
// and those of chains under names iptables-save cannot print
// (oddChainName).
func moatChains(ctx context.Context, c *netlink.Conn, proto uint8) (map[string][]string, error) {
	return chainsOf(ctx, c, proto, func(name string) bool { return strings.HasPrefix(name, "MOAT-") || oddChainName(name) })
}

// chainsOf lists the names of the chains of one family's tables moat
// writes (raw, filter) that keep says, by table.
func chainsOf(ctx context.Context, c *netlink.Conn, proto uint8, keep func(string) bool) (map[string][]string, error) {
	msgs, _, err := executeWithin(ctx, c, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETCHAIN), Flags: netlink.Request | netlink.Dump},
		Data:   []byte{proto, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return nil, fmt.Errorf("list chains over netlink: %w", err)
	}
	if interrupted(msgs) {
		return nil, fmt.Errorf("list chains over netlink: %w", errDumpInterrupted)
	}
	out := map[string][]string{}
	for _, m := range msgs {
		var table, name string
		if err := walkAttrs(nfPayload(m), func(typ uint16, v []byte) {
			switch typ {
			case nftaChainTable:
				table = cString(v)
			case nftaChainName:
				name = cString(v)
			}
		}); err != nil {
			return nil, fmt.Errorf("list chains over netlink: %w", err)
		}
		if slices.Contains(tables, table) && keep(name) {
			out[table] = append(out[table], name)
		}
	}
	return out, nil
}

// dumpRules reads every rule of one table of one family, in order; none
// when the table does not exist.
func dumpRules(ctx context.Context, c *netlink.Conn, proto uint8, table string) ([]nlRule, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: nftaRuleTable, Data: []byte(table + "\x00")}})
	if err != nil {
		return nil, err
	}
	msgs, _, err := executeWithin(ctx, c, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{proto, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		if isNoEntry(err) {
			return nil, nil
		}
		return nil, err
	}
	if interrupted(msgs) {
		return nil, errDumpInterrupted
	}
	var out []nlRule
	for _, m := range msgs {
		var r nlRule
		var perr error
		err := walkAttrs(nfPayload(m), func(typ uint16, v []byte) {
			switch typ {
			case nftaRuleTable:
				if cString(v) != table {
					perr = fmt.Errorf("a rule of table %q in the dump of %q", cString(v), table)
				}
			case nftaRuleChain:
				r.chain = cString(v)
			case nftaRuleHandle:
				if len(v) == 8 {
					r.handle = binary.BigEndian.Uint64(v)
				}
			case nftaRuleCompat:
				r.compat = slices.Clone(v)
			case nftaRuleUserdata:
				r.udata = slices.Clone(v)
			case nftaRuleExpressions:
				perr = cmp.Or(perr, walkAttrs(v, func(typ uint16, v []byte) {
					if typ != nftaListElem {
						return
					}
					var e nlExpr
					perr = cmp.Or(perr, walkAttrs(v, func(typ uint16, v []byte) {
						switch typ {
						case nftaExprName:
							e.name = cString(v)
						case nftaExprData:
							e.data = slices.Clone(v)
						}
					}))
					r.exprs = append(r.exprs, e)
				}))
			}
		})
		if err = cmp.Or(err, perr); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func isNoEntry(err error) bool {
	var oe *netlink.OpError
	if errors.As(err, &oe) {
		return oe.Err == unix.ENOENT
	}
	return false
}

// setNameByIndex asks the kernel for the name of the ipset of one index
// (IPSET_CMD_GET_BYINDEX): a listing of every set's header, which gave
// the indexes too, makes the kernel walk each hash set's buckets to size
// it (3 to 4 ms of a command with 100,000 networks in two sets).
func (c *ipsetConn) setNameByIndex(ctx context.Context, idx uint16) (string, error) {
	req, err := nameByIndexRequest(idx)
	if err != nil {
		return "", err
	}
	msgs, err := c.execute(ctx, req)
	if err != nil {
		return "", fmt.Errorf("%w: the name of ipset index %d: %w", errIpsetNetlink, idx, err)
	}
	name := ""
	for _, m := range msgs {
		if err := walkAttrs(nfPayload(m), func(typ uint16, v []byte) {
			if typ == ipsetAttrSetname {
				name = cString(v)
			}
		}); err != nil {
			return "", fmt.Errorf("%w: the name of ipset index %d: %w", errIpsetNetlink, idx, err)
		}
	}
	if name == "" {
		return "", fmt.Errorf("%w: no name for ipset index %d", errIpsetNetlink, idx)
	}
	return name, nil
}

// nameByIndexRequest is the IPSET_CMD_GET_BYINDEX request for idx.
func nameByIndexRequest(idx uint16) (netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint8(ipsetAttrProtocol, ipsetProtocol)
	ae.Bytes(ipsetAttrIndex|unix.NLA_F_NET_BYTEORDER, binary.BigEndian.AppendUint16(nil, idx))
	attrs, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, err
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysIPSet<<8 | ipsetCmdGetByIndex), Flags: netlink.Request},
		Data:   append([]byte{unix.AF_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}, nil
}

// setNamesByIndex is setNameByIndex of each of idxs, the requests
// written together and the answers read back in one exchange (the
// fingerprint asked for eight names, each a round trip through a
// goroutine and a timer). An exchange that does not name every index
// (an error answered, an answer it cannot read) is dropped with its
// socket, and each name is asked alone on a new one, as before: the
// same names, the same errors. Within ipsetAnswerTimeout and while ctx
// lives, as execute.
func (c *ipsetConn) setNamesByIndex(ctx context.Context, idxs []uint16) (map[uint16]string, error) {
	if len(idxs) > 1 && c.broken == nil {
		names, err := c.namesTogether(ctx, idxs)
		if err != nil {
			return nil, fmt.Errorf("%w: the names of ipset indexes %v: %w", errIpsetNetlink, idxs, err)
		}
		if names != nil {
			return names, nil
		}
		// A new socket as dialIpset makes it: the answers left on the
		// old one are dropped with it.
		fresh, err := dialIpset()
		if err != nil {
			return nil, err
		}
		nft.CloseLater(c.c.Close)
		c.c = fresh.c
	}
	out := make(map[uint16]string, len(idxs))
	for _, idx := range idxs {
		name, err := c.setNameByIndex(ctx, idx)
		if err != nil {
			return nil, err
		}
		out[idx] = name
	}
	return out, nil
}

// namesTogether is the one exchange of setNamesByIndex: the names, or
// nil when an answer does not give one (err: the wait ended, and c is
// broken).
func (c *ipsetConn) namesTogether(ctx context.Context, idxs []uint16) (map[uint16]string, error) {
	reqs := make([]netlink.Message, len(idxs))
	for i, idx := range idxs {
		req, err := nameByIndexRequest(idx)
		if err != nil {
			return nil, err
		}
		reqs[i] = req
	}
	done := make(chan map[uint16]string, 1)
	go func() {
		done <- exchangeNames(c.c, reqs, idxs)
	}()
	t := time.NewTimer(ipsetAnswerTimeout)
	defer t.Stop()
	var err error
	select {
	case names := <-done:
		return names, nil
	case <-t.C:
		err = timeoutError()
	case <-ctx.Done():
		err = ctx.Err()
	}
	c.broken = err
	_ = c.c.Close() // ends the read; the error is err
	return nil, err
}

// exchangeNames writes reqs (for idxs) and reads an answer to each:
// the names, or nil when an answer is an error, is not one of them, or
// names no set.
func exchangeNames(c *netlink.Conn, reqs []netlink.Message, idxs []uint16) map[uint16]string {
	sent, err := c.SendMessages(reqs)
	if err != nil || len(sent) != len(idxs) {
		return nil
	}
	bySeq := make(map[uint32]uint16, len(sent))
	for i, m := range sent {
		bySeq[m.Header.Sequence] = idxs[i]
	}
	out := make(map[uint16]string, len(idxs))
	for len(bySeq) > 0 {
		msgs, err := c.Receive()
		if err != nil || len(msgs) == 0 {
			return nil
		}
		for _, m := range msgs {
			idx, ok := bySeq[m.Header.Sequence]
			if !ok {
				return nil
			}
			delete(bySeq, m.Header.Sequence)
			name := ""
			if err := walkAttrs(nfPayload(m), func(typ uint16, v []byte) {
				if typ == ipsetAttrSetname {
					name = cString(v)
				}
			}); err != nil || name == "" {
				return nil
			}
			out[idx] = name
		}
	}
	return out
}
