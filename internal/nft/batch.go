package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/moat-fw/moat/internal/setstore"
)

// batch is one nftables transaction written over netlink: the messages
// between a batch begin and a batch end, which the kernel commits whole
// or not at all, as `nft -f` does. It is used where nft itself is slow:
// nft 1.0.6 fetches every element of every set of the table before it
// writes a set element (0.7 s with 100,000 policy networks loaded), and
// spends tens of milliseconds per element it deletes from an interval
// set.
type batch struct {
	msgs []netlink.Message
	err  error
}

// listBytes bounds the element list of one message: the list is one
// netlink attribute, whose length is 16 bits (an interval element takes
// 36 bytes, a ban with a comment up to about 160).
const listBytes = 32 << 10

func (b *batch) add(typ uint16, flags netlink.HeaderFlags, attrs []netlink.Attribute) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		b.err = errors.Join(b.err, err)
		return
	}
	b.msgs = append(b.msgs, netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | int(typ)),
			Flags: netlink.Request | netlink.Acknowledge | flags,
		},
		// nfgenmsg: family, version, resource ID.
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, data...),
	})
}

// elem is one set element as the kernel holds it.
type elem struct {
	key     netip.Addr
	end     bool // the end of an interval: the first address after it
	open    bool // a start with no end: the interval runs to the top
	timeout time.Duration
	comment string
}

func (e elem) attrs() ([]byte, error) {
	key, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: e.key.AsSlice()}})
	if err != nil {
		return nil, err
	}
	attrs := []netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_KEY, Data: key}}
	if e.end {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_FLAGS, Data: binary.BigEndian.AppendUint32(nil, unix.NFT_SET_ELEM_INTERVAL_END)})
	}
	if e.timeout > 0 {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_TIMEOUT, Data: binary.BigEndian.AppendUint64(nil, uint64(e.timeout.Milliseconds()))})
	}
	var ud []byte
	if e.comment != "" {
		// libnftnl's user data: type 0 (comment), length, NUL-terminated.
		c := e.comment
		if len(c) > 127 {
			c = c[:127]
		}
		ud = append(ud, 0, byte(len(c)+1))
		ud = append(ud, c...)
		ud = append(ud, 0)
	}
	if e.open {
		// Type 1 (flags), NFTNL_SET_ELEM_F_INTERVAL_OPEN, as nft marks it.
		ud = append(ud, 1, 4, 1, 0, 0, 0)
	}
	if ud != nil {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_USERDATA, Data: ud})
	}
	return netlink.MarshalAttributes(attrs)
}

type elemOp int

const (
	addElems    elemOp = iota // add; an element there already is kept
	createElems               // add; an element there already fails the transaction
	deleteElems               // delete; an element not there fails the transaction
)

// elements adds or deletes elements of a set of moat's table, in messages
// whose element lists stay under listBytes.
func (b *batch) elements(op elemOp, set string, els []elem) {
	w := b.elementWriter(op, set)
	for _, e := range els {
		w.add(e)
	}
	w.flush()
}

// elemWriter writes the element lists of one set's messages, as
// netlink.MarshalAttributes would from each element's attributes, without
// an allocation per element (200,000 of them at 100,000 networks).
type elemWriter struct {
	b         *batch
	typ       uint16
	flags     netlink.HeaderFlags
	set       string
	list, one []byte
}

func (b *batch) elementWriter(op elemOp, set string) *elemWriter {
	w := &elemWriter{b: b, typ: unix.NFT_MSG_NEWSETELEM, set: set}
	switch op {
	case addElems:
		w.flags = netlink.Create
	case createElems:
		w.flags = netlink.Create | netlink.Excl
	case deleteElems:
		w.typ = unix.NFT_MSG_DELSETELEM
	}
	return w
}

func (w *elemWriter) add(e elem) {
	w.one = w.one[:0]
	if e.timeout == 0 && e.comment == "" && !e.open {
		w.one = appendIntervalElem(w.one, e.key, e.end)
	} else {
		data, err := e.attrs()
		if err != nil {
			w.b.err = errors.Join(w.b.err, err)
			return
		}
		w.one = appendAttr(w.one, unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM, data)
	}
	if len(w.list)+len(w.one)+4 > listBytes {
		w.flush()
	}
	if w.list == nil {
		w.list = make([]byte, 0, listBytes)
	}
	w.list = append(w.list, w.one...)
}

// flush sends what add wrote as one message.
func (w *elemWriter) flush() {
	if len(w.list) == 0 {
		return
	}
	w.b.add(w.typ, w.flags, []netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(w.set + "\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: w.list},
	})
	w.list = nil
}

