package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/termtext"
)

// An `nft -f` or `iptables-restore` that moat runs commits whatever its
// input says at whatever generation the ruleset has then: unlike moat's
// own netlink transactions (NFNL_BATCH_GENID), nothing ties it to the
// generation moat last looked at. A rule put by hand into moat's table
// or chains after that last look and before the program's commit was
// written over, and the full comparison afterwards found moat's rules as
// written: the hand change lost without a word.
//
// A CommitWatch listens to the nf_tables notifications of the network
// namespace (group NFNLGRP_NFTABLES) from before that last look until
// after the program has ended: every commit's changes (table, chain,
// rule, set, element), then its NEWGEN message with the new generation,
// the committing process (PID and name) and, in the message header, the
// netlink port of its socket. The commits are delivered in the order
// the kernel made them (the notifications are sent under the commit
// mutex). Overwritten then names each commit of another process that
// changed an object of moat's that one of moat's programs' commits wrote
// after it: that change may be gone, and the command says so.

// Change is one object a commit changed, as its notification names it.
type Change struct {
	Msg    uint16 // NFT_MSG_NEWRULE, NFT_MSG_DELCHAIN, ...
	Family uint8  // NFPROTO_INET, NFPROTO_IPV4, ...
	Table  string
	// Name is the chain's (chains and rules), the set's (sets and
	// elements), the object's or flowtable's; "" for a table.
	Name string
}

// Commit is one nf_tables transaction the kernel committed.
type Commit struct {
	Gen     uint32 // the generation it made
	PID     uint32 // the committing process, as the initial PID namespace numbers it
	PortID  uint32 // its netlink socket's port (autobound: its PID in its own namespace)
	Comm    string // the committing process's name
	Changes []Change
}

// CommitWatch collects the commits of the calling thread's network
// namespace from its start (WatchCommits) until Stop.
type CommitWatch struct {
	c    *netlink.Conn
	mu   sync.Mutex
	cond *sync.Cond
	cur  []Change
	all  []Commit
	// last is the highest generation seen; lost: the socket overran
	// (ENOBUFS), a message could not be read, or a generation was
	// skipped (a commit not heard), so commits may be missing.
	last  uint32
	seen  bool
	lost  bool
	ended bool
	// paused: not listening since pause, until From says where the
	// listening began again (a gap up to there is expected).
	paused bool
	// taken counts the notifications read: Stop waits on while they
	// come.
	taken uint64
	done  chan struct{}
}

// watchBuffer is the receive buffer a watch asks for (tests make it
// small to overrun it).
var watchBuffer = 16 << 20

// Stop waits for the generation it is given for stopWait without a
// notification read (and none queued), and stopMost at most.
var (
	stopWait = time.Second
	stopMost = 10 * time.Second
)

// readHook, in tests, runs in the reader before each read of the socket
// (a reader late to its socket).
var readHook func()

// HoldReaders makes every watch's reader wait, before each read of its
// socket, from a call of hold until a call of the release that call
// returns (tests in this and other packages overrun a watch by holding
// its reader through a flood of commits: a reader on the other
// processor could keep up with it); end ends it. Call HoldReaders and
// end with no watch reading.
func HoldReaders() (hold func() (release func()), end func()) {
	var mu sync.Mutex
	var gate chan struct{}
	readHook = func() {
		mu.Lock()
		c := gate
		mu.Unlock()
		if c != nil {
			<-c
		}
	}
	hold = func() func() {
		g := make(chan struct{})
		mu.Lock()
		gate = g
		mu.Unlock()
		return func() {
			mu.Lock()
			gate = nil
			mu.Unlock()
			close(g)
		}
	}
	return hold, func() { readHook = nil }
}

// WatchCommits starts listening to the commits of the calling thread's
// network namespace.
func WatchCommits() (*CommitWatch, error) { return WatchCommitsBuffer(watchBuffer) }

// WatchCommitsBuffer is WatchCommits with a receive buffer of size bytes
// (tests overrun a small one).
func WatchCommitsBuffer(size int) (*CommitWatch, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("nftables: watch commits: %w", err)
	}
	// Room for a large commit's notifications while the reader catches
	// up (as root the limit does not apply); a smaller buffer that
	// overruns says so (lost).
	if raw, err := c.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, size)
			}
		})
	}
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		_ = c.Close() // nothing read
		return nil, fmt.Errorf("nftables: watch commits: %w", err)
	}
	w := &CommitWatch{c: c, done: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	go w.read()
	return w, nil
}

