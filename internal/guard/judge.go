package guard

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"
)

// Judge ties the lines of one sshd connection together and decides which
// failures count, and against which address. It is what the guard and
// 'moat guard check' both use, so they cannot disagree.
//
//   - A rejected key (and every "try the next method" failure: none,
//     hostbased, gssapi) is held with its connection: an ssh-agent offers
//     its keys in turn, and a connection that then logs in has failed
//     nothing. A connection that ends without a login counts once, however
//     many keys it offered.
//   - Password and keyboard-interactive failures, invalid users and the
//     like count at once, one per line.
//   - Lines that name no address ("Disconnecting: Too many authentication
//     failures", kex_exchange_identification errors) count against the
//     address of their connection, found by sshd's process ID.
//   - A line with two addresses in an order that depends on sshd's version
//     (OpenSSH 9.8's timeout line) counts against the one that is not this
//     host's, or not at all.
//
// A connection is its sshd process when the log gives PIDs (syslog,
// journald), else its client address and port (sshd -E). State is bounded
// (MaxConns) and expires (Idle).
type Judge struct {
	// Local reports whether an address is one of this host's (nil: none
	// known).
	Local func(netip.Addr) bool
	// MaxConns bounds the connections tracked (default 50000); the oldest
	// are forgotten first, counted if they held failures.
	MaxConns int
	// Idle is how long a silent connection is kept (default 10m, well over
	// sshd's LoginGraceTime): then it is taken as ended.
	Idle time.Duration

	conns map[connKey]*conn
}

type connKey struct {
	pid int
	ap  netip.AddrPort // when the log has no PIDs
}

type conn struct {
	key      connKey
	addr     netip.Addr
	port     uint16
	held     int  // try-next failures held
	heldKind Kind // the last one's kind
	user     string
	service  string
	accepted bool
	// ended: the connection's end counted already; sshd often writes two
	// closing lines ("maximum authentication attempts exceeded", then
	// "Disconnecting ...: Too many authentication failures"), and the
	// connection counts once.
	ended bool
	// closes are the kinds of closing lines read (those that End). A
	// connection writes at most a few, each once ("maximum authentication
	// attempts exceeded", then "Disconnecting ...: Too many authentication
	// failures"), then nothing: a later line with this key that does not
	// close, or that repeats a closing kind, is a new connection with the
	// same key: the same client address and port (sshd -E, where a client
	// picks its port), or a reused PID. ConnClosed may come twice
	// ("Received disconnect", then "Disconnected from user").
	closes  []Kind
	pending []Event // address-less failures waiting for the address
	last    time.Time
}

// maxPending bounds the address-less failures held for one connection.
const maxPending = 8

// maxUser bounds the user name kept with a connection (sshd writes at
// most 100 bytes of it).
const maxUser = 256

// Verdict is the judge's decision on one line.
type Verdict struct {
	// Count are the failures to count now, each with its client's
	// address (usually none or one).
	Count []Event
	// Reason says why, for 'moat guard check' and the guard's log.
	Reason string
}

// NewJudge makes a judge; local may be nil.
func NewJudge(local func(netip.Addr) bool) *Judge {
	return &Judge{Local: local}
}

func (j *Judge) limits() (int, time.Duration) {
	max, idle := j.MaxConns, j.Idle
	if max <= 0 {
		max = 50000
	}
	if idle <= 0 {
		idle = 10 * time.Minute
	}
	return max, idle
}

// Tracked is how many connections the judge holds.
func (j *Judge) Tracked() int { return len(j.conns) }

