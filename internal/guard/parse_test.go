package guard

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseLine(t *testing.T) {
	for _, c := range []struct {
		line string
		kind Kind
		addr string // "" : no event
		user string
	}{
		{"Nov 25 11:40:01 srv sshd[812]: Failed password for root from 203.0.113.9 port 50022 ssh2", FailedPassword, "203.0.113.9", "root"},
		{"Nov 25 11:40:01 srv sshd-session[812]: Failed password for invalid user bob from 2001:db8::9 port 50022 ssh2", FailedPassword, "2001:db8::9", "bob"},
		{"2026-11-25T11:40:01.123456+00:00 srv sshd[812]: Failed publickey for git from 198.51.100.7 port 4 ssh2: RSA SHA256:abc", FailedPublickey, "198.51.100.7", "git"},
		{"<38>1 2026-11-25T11:40:01Z srv sshd 812 - - Failed keyboard-interactive/pam for root from 198.51.100.7 port 4 ssh2", FailedKbdInt, "198.51.100.7", "root"},
		{"Nov 25 11:40:01 srv sshd[812]: Invalid user  from 203.0.113.9 port 22", InvalidUser, "203.0.113.9", ""},
		{"Nov 25 11:40:01 srv sshd[812]: Invalid user admin from ::ffff:203.0.113.9 port 22", InvalidUser, "203.0.113.9", "admin"},
		{"Nov 25 11:40:01 srv sshd[812]: Disconnecting authenticating user root 203.0.113.9 port 4: Too many authentication failures [preauth]", TooManyFailures, "203.0.113.9", "root"},
		{"Nov 25 11:40:01 srv sshd[812]: Accepted publickey for admin from 198.51.100.2 port 50000 ssh2: ED25519 SHA256:x", Accepted, "198.51.100.2", "admin"},
		{"Nov 25 11:40:01 srv sshd[812]: Accepted password for admin from 198.51.100.2 port 50000 ssh2", Accepted, "198.51.100.2", "admin"},
		// Another program's message in sshd's words does not count.
		{"Nov 25 11:40:01 srv nginx[812]: Failed password for root from 203.0.113.9 port 50022 ssh2", "", "", ""},
		{"Nov 25 11:40:01 srv sudo: Invalid user admin from 203.0.113.9", "", "", ""},
		{"<38>1 2026-11-25T11:40:01Z srv cron 812 - - Invalid user x from 203.0.113.9", "", "", ""},
		// Not addresses.
		{"Nov 25 11:40:01 srv sshd[812]: Invalid user x from example.com port 22", "", "", ""},
		{"Nov 25 11:40:01 srv sshd[812]: Invalid user x from 999.1.1.1 port 22", "", "", ""},
		{"", "", "", ""},
	} {
		ev, ok := ParseLine(c.line)
		if c.addr == "" {
			if ok {
				t.Errorf("%q: got %+v; want nothing", c.line, ev)
			}
			continue
		}
		if !ok || ev.Kind != c.kind || ev.Addr != netip.MustParseAddr(c.addr) || ev.User != c.user {
			t.Errorf("%q: got %+v (ok %v); want %s %s user %q", c.line, ev, ok, c.kind, c.addr, c.user)
		}
	}
}

