package guard

import (
	"strconv"
	"strings"
)

// Syslog banners before the message. Only text before the message is
// examined here, and only when the line starts like a log line (a priority
// or a timestamp): a bare message is taken whole, so words of a message
// can never be mistaken for a banner.
var (
	priRe     = lazyRE(`^<\d{1,3}>`)
	bsdTimeRe = lazyRE(`^[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)? +`)
	isoTimeRe = lazyRE(`^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)? +`)
	// journalctl's other short forms: -o short-full ("Wed 2026-11-25
	// 11:40:01 UTC"), short-unix, short-monotonic and short-delta.
	fullTimeRe = lazyRE(`^[A-Z][a-z]{2} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? [A-Za-z0-9+-]{1,6} +`)
	unixTimeRe = lazyRE(`^\d{9,11}\.\d{1,9} +`)
	monoTimeRe = lazyRE(`^\[ *\d+\.\d+(?: <[ \d.]+>)?\] +`)
	// RFC 5424 header after the timestamp: HOST APP PROCID MSGID SD.
	rfc5424Re = lazyRE(`^(\S+) (\S+) (\S+) (\S+) (-|\[.*?\]) ?`)
	// "<10.5>" (FreeBSD syslogd -v), "auth.info" (busybox, socklog).
	sourceRe   = lazyRE(`^<\d+\.\d+> +`)
	facilityRe = lazyRE(`^[a-z0-9]+\.[a-z]+:? +`)
	// PROG[PID]: or PROG: or PROG[PID] (rsyslog 8 without colon).
	progRe = lazyRE(`^([A-Za-z0-9_./-]+)(?:\[(\d{1,10})\]:?|:) +`)
)

// ourProgs are the programs whose messages the parser reads.
var ourProgs = map[string]bool{"sshd": true, "sshd-session": true, "dropbear": true}

// ParseLine reads one log line as syslog, RFC 5424, ISO-timestamped,
// busybox or socklog writes it, or a bare message.
func ParseLine(line string) (Event, bool) {
	prog, pid, msg, ok := splitBanner(strings.TrimRight(line, "\r\n"))
	if !ok {
		return Event{}, false
	}
	if i := strings.LastIndexByte(prog, '/'); i >= 0 {
		prog = prog[i+1:]
	}
	if prog != "" && !ourProgs[prog] {
		return Event{}, false
	}
	ev, ok := ParseMessage(prog, msg)
	ev.PID = pid
	return ev, ok
}

// timestamp finds a timestamp at the start of s.
func timestamp(s string) string {
	for _, re := range []*lazyRegexp{bsdTimeRe, isoTimeRe, fullTimeRe, unixTimeRe, monoTimeRe} {
		if t := re.FindString(s); t != "" {
			return t
		}
	}
	return ""
}

func atoiPID(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0
	}
	return n
}

// splitBanner returns the program ("" if the line names none), its PID (0
// if none) and the message. ok is false for a line of another program's
// form.
func splitBanner(s string) (prog string, pid int, msg string, ok bool) {
	rfc := false
	if m := priRe.FindString(s); m != "" {
		s = s[len(m):]
		if strings.HasPrefix(s, "1 ") {
			rfc = true
			s = s[2:]
		}
	}
	for round := 0; round < 2; round++ {
		t := timestamp(s)
		if t == "" {
			if round == 0 && !rfc && len(s) > 0 && s[0] != '<' {
				// "sshd[PID]: message" without a timestamp; no message of
				// sshd's own starts that way, so this is never client text.
				if m := progRe.FindStringSubmatch(s); m != nil && ourProgs[m[1]] && m[2] != "" {
					return m[1], atoiPID(m[2]), s[len(m[0]):], true
				}
				return "", 0, s, true // a bare message
			}
			break
		}
		s = s[len(t):]
		if m := rfc5424Re.FindStringSubmatch(s); m != nil && (rfc || isProcID(m[3]) && m[4] == "-") {
			return m[2], atoiPID(m[3]), s[len(m[0]):], true
		}
		if rfc {
			return "", 0, "", false
		}
		s = strings.TrimPrefix(s, sourceRe.FindString(s))
		// Up to two words may stand before the program: a host name and a
		// facility.level (busybox), or facility.level: alone (socklog,
		// which may repeat a whole banner after it).
		if f := facilityRe.FindString(s); f != "" && strings.HasSuffix(strings.TrimSpace(f), ":") {
			s = s[len(f):]
			if progRe.MatchString(s) || timestamp(s) != "" {
				if prog, pid, msg, ok := progMessage(s); ok {
					return prog, pid, msg, true
				}
				continue
			}
			return "", 0, s, true
		}
		if prog, pid, msg, ok := progMessage(s); ok {
			return prog, pid, msg, true
		}
		return "", 0, s, true // timestamp, then the message
	}
	return "", 0, "", false
}

// progMessage finds PROG[PID]: at the start, or after a host name, or after
// a host name and a facility.level.
func progMessage(s string) (prog string, pid int, msg string, ok bool) {
	rest := s
	for skip := 0; skip < 3; skip++ {
		if m := progRe.FindStringSubmatch(rest); m != nil {
			return m[1], atoiPID(m[2]), rest[len(m[0]):], true
		}
		word, after, found := strings.Cut(rest, " ")
		if !found || word == "" || (skip == 1 && !facilityRe.MatchString(word+" ")) {
			return "", 0, "", false
		}
		rest = strings.TrimLeft(after, " ")
	}
	return "", 0, "", false
}

func isProcID(s string) bool {
	if s == "-" {
		return true
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}