// Judge takes one parsed line.
func (j *Judge) Judge(ev Event, now time.Time) Verdict {
	if j.conns == nil {
		j.conns = map[connKey]*conn{}
	}
	var v Verdict
	// A line of the listener naming two addresses: pick the client.
	if ev.Other.IsValid() {
		client, why, ok := j.pickClient(ev)
		if !ok {
			v.Reason = "not counted: " + why
			if c := j.conns[connKey{pid: ev.ConnPID}]; ev.ConnPID > 0 && c != nil && !c.ended {
				v.Count = j.finish(c, Event{}, now)
			}
			return v
		}
		ev.Addr, ev.Other = client, netip.Addr{}
		v.Reason = why + "; "
	}
	// Penalty lines come from the listener before any connection process.
	if ev.Kind == Penalty {
		v.Count = []Event{ev}
		v.Reason += "counts (weak): sshd's own penalty for " + ev.Addr.String()
		return v
	}
	key, ok := keyOf(ev)
	if !ok {
		if ev.Kind.Failure() && ev.Addr.IsValid() {
			if ev.Kind.TryNext() {
				v.Reason += "not counted: a rejected " + method(ev.Kind) + " without a connection to judge it by"
				return v
			}
			v.Count = []Event{ev}
			v.Reason += "counts: " + string(ev.Kind)
			return v
		}
		if ev.Kind.Failure() {
			v.Reason = "not counted: names no address, and no sshd process ID ties it to a connection"
		}
		return v
	}
	v.Count = j.sweepIfFull(now)
	c := j.conns[key]
	// A line naming another client than its process's connection: the PID
	// was reused, or a line of the listener. The line's own address wins.
	if c != nil && ev.Addr.IsValid() && c.addr.IsValid() && (ev.Addr != c.addr || ev.Port != 0 && c.port != 0 && ev.Port != c.port) {
		v.Count = append(v.Count, j.finish(c, Event{}, now)...)
		c = nil // replaced below
	}
	if c != nil && (ev.Kind == ConnOpened || c.reopened(ev.Kind)) {
		v.Count = append(v.Count, j.finish(c, Event{}, now)...)
		c = nil
	}
	if c == nil {
		c = &conn{key: key}
		j.conns[key] = c
	}
	c.last = now
	if ev.Kind.Ends() && len(c.closes) < maxCloses {
		c.closes = append(c.closes, ev.Kind)
	}
	if len(ev.User) > maxUser {
		ev.User = ev.User[:maxUser] // memory per connection stays bounded
	}
	if ev.User != "" {
		c.user = ev.User
	}
	if ev.Service != "" {
		c.service = ev.Service
	}
	// The connection's address, once known, goes to the lines that named
	// none, and to those held for it.
	if ev.Addr.IsValid() && !c.addr.IsValid() {
		c.addr, c.port = ev.Addr, ev.Port
		switch {
		case len(c.pending) > 0 && ev.Kind.Ends() && ev.Kind.Failure():
			// The same end told twice (a kex error, then "banner
			// exchange: ... invalid format"): this line counts for both.
			v.Reason += fmt.Sprintf("%d earlier address-less line(s) of this connection are told again here; ", len(c.pending))
		case len(c.pending) > 0:
			for _, p := range c.pending {
				p.Addr, p.Port = c.addr, c.port
				v.Count = append(v.Count, p)
				c.ended = c.ended || p.Kind.Ends()
			}
			v.Reason += fmt.Sprintf("%d earlier address-less failure(s) of this connection count against %s; ", len(c.pending), c.addr)
		}
		c.pending = nil
	}
	if !ev.Addr.IsValid() && c.addr.IsValid() {
		ev.Addr, ev.Port = c.addr, c.port
		v.Reason += fmt.Sprintf("the address of its connection (%s); ", connName(c))
	}
	switch {
	case ev.Kind == ConnOpened:
		v.Reason += "connection opened"
	case ev.Kind == Accepted:
		c.accepted = true
		if c.held > 0 {
			v.Reason += fmt.Sprintf("login: the %d rejected %s(s) before it on this connection do not count", c.held, method(c.heldKind))
		} else {
			v.Reason += "login"
		}
		c.held = 0
	case !ev.Addr.IsValid():
		if !ev.Kind.Failure() {
			return v
		}
		if len(c.pending) < maxPending {
			c.pending = append(c.pending, ev)
		}
		v.Reason += fmt.Sprintf("held: names no address; counts when %s names its client", connName(c))
	case ev.Kind.TryNext():
		if c.accepted {
			v.Reason += "not counted: the connection had logged in"
			return v
		}
		c.held++
		c.heldKind = ev.Kind
		v.Reason += fmt.Sprintf("held: rejected %s #%d; counts once if this connection ends without a login", method(ev.Kind), c.held)
	case ev.Kind.Ends() && c.ended:
		v.Reason += "not counted: its connection's end counted already"
	case ev.Kind.Ends():
		held := c.held
		counted := j.finish(c, ev, now)
		v.Count = append(v.Count, counted...)
		switch {
		case held > 0 && !c.accepted:
			v.Reason += fmt.Sprintf("counts once (%s): the connection ended without a login after %d rejected %s(s)", counted[0].Kind, held, method(c.heldKind))
		case len(counted) == 0 && ev.Kind.Failure():
			v.Reason += "not counted: the connection had logged in"
		case ev.Kind.Failure():
			v.Reason += "counts: " + string(ev.Kind)
			if ev.Kind.Weak() {
				v.Reason += " (weak)"
			}
		default:
			v.Reason += "connection closed"
		}
	case ev.Kind.Failure():
		v.Count = append(v.Count, ev)
		v.Reason += "counts: " + string(ev.Kind)
		if ev.Kind.Weak() {
			v.Reason += " (weak)"
		}
	}
	return v
}

// maxCloses bounds the closing kinds kept per connection.
const maxCloses = 4