// The address comes only from the place sshd writes it: user names and
// client version strings full of addresses cannot aim a ban elsewhere.
func TestLogInjection(t *testing.T) {
	const real = "203.0.113.66"
	for _, line := range []string{
		"Nov 25 11:40:01 srv sshd[1]: Invalid user root from 198.51.100.9 from 203.0.113.66 port 51000",
		"Nov 25 11:40:01 srv sshd[1]: Invalid user root from 198.51.100.9 port 22 from 203.0.113.66 port 51000",
		"Nov 25 11:40:01 srv sshd[1]: Invalid user x from 198.51.100.9 port 22 from 203.0.113.66",
		"Nov 25 11:40:01 srv sshd[1]: Failed password for root from 198.51.100.9 port 22 ssh2 from 203.0.113.66 port 51000 ssh2",
		"Nov 25 11:40:01 srv sshd[1]: Failed password for invalid user a from 198.51.100.9 port 1 ssh2: x from 203.0.113.66 port 51000 ssh2",
		"Nov 25 11:40:01 srv sshd[1]: User a from 198.51.100.9 not allowed because b from 203.0.113.66 not allowed because not listed in AllowUsers",
		"Nov 25 11:40:01 srv sshd[1]: error: PAM: Authentication failure for x from 198.51.100.9 from 203.0.113.66",
		"Nov 25 11:40:01 srv sshd[1]: Bad protocol version identification 'SSH-2.0-x from 198.51.100.9 port 1' from 203.0.113.66 port 51000",
		"Nov 25 11:40:01 srv sshd[1]: Connection closed by invalid user y 198.51.100.9 port 1 [preauth] 203.0.113.66 port 51000 [preauth]",
		"Nov 25 11:40:01 srv sshd[1]: error: maximum authentication attempts exceeded for a from 198.51.100.9 port 1 ssh2 from 203.0.113.66 port 51000 ssh2 [preauth]",
		// A bare message (journald's MESSAGE) whose user name imitates a banner.
		"Invalid user sshd[1]: Invalid user z from 198.51.100.9 from 203.0.113.66 port 51000",
		"Nov 25 11:40:01 Invalid user sshd[1]: Invalid user z from 198.51.100.9 from 203.0.113.66 port 51000",
	} {
		ev, ok := ParseLine(line)
		if ok && ev.Addr != netip.MustParseAddr(real) {
			t.Errorf("%q: banned %s; only %s may be", line, ev.Addr, real)
		}
		if !ok {
			t.Logf("%q: not counted", line)
		}
	}
	// Client text on both sides of the address: ambiguous, not counted.
	for _, line := range []string{
		"Nov 25 11:40:01 srv sshd[1]: Disconnecting invalid user a 198.51.100.9 port 1: b 203.0.113.66 port 51000: Change of username or service not allowed: (a,ssh-connection) -> (b,ssh-connection) [preauth]",
		"Nov 25 11:40:01 srv sshd[1]: Disconnecting invalid user a 203.0.113.66 port 51000: Change of username or service not allowed: (a,ssh-connection) -> (b 198.51.100.9 port 1: ,ssh-connection) [preauth]",
	} {
		if ev, ok := ParseLine(line); ok {
			t.Errorf("%q: ambiguous line counted against %s", line, ev.Addr)
		}
	}
}

func TestParseMessageJournald(t *testing.T) {
	ev, ok := ParseMessage("sshd-session", "Failed password for root from 2001:db8::7%eth0 port 22 ssh2")
	if !ok || ev.Addr != netip.MustParseAddr("2001:db8::7") || ev.Kind != FailedPassword {
		t.Fatalf("%+v %v", ev, ok)
	}
	if _, ok := ParseMessage("sshd", "Bad password attempt for 'root' from 1.2.3.4:5"); ok {
		t.Fatal("a dropbear message counted for sshd")
	}
}

