package guard

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// feed judges lines in order and returns what counted.
func feed(j *Judge, t0 time.Time, lines ...string) []Event {
	var out []Event
	for i, l := range lines {
		ev, ok := ParseLine(l)
		if !ok {
			continue
		}
		out = append(out, j.Judge(ev, t0.Add(time.Duration(i)*time.Millisecond)).Count...)
	}
	return out
}

// An ssh-agent offering other keys before the right one: sshd at LogLevel
// VERBOSE logs each rejected key, then the login. Twenty such logins,
// with syslog PIDs and as sshd -E writes them (no PID), count nothing.
func TestJudgeAgentKeysBeforeLogin(t *testing.T) {
	for _, pid := range []bool{true, false} {
		for _, wrong := range []int{2, 5} {
			j := NewJudge(nil)
			t0 := time.Unix(1e9, 0)
			for login := 0; login < 20; login++ {
				port := 40000 + login
				tag := ""
				if pid {
					tag = fmt.Sprintf("Nov 25 11:40:01 srv sshd-session[%d]: ", 700+login%3) // PIDs get reused
				}
				lines := []string{tag + fmt.Sprintf("Connection from 203.0.113.5 port %d on 192.0.2.1 port 22 rdomain \"\"", port)}
				for k := 0; k < wrong; k++ {
					lines = append(lines, tag+fmt.Sprintf("Failed publickey for root from 203.0.113.5 port %d ssh2: ED25519 SHA256:k%d", port, k))
				}
				lines = append(lines, tag+fmt.Sprintf("Accepted publickey for root from 203.0.113.5 port %d ssh2: ED25519 SHA256:ok", port))
				if login%2 == 0 { // half end before the next starts
					lines = append(lines, tag+fmt.Sprintf("Disconnected from user root 203.0.113.5 port %d", port))
				}
				if got := feed(j, t0.Add(time.Duration(login)*time.Second), lines...); len(got) != 0 {
					t.Fatalf("pid %v, %d wrong keys, login %d: counted %+v", pid, wrong, login, got)
				}
			}
			if got := j.Sweep(t0.Add(time.Hour)); len(got) != 0 {
				t.Fatalf("expired logged-in connections counted: %+v", got)
			}
		}
	}
}

// A client with only wrong keys counts once per connection, however many
// keys it offers and however the connection ends.
func TestJudgeWrongKeysCountOncePerConnection(t *testing.T) {
	t0 := time.Unix(1e9, 0)
	for name, end := range map[string][]string{
		"closed":   {"sshd[9]: Connection closed by authenticating user root 203.0.113.7 port 4000 [preauth]"},
		"too many": {"sshd[9]: Disconnecting: Too many authentication failures [preauth]"},
		"max":      {"sshd[9]: maximum authentication attempts exceeded for root from 203.0.113.7 port 4000 ssh2 [preauth]", "sshd[9]: Disconnecting authenticating user root 203.0.113.7 port 4000: Too many authentication failures [preauth]"},
		"received": {"sshd[9]: Received disconnect from 203.0.113.7 port 4000:11: Bye [preauth]"},
		"timeout":  {"sshd[9]: Timeout before authentication for 203.0.113.7 port 4000"},
	} {
		j := NewJudge(nil)
		lines := []string{"sshd[9]: Connection from 203.0.113.7 port 4000 on 192.0.2.1 port 22"}
		for k := 0; k < 6; k++ {
			lines = append(lines, fmt.Sprintf("sshd[9]: Failed publickey for root from 203.0.113.7 port 4000 ssh2: RSA SHA256:k%d", k))
		}
		got := feed(j, t0, append(lines, end...)...)
		if len(got) != 1 || got[0].Addr != netip.MustParseAddr("203.0.113.7") || got[0].Kind.Weak() {
			t.Errorf("%s: counted %+v; want one strong failure of 203.0.113.7", name, got)
		}
		if len(j.Open()) != 0 {
			t.Errorf("%s: %d connections left open", name, len(j.Open()))
		}
	}
	// A connection that goes silent counts when it expires.
	j := NewJudge(nil)
	feed(j, t0, "sshd[9]: Failed publickey for root from 203.0.113.7 port 4000 ssh2: RSA SHA256:k")
	if got := j.Sweep(t0.Add(time.Minute)); len(got) != 0 {
		t.Fatalf("counted before idle: %+v", got)
	}
	if got := j.Sweep(t0.Add(time.Hour)); len(got) != 1 || got[0].Kind != FailedPublickey {
		t.Fatalf("expired connection: %+v", got)
	}
}