// reopened reports whether a line of kind k with this connection's key is
// a new connection: this one wrote a closing line before, and k does not
// close, or repeats a closing kind.
func (c *conn) reopened(k Kind) bool {
	if len(c.closes) == 0 {
		return false
	}
	if !k.Ends() {
		return true
	}
	return k != ConnClosed && slices.Contains(c.closes, k)
}

// finish ends a connection: it counts once if it held failures and did
// not log in (the ending line's kind if that is strong evidence, else the
// held kind); else the ending line counts as it is (if a failure).
//
// The record stays (until it is idle) so that a second closing line of
// the same connection does not count again.
func (j *Judge) finish(c *conn, end Event, now time.Time) []Event {
	var out []Event
	switch {
	case c.held > 0 && !c.accepted && c.addr.IsValid():
		ev := Event{Kind: c.heldKind, Addr: c.addr, Port: c.port, User: c.user, Service: c.service, PID: c.key.pid}
		if end.Kind.Failure() && !end.Kind.Weak() {
			ev.Kind = end.Kind
		}
		out = []Event{ev}
	case end.Kind.Failure() && end.Addr.IsValid() && !c.accepted:
		out = []Event{end}
	}
	c.held = 0
	c.ended = c.ended || len(out) > 0
	return out
}

// Sweep ends the connections silent for longer than Idle and returns the
// failures they held.
func (j *Judge) Sweep(now time.Time) []Event {
	_, idle := j.limits()
	var out []Event
	for k, c := range j.conns {
		if now.Sub(c.last) > idle {
			out = append(out, j.finish(c, Event{}, now)...)
			delete(j.conns, k)
		}
	}
	return out
}

// sweepIfFull makes room when the bound is reached: idle connections
// first, then the oldest eighth.
func (j *Judge) sweepIfFull(now time.Time) []Event {
	max, _ := j.limits()
	if len(j.conns) < max {
		return nil
	}
	out := j.Sweep(now)
	if len(j.conns) < max {
		return out
	}
	list := make([]*conn, 0, len(j.conns))
	for _, c := range j.conns {
		list = append(list, c)
	}
	sort.Slice(list, func(a, b int) bool { return list[a].last.Before(list[b].last) })
	for _, c := range list[:len(list)/8+1] {
		out = append(out, j.finish(c, Event{}, now)...)
		delete(j.conns, c.key)
	}
	return out
}

// Open lists the connections still holding failures (for 'moat guard
// check' at the end of its input): each counts once if it ends without a
// login.
func (j *Judge) Open() []Event {
	var out []Event
	for _, c := range j.conns {
		if c.held > 0 && !c.accepted && c.addr.IsValid() {
			out = append(out, Event{Kind: c.heldKind, Addr: c.addr, Port: c.port, User: c.user, Service: c.service, PID: c.key.pid})
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Addr.Less(out[b].Addr) })
	return out
}

// pickClient chooses the client of a line naming two addresses: the
// address of the connection it names, else the one that is not this
// host's.
func (j *Judge) pickClient(ev Event) (netip.Addr, string, bool) {
	a, b := ev.Addr, ev.Other
	if c := j.conns[connKey{pid: ev.ConnPID}]; ev.ConnPID > 0 && c != nil && c.addr.IsValid() && (c.addr == a || c.addr == b) {
		return c.addr, fmt.Sprintf("client %s: the address of sshd connection pid %d", c.addr, ev.ConnPID), true
	}
	local := func(x netip.Addr) bool { return x.IsLoopback() || j.Local != nil && j.Local(x) }
	la, lb := local(a), local(b)
	switch {
	case la && !lb:
		return b, fmt.Sprintf("client %s: %s is this host's (OpenSSH 9.8 order)", b, a), true
	case lb && !la:
		return a, fmt.Sprintf("client %s: %s is this host's", a, b), true
	case la && lb:
		return netip.Addr{}, fmt.Sprintf("both %s and %s are this host's", a, b), false
	}
	return netip.Addr{}, fmt.Sprintf("neither %s nor %s is this host's, so which is the client depends on sshd's version", a, b), false
}

func keyOf(ev Event) (connKey, bool) {
	pid := ev.PID
	if ev.ConnPID > 0 {
		pid = ev.ConnPID
	}
	if pid > 0 {
		return connKey{pid: pid}, true
	}
	if ev.Addr.IsValid() && ev.Port != 0 {
		return connKey{ap: netip.AddrPortFrom(ev.Addr, ev.Port)}, true
	}
	return connKey{}, false
}

func connName(c *conn) string {
	if c.key.pid > 0 {
		return fmt.Sprintf("sshd pid %d", c.key.pid)
	}
	return c.key.ap.String()
}

func method(k Kind) string {
	switch k {
	case FailedPublickey:
		return "key"
	case FailedHostbased:
		return "hostbased key"
	case FailedNone:
		return "method none"
	case FailedGSSAPI:
		return "gssapi attempt"
	}
	return string(k)
}
