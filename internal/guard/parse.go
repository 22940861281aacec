// Package guard stops SSH brute force: it reads sshd's log, finds failed
// logins, and bans the addresses that fail too often in kernel sets with
// timeouts.
package guard

import (
	"net/netip"
	"strconv"
	"strings"
)

// Kind names what a log line says happened.
type Kind string

const (
	FailedPassword  Kind = "failed_password"
	FailedPublickey Kind = "failed_publickey"
	FailedKbdInt    Kind = "failed_keyboard_interactive"
	FailedHostbased Kind = "failed_hostbased"
	FailedNone      Kind = "failed_none"
	FailedGSSAPI    Kind = "failed_gssapi"
	FailedOther     Kind = "failed_auth"
	InvalidUser     Kind = "invalid_user"
	NotAllowed      Kind = "user_not_allowed"
	RootRefused     Kind = "root_login_refused"
	PAMFailure      Kind = "pam_failure"
	MaxAuthAttempts Kind = "max_auth_attempts"
	TooManyFailures Kind = "too_many_failures"
	Negotiation     Kind = "negotiation_failed"
	// The client said it gave up after failed logins ("Auth fail").
	ClientAuthFail Kind = "client_auth_fail"
	// Weaker evidence: scanners and broken clients, not password guesses.
	PreauthDisconnect Kind = "preauth_disconnect"
	BadProtocol       Kind = "bad_protocol"
	NoIdentification  Kind = "no_identification"
	LoginTimeout      Kind = "login_timeout"
	Penalty           Kind = "sshd_penalty"
	// Not failures: a login, and a connection's start and end, which tie
	// the lines of one sshd connection together.
	Accepted   Kind = "accepted"
	ConnOpened Kind = "connection_opened"
	ConnClosed Kind = "connection_closed"
)

// Weak reports whether a kind is weaker evidence than a failed login.
func (k Kind) Weak() bool {
	switch k {
	case PreauthDisconnect, BadProtocol, NoIdentification, LoginTimeout, Penalty:
		return true
	}
	return false
}

// Failure reports whether a kind counts against the address.
func (k Kind) Failure() bool { return k != Accepted && k != ConnOpened && k != ConnClosed && k != "" }

// TryNext reports whether a kind is a rejected method the client follows
// with the next one (another key from its agent, then maybe a password):
// harmless when the same connection then logs in, so it is judged per
// connection, not per line.
func (k Kind) TryNext() bool {
	switch k {
	case FailedPublickey, FailedHostbased, FailedNone, FailedGSSAPI:
		return true
	}
	return false
}

// Ends reports whether a kind ends an sshd connection before (or without)
// a login.
func (k Kind) Ends() bool {
	switch k {
	case PreauthDisconnect, LoginTimeout, MaxAuthAttempts, TooManyFailures, ClientAuthFail, ConnClosed,
		Negotiation, Penalty, BadProtocol, NoIdentification:
		return true
	}
	return false
}

// Event is one parsed log line.
type Event struct {
	Kind    Kind
	Addr    netip.Addr // the client; invalid when the line names none
	Port    uint16     // the client's port, 0 when the line names none
	User    string
	Service string // "sshd" or "dropbear"
	// PID is the logging sshd process (the syslog tag's or journald's),
	// 0 when unknown. All lines of one connection come from one process.
	PID int
	// Other is a second address of a line whose two addresses stand in an
	// order that depends on sshd's version (OpenSSH 9.8 wrote the server's
	// first in its timeout line, 9.9 the client's): the judge picks the
	// client by the addresses of this host.
	Other netip.Addr
	// ConnPID is the connection's process a line of the listener names
	// ("pid = N").
	ConnPID int
}

// addr is an IPv4 or IPv6 address, optionally with a %zone; it is checked
// by netip afterwards, the pattern only bounds it.
const addr = `([0-9A-Fa-f:.]+(?:%[\w.-]+)?)`

// anyAddr is addr without a group, for uniqueness checks.
const anyAddr = `[0-9A-Fa-f:.]+(?:%[\w.-]+)?`

// tail is what sshd may write after the port: the protocol (ssh2, ssh1,
// or nothing on some platforms and versions).
const proto = `(?: ssh[12])?`