// Passwords keep counting per attempt; a wrong key before them adds one
// for the connection.
func TestJudgePasswordsCountPerAttempt(t *testing.T) {
	j := NewJudge(nil)
	got := feed(j, time.Unix(1e9, 0),
		"sshd[9]: Failed publickey for root from 203.0.113.8 port 4000 ssh2: RSA SHA256:k",
		"sshd[9]: Failed password for root from 203.0.113.8 port 4000 ssh2",
		"sshd[9]: Failed password for root from 203.0.113.8 port 4000 ssh2",
		"sshd[9]: Failed keyboard-interactive/pam for root from 203.0.113.8 port 4000 ssh2",
	)
	if len(got) != 3 || got[0].Kind != FailedPassword || got[2].Kind != FailedKbdInt {
		t.Fatalf("counted %+v", got)
	}
	got = feed(j, time.Unix(1e9, 0), "sshd[9]: Connection closed by authenticating user root 203.0.113.8 port 4000 [preauth]")
	if len(got) != 1 || got[0].Kind != FailedPublickey {
		t.Fatalf("end: %+v", got)
	}
	// A password after rejected keys that logs in: nothing.
	got = feed(j, time.Unix(1e9, 0),
		"sshd[10]: Failed publickey for root from 203.0.113.8 port 4001 ssh2: RSA SHA256:k",
		"sshd[10]: Failed none for root from 203.0.113.8 port 4001 ssh2",
		"sshd[10]: Accepted password for root from 203.0.113.8 port 4001 ssh2",
		"sshd[10]: Disconnected from user root 203.0.113.8 port 4001")
	if len(got) != 0 {
		t.Fatalf("login after keys: %+v", got)
	}
}

// Lines naming no address count against their connection's address,
// found by sshd's PID, even when the address comes later; without a PID
// they are not counted.
func TestJudgeAddresslessLines(t *testing.T) {
	t0 := time.Unix(1e9, 0)
	j := NewJudge(nil)
	got := feed(j, t0,
		"Nov 25 11:40:01 srv sshd[31]: error: kex_exchange_identification: client sent invalid protocol identifier \"GET / HTTP/1.1\"",
		"Nov 25 11:40:01 srv sshd[31]: banner exchange: Connection from 2001:db8::31 port 5000: invalid format")
	if len(got) != 1 || got[0].Addr != netip.MustParseAddr("2001:db8::31") || got[0].Kind != BadProtocol {
		t.Fatalf("held kex line: %+v", got)
	}
	got = feed(j, t0,
		"Nov 25 11:40:01 srv sshd[32]: Connection from 203.0.113.32 port 5000 on 192.0.2.1 port 22 rdomain \"\"",
		"Nov 25 11:40:01 srv sshd[32]: error: kex_exchange_identification: Connection closed by remote host",
		"Nov 25 11:40:01 srv sshd[32]: Connection closed by 203.0.113.32 port 5000")
	if len(got) != 1 || got[0].Addr != netip.MustParseAddr("203.0.113.32") || got[0].Kind != NoIdentification {
		t.Fatalf("kex after connection: %+v", got)
	}
	got = feed(j, t0, "Disconnecting: Too many authentication failures [preauth]", "kex_exchange_identification: read: Connection reset by peer")
	if len(got) != 0 {
		t.Fatalf("address-less lines without a PID counted: %+v", got)
	}
	// A held kex error released by a line that is no failure counts.
	got = feed(j, t0,
		"Nov 25 11:40:01 srv sshd[33]: error: kex_exchange_identification: Connection closed by remote host",
		"Nov 25 11:40:01 srv sshd[33]: Connection closed by 203.0.113.33 port 5000")
	if len(got) != 1 || got[0].Addr != netip.MustParseAddr("203.0.113.33") || got[0].Kind != NoIdentification {
		t.Fatalf("kex before the address: %+v", got)
	}
	// PID reuse: a new connection on the same PID starts afresh.
	got = feed(j, t0,
		"sshd[40]: Connection from 203.0.113.40 port 1 on 192.0.2.1 port 22",
		"sshd[40]: Accepted publickey for root from 203.0.113.40 port 1 ssh2: ED25519 SHA256:x",
		"sshd[40]: Connection from 203.0.113.41 port 2 on 192.0.2.1 port 22",
		"sshd[40]: Disconnecting: Too many authentication failures [preauth]")
	if len(got) != 1 || got[0].Addr != netip.MustParseAddr("203.0.113.41") {
		t.Fatalf("reused PID: %+v", got)
	}
}