// chainPolicy sets a base chain's policy, as nft's `add chain` of a
// chain that is there does (the kernel changes nothing else of it).
func (b *batch) chainPolicy(chain string, policy knftables.BaseChainPolicy) {
	verdict := uint32(1) // NF_ACCEPT
	if policy == knftables.DropPolicy {
		verdict = 0 // NF_DROP
	}
	b.add(unix.NFT_MSG_NEWCHAIN, netlink.Create, []netlink.Attribute{
		{Type: unix.NFTA_CHAIN_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_CHAIN_NAME, Data: []byte(chain + "\x00")},
		{Type: unix.NFTA_CHAIN_POLICY, Data: binary.BigEndian.AppendUint32(nil, verdict)},
	})
}

// flushChain deletes every rule of a chain of moat's table.
func (b *batch) flushChain(chain string) {
	b.add(unix.NFT_MSG_DELRULE, 0, []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
	})
}

// returnRule appends `return comment "COMMENT"` to a chain of moat's table,
// as nft writes it (one immediate verdict, the comment as user data).
func (b *batch) returnRule(chain, comment string) {
	ex, err := expr.Marshal(unix.NFPROTO_INET, &expr.Verdict{Kind: expr.VerdictReturn})
	if err != nil {
		b.err = errors.Join(b.err, err)
		return
	}
	exprs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: ex}})
	if err != nil {
		b.err = errors.Join(b.err, err)
		return
	}
	ud := append([]byte{0, byte(len(comment) + 1)}, comment...)
	ud = append(ud, 0)
	b.add(unix.NFT_MSG_NEWRULE, netlink.Create|unix.NLM_F_APPEND, []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: exprs},
		{Type: unix.NFTA_RULE_USERDATA, Data: ud},
	})
}

// errGenerationMoved says that a batch sent for one ruleset generation
// found another: some other change was committed in between, and nothing
// of the batch was.
var errGenerationMoved = errors.New("nftables: the ruleset changed meanwhile")

// closing holds the closes CloseLater runs, each under a number given in
// order. Not a sync.WaitGroup: CloseLater and WaitClosed are called at
// once from several goroutines (a long-running guard's bans beside its
// other work, tests in parallel), and a WaitGroup given an Add as a Wait
// is ending panics ("WaitGroup is reused before previous Wait has
// returned").
var closing = struct {
	mu      sync.Mutex
	next    uint64              // the number the next close is given
	pending map[uint64]struct{} // the closes still running
	done    *sync.Cond          // a close ended
	waiting int                 // goroutines in WaitClosed (for tests)
}{pending: map[uint64]struct{}{}}

func init() { closing.done = sync.NewCond(&closing.mu) }

// maxPendingCloses is how many closes CloseLater runs at once: past it,
// the caller closes the socket itself. A close waits for the kernel's
// frees, which wait for the machine's load; a long-running process that
// opens sockets faster than the kernel lets it close them (a guard's bans
// in a storm) then waits as it did before CloseLater, and holds no more
// than this many sockets and goroutines for them.
const maxPendingCloses = 64

// closeStartLocked and closeEndLocked count a close in and out, under
// closing.mu.
func closeStartLocked() uint64 {
	id := closing.next
	closing.next++
	closing.pending[id] = struct{}{}
	return id
}

func closeEndLocked(id uint64) {
	delete(closing.pending, id)
	closing.done.Broadcast()
}

// closeLater closes a socket that sent a transaction on a goroutine of
// its own, off the caller's path. The kernel frees what a commit
// replaced after an RCU grace period (nf_tables' destroy work), and the
// release of any netfilter netlink socket waits for that work to finish
// (nft_rcv_nl_event flushes it): a close right after the commit waited
// 5 to 40 ms (perf, sched_switch stacks: __flush_work under
// netlink_release), for nothing the command needs. The transaction is
// over once its acks are read, whatever the close waits for; a command
// that exits first has the kernel close the socket at its exit.
func closeLater(c *netlink.Conn) { CloseLater(c.Close) }

// CloseLater runs close, the release of a netfilter netlink socket, on a
// goroutine of its own (closeLater): for a socket that is done with and
// may be released right after an nf_tables commit, this process's or
// another's. With maxPendingCloses closes running, it closes on the
// caller.
func CloseLater(close func() error) {
	closing.mu.Lock()
	if len(closing.pending) >= maxPendingCloses {
		closing.mu.Unlock()
		_ = close() // done with: nothing is read from it again
		return
	}
	id := closeStartLocked()
	closing.mu.Unlock()
	go func() {
		defer func() {
			closing.mu.Lock()
			closeEndLocked(id)
			closing.mu.Unlock()
		}()
		_ = close() // done with: nothing is read from it again
	}()
}

