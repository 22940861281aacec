// Package guard stops SSH brute force: it reads sshd's log, finds failed
// logins, and bans the addresses that fail too often in kernel sets with
// timeouts.
package guard

import (
	"net/netip"
	"regexp"
	"strings"
)

// Kind names what a log line says happened.
type Kind string

const (
	FailedPassword  Kind = "failed_password"
	FailedPublickey Kind = "failed_publickey"
	FailedKbdInt    Kind = "failed_keyboard_interactive"
	FailedOther     Kind = "failed_auth"
	InvalidUser     Kind = "invalid_user"
	NotAllowed      Kind = "user_not_allowed"
	RootRefused     Kind = "root_login_refused"
	PAMFailure      Kind = "pam_failure"
	MaxAuthAttempts Kind = "max_auth_attempts"
	TooManyFailures Kind = "too_many_failures"
	Negotiation     Kind = "negotiation_failed"
	// Weaker evidence: scanners and broken clients, not password guesses.
	PreauthDisconnect Kind = "preauth_disconnect"
	BadProtocol       Kind = "bad_protocol"
	NoIdentification  Kind = "no_identification"
	LoginTimeout      Kind = "login_timeout"
	Penalty           Kind = "sshd_penalty"
	// Not failures.
	Accepted Kind = "accepted"
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
func (k Kind) Failure() bool { return k != Accepted }

// Event is one parsed log line.
type Event struct {
	Kind    Kind
	Addr    netip.Addr
	User    string
	Service string // "sshd" or "dropbear"
}

// addr is an IPv4 or IPv6 address, optionally with a %zone; it is checked
// by netip afterwards, the pattern only bounds it.
const addr = `([0-9A-Fa-f:.]+(?:%[\w.-]+)?)`

// pattern is one message kind. Every pattern is anchored at both ends, and
// where the message holds text the client chose (user names, version
// strings, offers), the address group sits at the fixed place sshd writes
// it: greedy groups before it make the regexp take the last possible
// position, which only sshd's own fixed tail can follow.
type pattern struct {
	kind Kind
	re   *regexp.Regexp
	// user and address group numbers (0: none).
	user, addr int
	// unique: client text stands both before and after the address, so a
	// fake address could fit either side: such a line counts only when the
	// address pattern occurs once.
	unique *regexp.Regexp
}

func p(kind Kind, user, addrGroup int, re string) pattern {
	return pattern{kind: kind, re: regexp.MustCompile(re), user: user, addr: addrGroup}
}

// sshdPatterns are keyed by the message's first word, so a line is tried
// against a few patterns, not all.
var sshdPatterns = map[string][]pattern{
	"Failed": {
		p("", 2, 3, `^Failed (\S+) for (?:invalid user )?(.*) from `+addr+` port \d+ ssh2(?:: .*)?$`),
	},
	"Invalid": {
		p(InvalidUser, 1, 2, `^Invalid user (.*) from `+addr+`(?: port \d+)?$`),
	},
	"User": {
		p(NotAllowed, 1, 2, `^User (.*) from `+addr+` not allowed because [^:]*$`),
	},
	"ROOT": {
		p(RootRefused, 0, 1, `^ROOT LOGIN REFUSED FROM `+addr+`(?: port \d+)?(?: \[preauth\])?$`),
	},
	"error:": {
		p(PAMFailure, 1, 2, `^error: PAM: [Aa]uthentication (?:failure|error) for (?:illegal user )?(.*) from `+addr+`$`),
		p(PAMFailure, 1, 2, `^error: PAM: unknown user for illegal user (.*) from `+addr+`$`),
		p(MaxAuthAttempts, 1, 2, `^error: maximum authentication attempts exceeded for (?:invalid user )?(.*) from `+addr+` port \d+ ssh2(?: \[preauth\])?$`),
	},
	"fatal:": {
		p(Negotiation, 0, 1, `^fatal: Unable to negotiate with `+addr+` port \d+: no matching .*$`),
	},
	"Unable": {
		p(Negotiation, 0, 1, `^Unable to negotiate with `+addr+` port \d+: no matching .*$`),
	},
	"Did": {
		p(NoIdentification, 0, 1, `^Did not receive identification string from `+addr+`(?: port \d+)?$`),
	},
	"Bad": {
		p(BadProtocol, 0, 2, `^Bad protocol version identification (.*) from `+addr+`(?: port \d+)?$`),
	},
	"banner": {
		p(BadProtocol, 0, 1, `^banner exchange: Connection from `+addr+` port \d+: .*$`),
	},
	"Connection": {
		p(PreauthDisconnect, 0, 1, `^Connection (?:closed|reset) by `+addr+`(?: port \d+)? \[preauth\]$`),
		p(PreauthDisconnect, 1, 2, `^Connection (?:closed|reset) by (?:authenticating|invalid) user (.*) `+addr+` port \d+ \[preauth\]$`),
	},
	"Disconnected": {
		p(PreauthDisconnect, 0, 1, `^Disconnected from `+addr+` port \d+ \[preauth\]$`),
		p(PreauthDisconnect, 1, 2, `^Disconnected from (?:authenticating|invalid) user (.*) `+addr+` port \d+ \[preauth\]$`),
	},
	"Disconnecting": {
		withUnique(p(PreauthDisconnect, 1, 2, `^Disconnecting (?:authenticating|invalid) user (.*) `+addr+` port \d+: (.*)$`),
			` [0-9A-Fa-f:.]+(?:%[\w.-]+)? port \d+: `),
	},
	"Timeout": {
		p(LoginTimeout, 0, 1, `^Timeout before authentication for connection from `+addr+` to [0-9A-Fa-f:.]+, pid = \d+$`),
	},
	"drop": {
		p(Penalty, 0, 1, `^drop connection #\d+ from \[`+addr+`\]:\d+ on \[[0-9A-Fa-f:.]+\]:\d+ penalty: .*$`),
	},
	"Accepted": {
		p(Accepted, 1, 2, `^Accepted \S+ for (.*) from `+addr+` port \d+ ssh2(?:: .*)?$`),
	},
}

func withUnique(pt pattern, re string) pattern {
	pt.unique = regexp.MustCompile(re)
	return pt
}

// dropbear writes ADDR:PORT (IPv4-mapped for IPv4 on a dual-stack socket).
const hostport = `(\S+):\d+`

var dropbearPatterns = map[string][]pattern{
	"Bad": {
		p(FailedPassword, 1, 2, `^Bad password attempt for '(.*)' from `+hostport+`$`),
		p(PAMFailure, 1, 2, `^Bad PAM password attempt for '(.*)' from `+hostport+`$`),
	},
	"Login": {
		p(InvalidUser, 1, 2, `^Login attempt for nonexistent user(?: '(.*)')? from `+hostport+`$`),
	},
	"Exit": {
		p(PreauthDisconnect, 0, 1, `^Exit before auth from <`+hostport+`>: .*$`),
	},
	"Max": {
		p(MaxAuthAttempts, 1, 2, `^Max auth tries reached - user '(.*)' from `+hostport+`$`),
	},
	"Pubkey": {
		p(FailedPublickey, 1, 2, `^Pubkey auth attempt with unknown algo for '(.*)' from `+hostport+`$`),
	},
}

func failedKind(method string) Kind {
	switch method {
	case "password":
		return FailedPassword
	case "publickey":
		return FailedPublickey
	case "keyboard-interactive/pam", "keyboard-interactive":
		return FailedKbdInt
	}
	return FailedOther
}

// ParseMessage reads one message of a known program ("sshd",
// "sshd-session", "dropbear"; empty: unknown, both are tried, as for a
// line without a syslog banner).
func ParseMessage(prog, msg string) (Event, bool) {
	msg = strings.TrimSpace(msg)
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
		a, ok := parseAddr(m[pt.addr])
		if !ok {
			return Event{}, false
		}
		ev := Event{Kind: pt.kind, Addr: a}
		if pt.user > 0 {
			ev.User = m[pt.user]
		}
		if ev.Kind == "" {
			ev.Kind = failedKind(m[1])
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