// fuzzSeeds are the log forms the parser reads, hostile ones included.
var fuzzSeeds = []string{
	"Nov 25 11:40:01 srv sshd[1]: Invalid user root from 198.51.100.9 from 203.0.113.66 port 51000",
	"Nov 25 11:40:01 srv sshd-session[7]: Failed publickey for root from 203.0.113.66 port 51000 ssh2: ED25519-CERT SHA256:a ID x from 198.51.100.9 port 22 ssh2: (serial 1) CA ED25519 SHA256:b",
	"Nov 25 11:40:01 srv sshd-session[7]: Failed publickey for invalid user a from 198.51.100.9 port 1 ssh2: x from 203.0.113.66 port 51000 ssh2: ED25519 SHA256:b",
	"sshd[7]: Connection from 203.0.113.66 port 51000 on 192.0.2.1 port 22 rdomain \"\"",
	"sshd[7]: Disconnecting: Too many authentication failures [preauth]",
	"sshd[7]: error: kex_exchange_identification: client sent invalid protocol identifier \"x from 198.51.100.9 port 1\"",
	"sshd[1]: Timeout before authentication for connection from 192.0.2.1 to 203.0.113.66, pid = 7",
	"maximum authentication attempts exceeded for root from 203.0.113.66 port 51000 ssh2 [preauth]",
	"Nov 25 11:40:01 srv sshd[7]: [ID 800047 auth.info] Failed password for root from 203.0.113.66 port 5",
	"Nov 25 11:40:01 srv sshd[7]: error: PAM: Authentication failure for x from 203.0.113.66 via 192.0.2.1",
	"Nov 25 11:40:01 srv sshd[7]: Received disconnect from 203.0.113.66 port 5:3: com.jcraft.jsch.JSchException: Auth fail [preauth]",
	"Wed 2026-11-25 11:40:01 UTC srv sshd[7]: Failed hostbased for root from 203.0.113.66 port 5 ssh2: ED25519 SHA256:x, client user \"a\", client host \"b\"",
	"[  123.000001 <    0.000123>] srv sshd[7]: Accepted publickey for root from 203.0.113.66 port 5 ssh2: ED25519 SHA256:x",
}

func FuzzParseLine(f *testing.F) {
	for _, c := range readCorpus(f) {
		f.Add(c.line)
	}
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		ev, ok := ParseLine(line)
		if !ok {
			return
		}
		if ev.Addr.IsValid() && (ev.Addr.Is4In6() || ev.Addr.Zone() != "") || ev.Other.IsValid() && !ev.Addr.IsValid() {
			t.Fatalf("%q: bad address %v", line, ev.Addr)
		}
		if !ev.Addr.IsValid() && !ev.Kind.Failure() {
			t.Fatalf("%q: a %s without an address", line, ev.Kind)
		}
		if ev.Kind == "" || ev.Kind[0] == '?' || (ev.Service != "sshd" && ev.Service != "dropbear") || ev.PID < 0 {
			t.Fatalf("%q: incomplete event %+v", line, ev)
		}
		for _, c := range NewJudge(nil).Judge(ev, time.Unix(1e9, 0)).Count {
			if !c.Addr.IsValid() || !c.Kind.Failure() {
				t.Fatalf("%q: counted %+v", line, c)
			}
		}
	})
}

// FuzzJudge feeds one judge a log (lines split at newlines): it never
// panics, stays within its bound, and counts only valid addresses.
func FuzzJudge(f *testing.F) {
	f.Add(strings.Join(fuzzSeeds, "\n"))
	f.Add("sshd[7]: Failed publickey for root from 203.0.113.6 port 5 ssh2: RSA SHA256:x\nsshd[7]: Disconnecting: Too many authentication failures [preauth]\nsshd[7]: Accepted publickey for root from 203.0.113.6 port 5 ssh2")
	f.Fuzz(func(t *testing.T, log string) {
		j := NewJudge(func(a netip.Addr) bool { return a == netip.MustParseAddr("192.0.2.1") })
		j.MaxConns = 4
		t0 := time.Unix(1e9, 0)
		for i, line := range strings.Split(log, "\n") {
			ev, ok := ParseLine(line)
			if !ok {
				continue
			}
			for _, c := range j.Judge(ev, t0.Add(time.Duration(i)*time.Second)).Count {
				if !c.Addr.IsValid() || c.Addr == netip.MustParseAddr("192.0.2.1") && ev.Other.IsValid() {
					t.Fatalf("line %d %q: counted %+v", i, line, c)
				}
			}
			if j.Tracked() > 4 {
				t.Fatalf("%d connections tracked", j.Tracked())
			}
		}
		for _, c := range j.Sweep(t0.Add(24 * time.Hour)) {
			if !c.Addr.IsValid() {
				t.Fatalf("swept %+v", c)
			}
		}
	})
}