// OpenSSH 9.8 names the server first in its timeout line, 9.9 the client:
// the judge takes the address that is not this host's, or none.
func TestJudgeTimeoutOrder(t *testing.T) {
	server := netip.MustParseAddr("203.0.113.48")
	local := func(a netip.Addr) bool { return a == server }
	for _, c := range []struct{ line, want string }{
		{"sshd[1]: Timeout before authentication for connection from 203.0.113.48 to 198.51.100.5, pid = 20048", "198.51.100.5"}, // 9.8
		{"sshd[1]: Timeout before authentication for connection from 198.51.100.5 to 203.0.113.48, pid = 20048", "198.51.100.5"}, // 9.9
		{"sshd[1]: Timeout before authentication for connection from 2001:db8::5 to 2001:db8::6, pid = 20048", ""},               // neither
		{"sshd[1]: Timeout before authentication for connection from 203.0.113.48 to 127.0.0.1, pid = 20048", ""},                // both
	} {
		j := NewJudge(local)
		got := feed(j, time.Unix(1e9, 0), c.line)
		switch {
		case c.want == "" && len(got) != 0:
			t.Errorf("%q: counted %+v", c.line, got)
		case c.want != "" && (len(got) != 1 || got[0].Addr.String() != c.want):
			t.Errorf("%q: counted %+v; want %s", c.line, got, c.want)
		}
	}
	// Without knowing the host's addresses, the connection the line names
	// (pid = N) tells the client, and its held keys count once.
	j := NewJudge(nil)
	got := feed(j, time.Unix(1e9, 0),
		"sshd-session[20048]: Connection from 198.51.100.5 port 7 on 203.0.113.48 port 22 rdomain \"\"",
		"sshd-session[20048]: Failed publickey for root from 198.51.100.5 port 7 ssh2: ED25519 SHA256:x",
		"sshd[1]: Timeout before authentication for connection from 203.0.113.48 to 198.51.100.5, pid = 20048")
	if len(got) != 1 || got[0].Addr.String() != "198.51.100.5" || got[0].Kind != FailedPublickey {
		t.Fatalf("timeout of a known connection: %+v", got)
	}
}

// The judge's memory is bounded: past MaxConns the oldest connections go,
// and what they held counts.
func TestJudgeBounded(t *testing.T) {
	j := NewJudge(nil)
	j.MaxConns = 100
	t0 := time.Unix(1e9, 0)
	counted := 0
	for i := 0; i < 1000; i++ {
		ev, _ := ParseLine(fmt.Sprintf("sshd[%d]: Failed publickey for root from 203.0.113.9 port %d ssh2: RSA SHA256:k", 1000+i, 1000+i))
		counted += len(j.Judge(ev, t0.Add(time.Duration(i)*time.Millisecond)).Count)
		if j.Tracked() > 100 {
			t.Fatalf("%d connections tracked", j.Tracked())
		}
	}
	if counted+len(j.Open()) != 1000 {
		t.Fatalf("%d counted + %d open; want 1000", counted, len(j.Open()))
	}
}