func (w *CommitWatch) read() {
	defer close(w.done)
	for {
		if readHook != nil {
			readHook()
		}
		msgs, err := w.c.Receive()
		w.mu.Lock()
		if err != nil {
			if w.ended {
				w.mu.Unlock()
				return
			}
			var oe *netlink.OpError
			if errors.Is(err, unix.ENOBUFS) || errors.As(err, &oe) && errors.Is(oe.Err, unix.ENOBUFS) {
				w.lost = true
				w.cur = nil
				w.mu.Unlock()
				continue
			}
			// A socket that cannot be read any more: whatever follows
			// is unknown.
			w.lost, w.ended = true, true
			w.cond.Broadcast()
			w.mu.Unlock()
			return
		}
		for _, m := range msgs {
			w.take(m)
		}
		w.taken += uint64(len(msgs))
		w.cond.Broadcast()
		w.mu.Unlock()
	}
}

// take reads one notification; w.mu is held.
func (w *CommitWatch) take(m netlink.Message) {
	if uint16(m.Header.Type)>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
		return
	}
	msg := uint16(m.Header.Type) & 0xff
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		w.lost = true
		return
	}
	ad.ByteOrder = binary.BigEndian
	if msg == unix.NFT_MSG_NEWGEN {
		cm := Commit{PortID: m.Header.PID, Changes: w.cur}
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_GEN_ID:
				cm.Gen = ad.Uint32()
			case unix.NFTA_GEN_PROC_PID:
				cm.PID = ad.Uint32()
			case unix.NFTA_GEN_PROC_NAME:
				cm.Comm = strings.TrimRight(ad.String(), "\x00")
			}
		}
		if ad.Err() != nil {
			w.lost = true
		}
		w.cur = nil
		if !w.seen || int32(cm.Gen-w.last) > 0 {
			// The kernel moves the generation by one a commit (an
			// aborted transaction moves it not) and tells each: a
			// generation skipped while listening is a commit not
			// heard, whatever the socket said. The changes read
			// since the last NEWGEN heard are then of this commit
			// or of those whose NEWGEN was lost: they are nobody's,
			// not this committer's (an overrun socket had moat's
			// own record named as another program's change).
			if w.seen && !w.paused && cm.Gen != w.last+1 {
				w.lost = true
				cm.Changes = nil
			}
			w.last, w.seen = cm.Gen, true
		}
		w.all = append(w.all, cm)
		return
	}
	// The attribute numbers of the table and of the object's name.
	var nameAttr uint16
	switch msg {
	case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_DELTABLE:
	case unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN:
		nameAttr = unix.NFTA_CHAIN_NAME
	case unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
		nameAttr = unix.NFTA_RULE_CHAIN
	case unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET:
		nameAttr = unix.NFTA_SET_NAME
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
		nameAttr = unix.NFTA_SET_ELEM_LIST_SET
	case unix.NFT_MSG_NEWOBJ, unix.NFT_MSG_DELOBJ:
		nameAttr = unix.NFTA_OBJ_NAME
	case unix.NFT_MSG_NEWFLOWTABLE, unix.NFT_MSG_DELFLOWTABLE:
		nameAttr = 2 // NFTA_FLOWTABLE_NAME
	default:
		return
	}
	ch := Change{Msg: msg, Family: m.Data[0]}
	for ad.Next() {
		switch {
		case ad.Type() == 1: // NFTA_*_TABLE (NFTA_TABLE_NAME for a table)
			ch.Table = strings.TrimRight(ad.String(), "\x00")
		case nameAttr != 0 && ad.Type() == nameAttr:
			ch.Name = strings.TrimRight(ad.String(), "\x00")
		}
	}
	if ad.Err() != nil {
		w.lost = true
		return
	}
	// One change per object a commit touches is enough: a rewrite of a
	// chain of 100,000 rules sends as many notifications.
	if n := len(w.cur); n > 0 && w.cur[n-1] == ch {
		return
	}
	w.cur = append(w.cur, ch)
}

// From tells the watch the generation read once it was listening: Stop
// waits for no commit up to it.
func (w *CommitWatch) From(gen uint32) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.seen || int32(gen-w.last) > 0 {
		w.last, w.seen = gen, true
	}
	w.paused = false
}