// pattern is one message kind. Every pattern is anchored at both ends, and
// the address group sits at the fixed place sshd writes it: where client
// text (a user name, a version string, a certificate's key ID) stands
// before the address and only sshd's fixed words after it, greedy groups
// make the regexp take the last possible position; where client text
// stands after it, the text before is bounded (an account name is one
// word) so the first position is sshd's; where client text stands on both
// sides, the line counts only when the address occurs once.
type pattern struct {
	kind Kind
	re   *lazyRegexp
	// user, address and port group numbers (0: none).
	user, addr, port int
	// unique: client text stands both before and after the address, so a
	// fake address could fit either side: such a line counts only when the
	// address pattern occurs once.
	unique *lazyRegexp
	// tail: the group whose text decides the kind (see kindOf).
	tail int
	// other, connPID: groups of a second address and of a "pid = N".
	other, connPID int
}

func p(kind Kind, user, addrGroup, port int, re string) pattern {
	return pattern{kind: kind, re: lazyRE(re), user: user, addr: addrGroup, port: port}
}

func withUnique(pt pattern, re string) pattern {
	pt.unique = lazyRE(re)
	return pt
}

func withTail(pt pattern, group int) pattern {
	pt.tail = group
	return pt
}

// Kinds decided by the text of a line (the tail group), not its pattern.
const (
	kindFailedMethod Kind = "?method"     // group: the method of "Failed METHOD"
	kindDisconnect   Kind = "?disconnect" // group: sshd's reason after "port N: "
	kindReceived     Kind = "?received"   // group: the client's disconnect reason
	kindKex          Kind = "?kex"        // group: kex_exchange_identification's error
)

var (
	tooManyRe = lazyRE(`^Too many authentication failures(?: for .*)?(?: \[preauth\])?$`)
	authFail  = lazyRE(`^(?:.*[^A-Za-z])?Auth (?:fail|cancel)(?:[^A-Za-z].*)? \[preauth\]$`)
)

func kindOf(k Kind, text string) Kind {
	switch k {
	case kindFailedMethod:
		return failedKind(text)
	case kindDisconnect:
		if tooManyRe.MatchString(text) {
			return TooManyFailures
		}
		return PreauthDisconnect
	case kindReceived:
		if authFail.MatchString(text) {
			return ClientAuthFail
		}
		return ConnClosed
	case kindKex:
		if strings.HasPrefix(text, "Connection closed") || strings.HasPrefix(text, "read: ") || strings.HasPrefix(text, "Connection reset") {
			return NoIdentification
		}
		return BadProtocol
	}
	return k
}