// Attacker-written text (user names, certificate key IDs and fields,
// client versions, disconnect reasons, offers, client host names) never
// moves a ban: every event the parser and judge make names the real
// client or nothing, for every failure kind sshd and dropbear write.
func TestInjectionEveryField(t *testing.T) {
	const real, fake = "203.0.113.66", "198.51.100.9"
	payloads := []string{
		"x from " + fake + " port 22 ssh2",
		"x from " + fake + " port 22 ssh2: ED25519 SHA256:x",
		"x from " + fake + " port 22",
		"x from " + fake,
		"from " + fake + " port 22 ssh2 [preauth]",
		fake + " port 22 [preauth]",
		"x " + fake + " port 22: Too many authentication failures [preauth]",
		"x from " + fake + " via " + fake,
		"<" + fake + ":22>",
		"' from " + fake + ":22",
		"x) CA ED25519 SHA256:y from " + fake + " port 22 ssh2: z (serial 1",
		"root from " + fake + " port 22 ssh2: ED25519-CERT SHA256:x ID y",
		"Connection from " + fake + " port 22 on 192.0.2.1 port 22",
		"[" + fake + "]:22 on [192.0.2.1]:22 penalty: x",
		fake + ", pid = 1",
		"x from " + fake + " not allowed because y",
	}
	cert := func(id string) string {
		return "ED25519-CERT SHA256:abc ID " + id + " (serial 7) CA ED25519 SHA256:def"
	}
	templates := []func(p string) string{
		func(p string) string { return "Failed publickey for root from @ port 51000 ssh2: " + cert(p) },
		func(p string) string {
			return "Failed publickey for invalid user " + p + " from @ port 51000 ssh2: " + cert(p)
		},
		func(p string) string {
			return "Failed publickey for invalid user " + p + " from @ port 51000 ssh2: ED25519 SHA256:abc"
		},
		func(p string) string { return "Accepted publickey for root from @ port 51000 ssh2: " + cert(p) },
		func(p string) string { return "Failed password for invalid user " + p + " from @ port 51000 ssh2" },
		func(p string) string {
			return "Failed keyboard-interactive/pam for invalid user " + p + " from @ port 51000 ssh2"
		},
		func(p string) string { return "Failed none for invalid user " + p + " from @ port 51000 ssh2" },
		func(p string) string {
			return "Failed hostbased for root from @ port 51000 ssh2: ED25519 SHA256:abc, client user \"" + p + "\", client host \"" + p + "\""
		},
		func(p string) string { return "Invalid user " + p + " from @ port 51000" },
		func(p string) string { return "Bad protocol version identification '" + p + "' from @ port 51000" },
		func(p string) string { return "Received disconnect from @ port 51000:3: " + p + " Auth fail [preauth]" },
		func(p string) string { return "error: Received disconnect from @: 3: " + p + " [preauth]" },
		func(p string) string {
			return "Unable to negotiate with @ port 51000: no matching key exchange method found. Their offer: " + p + " [preauth]"
		},
		func(p string) string { return "Connection closed by invalid user " + p + " @ port 51000 [preauth]" },
		func(p string) string {
			return "Connection closed by authenticating user " + p + " @ port 51000 [preauth]"
		},
		func(p string) string { return "Disconnected from invalid user " + p + " @ port 51000 [preauth]" },
		func(p string) string {
			return "Disconnecting invalid user " + p + " @ port 51000: Too many authentication failures [preauth]"
		},
		func(p string) string {
			return "error: maximum authentication attempts exceeded for invalid user " + p + " from @ port 51000 ssh2 [preauth]"
		},
		func(p string) string {
			return "maximum authentication attempts exceeded for " + p + " from @ port 51000 ssh2 [preauth]"
		},
		func(p string) string { return "error: PAM: Authentication failure for illegal user " + p + " from @" },
		func(p string) string { return "error: PAM: Authentication failure for " + p + " from @ via 192.0.2.1" },
		func(p string) string {
			return "kex_exchange_identification: client sent invalid protocol identifier \"" + p + "\""
		},
		func(p string) string { return "Bad password attempt for '" + p + "' from @:51000" },
		func(p string) string { return "Login attempt for nonexistent user '" + p + "' from @:51000" },
		func(p string) string { return "Max auth tries reached - user '" + p + "' from @:51000" },
		func(p string) string {
			return "Exit before auth from <@:51000>: (user '" + p + "', 1 fails): Max auth tries reached"
		},
	}
	banners := []string{"Nov 25 11:40:01 srv sshd[77]: ", "Nov 25 11:40:01 srv sshd-session[77]: [ID 800047 auth.info] ", "", "Nov 25 11:40:01 srv dropbear[77]: "}
	realAddr := netip.MustParseAddr(real)
	for ti, tmpl := range templates {
		for _, p := range payloads {
			for _, b := range banners {
				msg := strings.Replace(tmpl(p), "@", real, 1)
				// The client's own text goes in after the address: A only
				// stands for the address sshd writes.
				line := b + msg
				ev, ok := ParseLine(line)
				if ok && ev.Addr.IsValid() && ev.Addr != realAddr {
					t.Errorf("template %d: %q parsed as %s %s", ti, line, ev.Kind, ev.Addr)
				}
				j := NewJudge(nil)
				pre := b + "Connection from " + real + " port 51000 on 192.0.2.1 port 22"
				for _, c := range feed(j, time.Unix(1e9, 0), pre, line, b+"Connection closed by "+real+" port 51000") {
					if c.Addr != realAddr {
						t.Errorf("template %d: %q counted against %s", ti, line, c.Addr)
					}
				}
			}
		}
		// The same line with a harmless text is counted (or, for a key,
		// held): the template is a real form.
		msg := strings.Replace(tmpl("someone"), "@", real, 1)
		if ev, ok := ParseLine("Nov 25 11:40:01 srv sshd[77]: " + msg); !ok && !strings.Contains(msg, "'") {
			t.Errorf("template %d: %q not recognised", ti, msg)
		} else if ok && ev.Addr.IsValid() && ev.Addr != realAddr {
			t.Errorf("template %d: %q gives %s", ti, msg, ev.Addr)
		}
	}
}

// A certificate whose key ID imitates the address tail is still counted
// against the real client when the account is real (issue 8).
func TestKeyIDCountedAgainstRealClient(t *testing.T) {
	j := NewJudge(nil)
	got := feed(j, time.Unix(1e9, 0),
		"sshd[5]: Failed publickey for root from 203.0.113.66 port 51000 ssh2: ED25519-CERT SHA256:abc ID x from 198.51.100.9 port 22 ssh2: (serial 1) CA ED25519 SHA256:def",
		"sshd[5]: Connection closed by authenticating user root 203.0.113.66 port 51000 [preauth]")
	if len(got) != 1 || got[0].Addr != netip.MustParseAddr("203.0.113.66") {
		t.Fatalf("counted %+v", got)
	}
}