// Stop ends the watch once it has seen the commit of generation gen (the
// generation read after the programs watched ended: their commits'
// notifications were queued before they returned). It waits while
// notifications come or wait in the socket (a reader late on a loaded
// machine), and gives up after stopWait without any (gen will not come)
// or stopMost in all. complete is false when commits may be missing (the
// socket overran, a notification could not be read or was skipped, gen
// never came).
func (w *CommitWatch) Stop(gen uint32) (commits []Commit, complete bool) {
	if w == nil {
		return nil, false
	}
	start := time.Now()
	deadline := start.Add(stopWait)
	timer := time.AfterFunc(stopWait, func() {
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	w.mu.Lock()
	taken := w.taken
	for !w.ended && !w.lost && (!w.seen || int32(gen-w.last) > 0) {
		if now := time.Now(); !now.Before(deadline) {
			if w.taken == taken && !w.queued() || now.Sub(start) >= stopMost {
				break
			}
			// Still reading: another while.
			taken, deadline = w.taken, now.Add(stopWait)
			timer.Reset(stopWait)
		}
		w.cond.Wait()
	}
	reached := w.seen && int32(gen-w.last) <= 0
	w.ended = true
	w.mu.Unlock()
	timer.Stop()
	w.endReader()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all, reached && !w.lost
}

// endReader ends the reader of a watch that ended, and releases its
// socket. The reader ends at a read deadline and the socket is released
// off the caller's path (CloseLater): the release of a netfilter socket
// takes the ruleset's commit mutex and waits there for the destroy work
// of the commits before (nft_rcv_nl_event), the commits just watched:
// closed here, it made an iptables 'moat blocklist update' of 100,000
// networks wait 5 to 30 ms more (docs/benchmarks.md, ipbl). A reader
// the deadline does not end within readerEndWait (a socket that takes
// none) is ended by the close, here, as before.
func (w *CommitWatch) endReader() {
	if w.c.SetReadDeadline(time.Now()) == nil {
		t := time.NewTimer(readerEndWait)
		defer t.Stop()
		select {
		case <-w.done:
			CloseLater(w.c.Close) // read only
			return
		case <-t.C:
		}
	}
	_ = w.c.Close() // read only: ends the reader
	<-w.done
}

// readerEndWait bounds the wait for a reader to end at its read deadline.
var readerEndWait = time.Second

// queued says whether notifications wait in the socket, unread.
func (w *CommitWatch) queued() bool {
	raw, err := w.c.SyscallConn()
	if err != nil {
		return false
	}
	return pollIn(raw)
}

// pollIn says whether a read of the socket would not wait: a message
// queued, or an error (ENOBUFS) to read.
func pollIn(raw syscall.RawConn) bool {
	in := false
	_ = raw.Control(func(fd uintptr) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 0)
		in = err == nil && n > 0 && pfd[0].Revents != 0
	})
	return in
}

// Close ends the watch, its commits unread.
func (w *CommitWatch) Close() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.ended = true
	w.mu.Unlock()
	_ = w.c.Close() // read only: ends the reader
	<-w.done
}

// pause stops listening (a transaction of moat's own whose
// notifications would only cost: the stage of a first load).
func (w *CommitWatch) pause() {
	if w != nil {
		w.mu.Lock()
		w.paused = true
		w.mu.Unlock()
		_ = w.c.LeaveGroup(unix.NFNLGRP_NFTABLES) // resume says whether it listens
	}
}

// resume listens again; false when it cannot (the watch then knows
// nothing more).
func (w *CommitWatch) resume() bool {
	if w == nil {
		return false
	}
	if err := w.c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		w.mu.Lock()
		w.lost = true
		w.mu.Unlock()
		return false
	}
	return true
}

// initPIDNS says whether this process runs in the initial PID namespace,
// whose numbers the kernel gives as a commit's PID (its inode number is
// fixed: PROC_PID_INIT_INO).
var initPIDNS = sync.OnceValue(func() bool {
	link, err := os.Readlink("/proc/self/ns/pid")
	return err == nil && link == "pid:[4026531836]"
})

// selfComm is this process's name as the kernel gives it (15 bytes at
// most); "" when it cannot be read.
var selfComm = sync.OnceValue(func() string {
	data, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
})

// CommittedBy says whether commit c was made by moat: by this process
// (its name: the kernel gives the committing thread's ID, and a Go
// program commits from any of its threads; no other process of moat's
// changes moat's chains while it holds the state lock, the guard's bans
// being elements) or by one of pids, the tools it started (numbered in
// moat's PID namespace): by the netlink port of the tool's socket
// (autobound to its PID in its own namespace) or, in the initial PID
// namespace, by the PID the kernel gives (a tool is one thread).
func CommittedBy(c Commit, pids []int) bool {
	if self := selfComm(); self != "" && c.Comm == self {
		return true
	}
	for _, p := range pids {
		if p <= 0 {
			continue
		}
		if c.PortID == uint32(p) || initPIDNS() && c.PID == uint32(p) {
			return true
		}
	}
	return false
}