// WaitClosed waits until every socket CloseLater was given before the
// call is closed. Not those given while it waits: they come from work
// the caller's next step is not ordered after (another goroutine's), and
// a stream of them (a guard's bans, one close beginning before the last
// ends, so that none is ever left) would keep it waiting for good.
func WaitClosed() {
	closing.mu.Lock()
	defer closing.mu.Unlock()
	before := closing.next
	closing.waiting++
	defer func() { closing.waiting-- }()
	for {
		older := false
		for id := range closing.pending {
			if id < before {
				older = true
				break
			}
		}
		if !older {
			return
		}
		closing.done.Wait()
	}
}

// send commits the batch in one transaction. With a generation (genID
// non-zero) the kernel commits it only if the ruleset generation is still
// that one, else nothing (errGenerationMoved).
func (b *batch) send(genID uint32) error {
	if b.err != nil {
		return fmt.Errorf("nftables: build transaction: %w", b.err)
	}
	if len(b.msgs) == 0 {
		return nil
	}
	var beginAttrs []byte
	if genID != 0 {
		var err error
		if beginAttrs, err = netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFNL_BATCH_GENID, Data: binary.BigEndian.AppendUint32(nil, genID)}}); err != nil {
			return err
		}
	}
	size := 0
	for _, m := range b.msgs {
		size += 16 + len(m.Data)
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer closeLater(conn) // the acks below say what happened
	// Acks without the request echoed (errors would repeat whole element
	// lists).
	_ = conn.SetOption(netlink.CapAcknowledge, true)
	// The whole transaction is one send, and the kernel queues an ack for
	// each message before the send returns; the default buffers hold about
	// 200 KiB, which the acks of about 290 messages (1 KiB or less each as
	// the kernel counts them) overflow: the acks are lost and the read
	// fails (ENOBUFS) although the transaction was committed. As root the
	// limits can be raised (nft does too).
	acks := len(b.msgs) * 1024
	if size > 128<<10 || acks > 128<<10 {
		if raw, err := conn.SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) {
				if size > 128<<10 {
					_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size+64<<10)
				}
				if acks > 128<<10 {
					_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, acks+64<<10)
				}
			})
		}
	}
	msgs := make([]netlink.Message, 0, len(b.msgs)+2)
	msgs = append(msgs, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
		Data:   append([]byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}, beginAttrs...),
	})
	msgs = append(msgs, b.msgs...)
	msgs = append(msgs, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
	})
	if _, err := conn.SendMessages(msgs); err != nil {
		return fmt.Errorf("nftables: send transaction: %w", err)
	}
	return readAcks(conn, len(b.msgs), func() bool {
		raw, err := conn.SyscallConn()
		return err == nil && pollIn(raw)
	})
}

// batchAnswerTimeout bounds the wait for a transaction's acks. The kernel
// handles the whole batch within the send (nfnetlink runs in the
// sender's call) and queues every ack, or the errors, before it
// returns: an ack not there by then never comes (lost). It was 30 s: a
// command held that long, its drift vouch with it, for an answer that
// could not come.
var batchAnswerTimeout = 2 * time.Second

// ackReader is the socket a transaction's acks are read from.
type ackReader interface {
	Receive() ([]netlink.Message, error)
	SetReadDeadline(time.Time) error
}

// readAcks reads the n acks of a transaction just sent on c; queued
// says whether an answer waits in the socket.
func readAcks(c ackReader, n int, queued func() bool) error {
	_ = c.SetReadDeadline(time.Now().Add(batchAnswerTimeout))
	for acked := 0; acked < n; {
		replies, err := c.Receive()
		if errors.Is(err, os.ErrDeadlineExceeded) && queued() {
			// The deadline passed while this thread waited for the
			// CPU (a loaded machine), the answer there: read without
			// one (it does not wait), then wait again for the rest.
			_ = c.SetReadDeadline(time.Time{})
			replies, err = c.Receive()
			_ = c.SetReadDeadline(time.Now().Add(batchAnswerTimeout))
		}
		if err != nil {
			if errors.Is(err, unix.ERESTART) {
				return errGenerationMoved
			}
			if errors.Is(err, unix.ENOBUFS) {
				// The kernel dropped acks: the batch was handled whole,
				// committed or not.
				return fmt.Errorf("nftables: transaction's acks lost, committed or not: %w", err)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("nftables: %d of the transaction's %d acks never came (lost), committed or not: %w", n-acked, n, err)
			}
			return fmt.Errorf("nftables: transaction refused: %w", err)
		}
		acked += len(replies)
	}
	return nil
}