// sshdPatterns are keyed by the message's first word, so a line is tried
// against a few patterns, not all.
var sshdPatterns = map[string][]pattern{
	"Failed": {
		// An invalid user's name is anything the client sent; with nothing
		// after the port, the last address is sshd's.
		withTail(p(kindFailedMethod, 2, 3, 4, `^Failed (\S+) for invalid user (.*) from `+addr+` port (\d+)`+proto+`$`), 1),
		// ...with a key, certificate or client host after it (client text
		// on both sides), only when the address occurs once.
		withTail(withUnique(p(kindFailedMethod, 2, 3, 4, `^Failed (\S+) for invalid user (.*) from `+addr+` port (\d+)`+proto+`: .*$`),
			` from `+anyAddr+` port \d+`), 1),
		// A real account is one word: the first address after it is sshd's,
		// whatever a certificate's key ID says further on.
		withTail(p(kindFailedMethod, 2, 3, 4, `^Failed (\S+) for (\S+) from `+addr+` port (\d+)`+proto+`(?:: .*)?$`), 1),
	},
	"Accepted": {
		p(Accepted, 2, 3, 4, `^Accepted (\S+) for (\S+) from `+addr+` port (\d+)`+proto+`(?:: .*)?$`),
	},
	"Invalid": {
		p(InvalidUser, 1, 2, 3, `^Invalid user (.*) from `+addr+`(?: port (\d+))?$`),
	},
	"User": {
		// An account name is one word, sshd's reason follows the address.
		withUnique(p(NotAllowed, 1, 2, 0, `^User (\S+) from `+addr+` not allowed because .*$`), ` from `+anyAddr+` not allowed because `),
	},
	"ROOT": {
		p(RootRefused, 0, 1, 2, `^ROOT LOGIN REFUSED FROM `+addr+`(?: port (\d+))?(?: \[preauth\])?$`),
	},
	"error:": {
		p(PAMFailure, 1, 2, 0, `^error: PAM: [Aa]uthentication (?:failure|error) for (?:illegal user )?(.*) from `+addr+`(?: via `+anyAddr+`)?$`),
		p(PAMFailure, 1, 2, 0, `^error: PAM: unknown user for illegal user (.*) from `+addr+`(?: via `+anyAddr+`)?$`),
		p(MaxAuthAttempts, 1, 2, 3, `^error: maximum authentication attempts exceeded for (?:invalid user )?(.*) from `+addr+` port (\d+)`+proto+`(?: \[preauth\])?$`),
		withTail(p(kindReceived, 0, 1, 2, `^error: Received disconnect from `+addr+`(?: port (\d+))?: ?\d+: (.*)$`), 3),
		withTail(p(kindKex, 0, 0, 0, `^error: kex_exchange_identification: (.*)$`), 1),
	},
	"maximum": { // sshd -E writes it without "error: "
		p(MaxAuthAttempts, 1, 2, 3, `^maximum authentication attempts exceeded for (?:invalid user )?(.*) from `+addr+` port (\d+)`+proto+`(?: \[preauth\])?$`),
	},
	"kex_exchange_identification:": {
		withTail(p(kindKex, 0, 0, 0, `^kex_exchange_identification: (.*)$`), 1),
	},
	"fatal:": {
		p(Negotiation, 0, 1, 2, `^fatal: Unable to negotiate with `+addr+` port (\d+): no matching .*$`),
	},
	"Unable": {
		p(Negotiation, 0, 1, 2, `^Unable to negotiate with `+addr+` port (\d+): no matching .*$`),
	},
	"Did": {
		p(NoIdentification, 0, 1, 2, `^Did not receive identification string from `+addr+`(?: port (\d+))?$`),
	},
	"Bad": {
		p(BadProtocol, 0, 2, 3, `^Bad protocol version identification (.*) from `+addr+`(?: port (\d+))?$`),
	},
	"banner": {
		p(BadProtocol, 0, 1, 2, `^banner exchange: Connection from `+addr+` port (\d+): .*$`),
	},
	"Connection": {
		p(ConnOpened, 0, 1, 2, `^Connection from `+addr+` port (\d+) on `+anyAddr+` port \d+(?: rdomain ".*")?$`),
		p(PreauthDisconnect, 0, 1, 2, `^Connection (?:closed|reset) by `+addr+`(?: port (\d+))? \[preauth\]$`),
		p(PreauthDisconnect, 1, 2, 3, `^Connection (?:closed|reset) by (?:authenticating|invalid) user (.*) `+addr+` port (\d+) \[preauth\]$`),
		p(ConnClosed, 0, 1, 2, `^Connection (?:closed|reset) by `+addr+` port (\d+)$`),
		p(ConnClosed, 1, 2, 3, `^Connection (?:closed|reset) by user (\S+) `+addr+` port (\d+)$`),
	},
	"Received": {
		withTail(p(kindReceived, 0, 1, 2, `^Received disconnect from `+addr+`(?: port (\d+))?: ?\d+: (.*)$`), 3),
	},
	"Disconnected": {
		p(PreauthDisconnect, 0, 1, 2, `^Disconnected from `+addr+` port (\d+) \[preauth\]$`),
		p(PreauthDisconnect, 1, 2, 3, `^Disconnected from (?:authenticating|invalid) user (.*) `+addr+` port (\d+) \[preauth\]$`),
		p(ConnClosed, 1, 2, 3, `^Disconnected from (?:user (\S+) )?`+addr+` port (\d+)$`),
	},
	"Disconnecting": {
		withTail(withUnique(p(kindDisconnect, 1, 2, 3, `^Disconnecting (?:authenticating|invalid) user (.*) `+addr+` port (\d+): (.*)$`),
			` `+anyAddr+` port \d+: `), 4),
	},
	"Disconnecting:": { // no address: the connection's process tells whose
		p(TooManyFailures, 0, 0, 0, `^Disconnecting: Too many authentication failures(?: for .*)?(?: \[preauth\])?$`),
		p(PreauthDisconnect, 0, 0, 0, `^Disconnecting: .* \[preauth\]$`),
	},
	"Timeout": {
		// OpenSSH 9.8 (the listener, naming the connection's process):
		// server first; 9.9 and later: client first.
		{kind: LoginTimeout, re: lazyRE(`^Timeout before authentication for connection from ` + addr + ` to ` + addr + `, pid = (\d+)$`),
			addr: 1, other: 2, connPID: 3},
		p(LoginTimeout, 0, 1, 2, `^Timeout before authentication for `+addr+` port (\d+)$`),
	},
	"drop": {
		p(Penalty, 0, 1, 2, `^drop connection #\d+ from \[`+addr+`\]:(\d+) on \[[0-9A-Fa-f:.]+\]:\d+ penalty: .*$`),
	},
}

// dropbear writes ADDR:PORT (IPv4-mapped for IPv4 on a dual-stack socket).
const hostport = `(\S+):(\d+)`

