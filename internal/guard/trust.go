package guard

import "strings"

// TrustedFileLine reports whether a line of a followed log file may be
// counted. A line written through syslog (it starts with a priority or a
// timestamp) must carry sshd's, sshd-session's or dropbear's tag exactly,
// with a PID: any local user can send syslog messages, and 'logger -t
// sshd' without a PID, a path for a name, or no tag at all is not sshd. A
// line with no syslog header at all (sshd -E writes those) cannot have come
// through syslog: only the file's writer (root) wrote it.
//
// This is weaker than journald's check (a user can still run 'logger -i
// -t sshd'): prefer journald where it runs.
func TrustedFileLine(line string) bool {
	s := strings.TrimRight(line, "\r\n")
	prog, pid, _, ok := splitBanner(s)
	return trustedBanner(s, prog, pid, ok)
}

// trustedBanner is TrustedFileLine's judgement of s's split banner.
func trustedBanner(s, prog string, pid int, ok bool) bool {
	switch {
	case !ok:
		return false
	case prog == "":
		// No program: trusted only if there is no syslog header at all.
		return !priRe.MatchString(s) && timestamp(s) == ""
	default:
		// The program's own name, exactly (no path), and a PID.
		return ourProgs[prog] && pid > 0
	}
}

// parseFileLine is TrustedFileLine and, for a trusted line, ParseLine,
// with the banner split once (the guard's loop runs it on every line).
func parseFileLine(line string) (ev Event, ok, trusted bool) {
	s := strings.TrimRight(line, "\r\n")
	prog, pid, msg, sok := splitBanner(s)
	if !trustedBanner(s, prog, pid, sok) {
		return Event{}, false, false
	}
	// A trusted line's program is "" or one of ourProgs, without a path:
	// ParseLine's checks of it have nothing left to do.
	ev, ok = ParseMessage(prog, msg)
	ev.PID = pid
	return ev, ok, true
}