// intervalElems are the kernel's elements for an interval set holding ps
// (sorted, not overlapping), as nft writes them: each network a start and
// an end (the first address after it), a network that runs to the top of
// the address space a start marked open, and an end at the zero address
// when no network starts there.
func intervalElems(ps []netip.Prefix) []elem {
	if len(ps) == 0 {
		return nil
	}
	out := make([]elem, 0, 2*len(ps)+1)
	eachIntervalElem(ps, func(e elem) { out = append(out, e) })
	return out
}

// eachIntervalElem calls f with each of intervalElems(ps), in order,
// without making the list.
func eachIntervalElem(ps []netip.Prefix, f func(elem)) {
	if len(ps) == 0 {
		return
	}
	first := ps[0].Masked().Addr()
	if !first.IsUnspecified() {
		zero := netip.IPv6Unspecified()
		if first.Is4() {
			zero = netip.IPv4Unspecified()
		}
		f(elem{key: zero, end: true})
	}
	for _, p := range ps {
		p = p.Masked()
		next := setstore.LastAddr(p).Next()
		if !next.IsValid() {
			f(elem{key: p.Addr(), open: true})
			continue
		}
		f(elem{key: p.Addr()})
		f(elem{key: next, end: true})
	}
}

// diffIntervals returns the elements to delete from an interval set that
// holds the networks old and to add to it so that it holds new (both
// sorted and not overlapping, as netipx gives them): a walk of the two
// lists, so a change of a few networks among 100,000 costs one pass and
// no map.
func diffIntervals(old, new []netip.Prefix) (del, add []elem) {
	var gone, come []netip.Prefix
	i, j := 0, 0
	for i < len(old) || j < len(new) {
		switch {
		case j == len(new) || i < len(old) && setstore.ComparePrefix(old[i], new[j]) < 0:
			gone = append(gone, old[i])
			i++
		case i == len(old) || setstore.ComparePrefix(old[i], new[j]) > 0:
			come = append(come, new[j])
			j++
		default:
			i++
			j++
		}
	}
	del, add = intervalElems(gone), intervalElems(come)
	// intervalElems puts an end at zero before a first network that does
	// not start there; the set has one when its first network does not.
	del, add = stripZeroEnd(del, gone), stripZeroEnd(add, come)
	zeroEnd := func(ps []netip.Prefix) bool { return len(ps) > 0 && !ps[0].Masked().Addr().IsUnspecified() }
	switch {
	case zeroEnd(old) && !zeroEnd(new):
		del = append(intervalElems(old[:1])[:1], del...)
	case !zeroEnd(old) && zeroEnd(new):
		add = append(intervalElems(new[:1])[:1], add...)
	}
	// An element that goes with one network and comes with another (an
	// end shared by two networks of different lengths) stays.
	return cancelElems(del, add)
}

func stripZeroEnd(els []elem, ps []netip.Prefix) []elem {
	if len(ps) > 0 && !ps[0].Masked().Addr().IsUnspecified() {
		return els[1:]
	}
	return els
}

type elemKey struct {
	key  netip.Addr
	end  bool
	open bool
}

// cancelElems drops the elements that are both deleted and added.
func cancelElems(del, add []elem) ([]elem, []elem) {
	if len(del) == 0 || len(add) == 0 {
		return del, add
	}
	in := make(map[elemKey]bool, len(del))
	for _, e := range del {
		in[elemKey{e.key, e.end, e.open}] = true
	}
	both := map[elemKey]bool{}
	var a2 []elem
	for _, e := range add {
		k := elemKey{e.key, e.end, e.open}
		if in[k] {
			both[k] = true
			continue
		}
		a2 = append(a2, e)
	}
	var d2 []elem
	for _, e := range del {
		if !both[elemKey{e.key, e.end, e.open}] {
			d2 = append(d2, e)
		}
	}
	return d2, a2
}

// diffElems returns the elements to delete from old and to add to it to
// hold new.
func diffElems(old, new []elem) (del, add []elem) {
	in := make(map[elemKey]bool, len(old))
	for _, e := range old {
		in[elemKey{e.key, e.end, e.open}] = true
	}
	keep := make(map[elemKey]bool, len(new))
	for _, e := range new {
		k := elemKey{e.key, e.end, e.open}
		keep[k] = true
		if !in[k] {
			add = append(add, e)
		}
	}
	for _, e := range old {
		if !keep[elemKey{e.key, e.end, e.open}] {
			del = append(del, e)
		}
	}
	return del, add
}