var dropbearPatterns = map[string][]pattern{
	"Bad": {
		p(FailedPassword, 1, 2, 3, `^Bad password attempt for '(.*)' from `+hostport+`$`),
		p(PAMFailure, 1, 2, 3, `^Bad PAM password attempt for '(.*)' from `+hostport+`$`),
	},
	"Login": {
		p(InvalidUser, 1, 2, 3, `^Login attempt for nonexistent user(?: '(.*)')? from `+hostport+`$`),
	},
	"Exit": {
		p(PreauthDisconnect, 0, 1, 2, `^Exit before auth from <`+hostport+`>: .*$`),
	},
	"Max": {
		p(MaxAuthAttempts, 1, 2, 3, `^Max auth tries reached - user '(.*)' from `+hostport+`$`),
	},
	"Pubkey": {
		p(FailedPublickey, 1, 2, 3, `^Pubkey auth attempt with unknown algo for '(.*)' from `+hostport+`$`),
		p(Accepted, 1, 2, 3, `^Pubkey auth succeeded for '(.*)' with .* from `+hostport+`$`),
	},
	"Password": {
		p(Accepted, 1, 2, 3, `^Password auth succeeded for '(.*)' from `+hostport+`$`),
	},
}

func failedKind(method string) Kind {
	switch {
	case method == "password":
		return FailedPassword
	case method == "publickey":
		return FailedPublickey
	case method == "hostbased":
		return FailedHostbased
	case method == "none":
		return FailedNone
	case strings.HasPrefix(method, "gssapi"):
		return FailedGSSAPI
	case method == "keyboard-interactive" || strings.HasPrefix(method, "keyboard-interactive/"):
		return FailedKbdInt
	}
	return FailedOther
}

// vendorRe is a prefix some platforms put before the message (Solaris:
// "[ID 800047 auth.info]").
var vendorRe = lazyRE(`^\[ID \d+ [a-z0-9]+\.[a-z]+\] `)

// ParseMessage reads one message of a known program ("sshd",
// "sshd-session", "dropbear"; empty: unknown, both are tried, as for a
// line without a syslog banner). Events of lines that name no address
// (Kind set, Addr invalid) are tied to their connection by the Judge.
func ParseMessage(prog, msg string) (Event, bool) {
	msg = strings.TrimSpace(msg)
	msg = strings.TrimPrefix(msg, vendorRe.FindString(msg))
	first, _, _ := strings.Cut(msg, " ")
	switch prog {
	case "sshd", "sshd-session", "":
		if ev, ok := match(sshdPatterns[first], msg); ok {
			ev.Service = "sshd"
			return ev, true
		}
		if prog != "" {
			return Event{}, false
		}
		fallthrough
	case "dropbear":
		if ev, ok := match(dropbearPatterns[first], msg); ok {
			ev.Service = "dropbear"
			return ev, true
		}
	}
	return Event{}, false
}

func match(patterns []pattern, msg string) (Event, bool) {
	for _, pt := range patterns {
		m := pt.re.FindStringSubmatch(msg)
		if m == nil {
			continue
		}
		if pt.unique != nil && len(pt.unique.FindAllStringIndex(msg, 2)) != 1 {
			return Event{}, false // a forged address could be either one
		}
		ev := Event{Kind: pt.kind}
		if pt.addr > 0 {
			a, ok := parseAddr(m[pt.addr])
			if !ok {
				return Event{}, false
			}
			ev.Addr = a
		}
		if pt.port > 0 && m[pt.port] != "" {
			n, err := strconv.ParseUint(m[pt.port], 10, 16)
			if err != nil {
				return Event{}, false
			}
			ev.Port = uint16(n)
		}
		if pt.other > 0 {
			a, ok := parseAddr(m[pt.other])
			if !ok {
				return Event{}, false
			}
			ev.Other = a
		}
		if pt.connPID > 0 {
			n, err := strconv.Atoi(m[pt.connPID])
			if err != nil || n <= 0 {
				return Event{}, false
			}
			ev.ConnPID = n
		}
		if pt.user > 0 {
			ev.User = m[pt.user]
		}
		if pt.tail > 0 {
			ev.Kind = kindOf(pt.kind, m[pt.tail])
		}
		return ev, true
	}
	return Event{}, false
}

// parseAddr normalizes an address: zone dropped, IPv4-mapped unmapped.
func parseAddr(s string) (netip.Addr, bool) {
	if i := strings.IndexByte(s, '%'); i >= 0 {
		s = s[:i]
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