// Overwritten names the commits among commits (in the kernel's order)
// that ours says were not made by moat and that changed an object
// mine says is moat's, where a commit of moat's after them wrote the
// same object (its chain or set, or the table whole): what they did
// may have been written over. Each is a line for the admin, with the
// committing process and what it changed.
func Overwritten(commits []Commit, ours func(Commit) bool, mine func(Change) bool) []string {
	var out []string
	for i, c := range commits {
		if ours(c) {
			continue
		}
		var hit []Change
		for _, ch := range c.Changes {
			if !mine(ch) {
				continue
			}
			if writtenAfter(commits[i+1:], ours, ch) {
				hit = append(hit, ch)
			}
		}
		if len(hit) > 0 {
			out = append(out, describeCommit(c, hit))
		}
	}
	return out
}

// writtenAfter says whether one of moat's commits among later wrote the
// object ch changed.
func writtenAfter(later []Commit, ours func(Commit) bool, ch Change) bool {
	for _, c := range later {
		if !ours(c) {
			continue
		}
		for _, o := range c.Changes {
			if o.Family != ch.Family || o.Table != ch.Table {
				continue
			}
			if tableMsg(o.Msg) || tableMsg(ch.Msg) || o.Name == ch.Name && sameKind(o.Msg, ch.Msg) {
				return true
			}
		}
	}
	return false
}

func tableMsg(m uint16) bool { return m == unix.NFT_MSG_NEWTABLE || m == unix.NFT_MSG_DELTABLE }

// sameKind: chains and their rules share a name space, sets and their
// elements another.
func sameKind(a, b uint16) bool { return kindOf(a) == kindOf(b) }

func kindOf(m uint16) string {
	switch m {
	case unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN, unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
		return "chain"
	case unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET, unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
		return "set"
	case unix.NFT_MSG_NEWOBJ, unix.NFT_MSG_DELOBJ:
		return "object"
	case unix.NFT_MSG_NEWFLOWTABLE, unix.NFT_MSG_DELFLOWTABLE:
		return "flowtable"
	}
	return "table"
}

// describeCommit says who committed c and what of moat's it changed
// (hit), every name made printable (they are anyone's text).
func describeCommit(c Commit, hit []Change) string {
	seen := map[string]bool{}
	var what []string
	for _, ch := range hit {
		s := describeChange(ch)
		if !seen[s] {
			seen[s] = true
			what = append(what, s)
		}
	}
	sort.Strings(what)
	const most = 8
	if len(what) > most {
		what = append(what[:most], fmt.Sprintf("%d more", len(what)-most))
	}
	who := fmt.Sprintf("PID %d", c.PID)
	if c.Comm != "" {
		who += fmt.Sprintf(" (%s)", termtext.Printable(c.Comm))
	}
	return fmt.Sprintf("%s at generation %d: %s", who, c.Gen, strings.Join(what, "; "))
}

func describeChange(ch Change) string {
	fam := map[uint8]string{unix.NFPROTO_INET: "inet", unix.NFPROTO_IPV4: "ip", unix.NFPROTO_IPV6: "ip6", unix.NFPROTO_ARP: "arp", unix.NFPROTO_BRIDGE: "bridge", unix.NFPROTO_NETDEV: "netdev"}[ch.Family]
	if fam == "" {
		fam = fmt.Sprintf("family %d", ch.Family)
	}
	table := fmt.Sprintf("table %s %s", fam, termtext.Printable(ch.Table))
	name := fmt.Sprintf("%q", termtext.Printable(ch.Name))
	switch ch.Msg {
	case unix.NFT_MSG_NEWRULE:
		return "a rule added to chain " + name + " of " + table
	case unix.NFT_MSG_DELRULE:
		return "a rule deleted from chain " + name + " of " + table
	case unix.NFT_MSG_NEWCHAIN:
		return "chain " + name + " of " + table + " made or changed"
	case unix.NFT_MSG_DELCHAIN:
		return "chain " + name + " of " + table + " deleted"
	case unix.NFT_MSG_NEWSET:
		return "set " + name + " of " + table + " made"
	case unix.NFT_MSG_DELSET:
		return "set " + name + " of " + table + " deleted"
	case unix.NFT_MSG_NEWSETELEM:
		return "elements added to set " + name + " of " + table
	case unix.NFT_MSG_DELSETELEM:
		return "elements deleted from set " + name + " of " + table
	case unix.NFT_MSG_NEWTABLE:
		return table + " made or changed"
	case unix.NFT_MSG_DELTABLE:
		return table + " deleted"
	}
	return kindOf(ch.Msg) + " " + name + " of " + table + " changed"
}
