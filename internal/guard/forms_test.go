package guard

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
)

// Real log forms of other versions, platforms and outputs (issue 8).
func TestParseLogForms(t *testing.T) {
	for _, c := range []struct {
		line string
		kind Kind
		addr string
		pid  int
	}{
		// No trailing ssh2, or ssh1.
		{"Nov 25 11:40:01 srv sshd[812]: Failed password for root from 203.0.113.9 port 50022", FailedPassword, "203.0.113.9", 812},
		{"Nov 25 11:40:01 srv sshd[812]: Failed password for invalid user x y from 203.0.113.9 port 50022 ssh1", FailedPassword, "203.0.113.9", 812},
		{"Nov 25 11:40:01 srv sshd[812]: error: maximum authentication attempts exceeded for root from 203.0.113.9 port 50022 [preauth]", MaxAuthAttempts, "203.0.113.9", 812},
		// sshd -E: no banner, no "error: ".
		{"maximum authentication attempts exceeded for root from 203.0.113.9 port 50022 ssh2 [preauth]", MaxAuthAttempts, "203.0.113.9", 0},
		{"maximum authentication attempts exceeded for invalid user a b from 2001:db8::9 port 50022 ssh2 [preauth]", MaxAuthAttempts, "2001:db8::9", 0},
		// PAM with "via".
		{"Nov 25 11:40:01 srv sshd[812]: error: PAM: Authentication failure for root from 203.0.113.9 via 192.0.2.1", PAMFailure, "203.0.113.9", 812},
		{"Nov 25 11:40:01 srv sshd[812]: error: PAM: Authentication failure for illegal user x from 2001:db8::9 via 2001:db8::1", PAMFailure, "2001:db8::9", 812},
		// Solaris' vendor prefix.
		{"Nov 25 11:40:01 srv sshd[812]: [ID 800047 auth.info] Failed password for root from 203.0.113.9 port 50022 ssh2", FailedPassword, "203.0.113.9", 812},
		{"Nov 25 11:40:01 srv sshd[812]: [ID 800047 auth.notice] Invalid user x from 203.0.113.9", InvalidUser, "203.0.113.9", 812},
		// Hostbased, none, gssapi: held per connection.
		{"Nov 25 11:40:01 srv sshd[812]: Failed hostbased for root from 203.0.113.9 port 50022 ssh2: ED25519 SHA256:x, client user \"a\", client host \"b\"", FailedHostbased, "203.0.113.9", 812},
		{"Nov 25 11:40:01 srv sshd[812]: Failed none for invalid user x from 203.0.113.9 port 50022 ssh2", FailedNone, "203.0.113.9", 812},
		{"Nov 25 11:40:01 srv sshd[812]: Failed gssapi-with-mic for root from 203.0.113.9 port 50022 ssh2", FailedGSSAPI, "203.0.113.9", 812},
		// The client says it gave up.
		{"Nov 25 11:40:01 srv sshd[812]: Received disconnect from 203.0.113.9 port 50022:3: com.jcraft.jsch.JSchException: Auth fail [preauth]", ClientAuthFail, "203.0.113.9", 812},
		{"Nov 25 11:40:01 srv sshd[812]: Received disconnect from 203.0.113.9 port 50022:11: Bye Bye [preauth]", ConnClosed, "203.0.113.9", 812},
		// journalctl's output modes: cat, short-iso, short-full, short-unix, short-monotonic, short-precise.
		{"Failed password for root from 203.0.113.9 port 50022 ssh2", FailedPassword, "203.0.113.9", 0},
		{"2026-11-25T11:40:01+0000 srv sshd[812]: Failed password for root from 203.0.113.9 port 50022 ssh2", FailedPassword, "203.0.113.9", 812},
		{"Wed 2026-11-25 11:40:01 UTC srv sshd[812]: Failed password for root from 203.0.113.9 port 50022 ssh2", FailedPassword, "203.0.113.9", 812},
		{"1795606801.123456 srv sshd[812]: Failed password for root from 203.0.113.9 port 50022 ssh2", FailedPassword, "203.0.113.9", 812},
		{"[12345.678901] srv sshd-session[812]: Failed password for root from 203.0.113.9 port 50022 ssh2", FailedPassword, "203.0.113.9", 812},
		{"[  123.000001 <    0.000123>] srv sshd[812]: Failed password for root from 203.0.113.9 port 50022 ssh2", FailedPassword, "203.0.113.9", 812},
		{"Nov 25 11:40:01.123456 srv sshd[812]: Failed password for root from 203.0.113.9 port 50022 ssh2", FailedPassword, "203.0.113.9", 812},
		{"sshd-session[812]: Failed password for root from 203.0.113.9 port 50022 ssh2", FailedPassword, "203.0.113.9", 812},
		// Lines that name no address.
		{"Nov 25 11:40:01 srv sshd[812]: Disconnecting: Too many authentication failures [preauth]", TooManyFailures, "", 812},
		{"Nov 25 11:40:01 srv sshd[812]: Disconnecting: Too many authentication failures for root [preauth]", TooManyFailures, "", 812},
		{"Nov 25 11:40:01 srv sshd[812]: error: kex_exchange_identification: Connection closed by remote host", NoIdentification, "", 812},
		{"Nov 25 11:40:01 srv sshd[812]: error: kex_exchange_identification: banner line contains invalid characters", BadProtocol, "", 812},
		{"kex_exchange_identification: read: Connection reset by peer", NoIdentification, "", 0},
		// Connection bookkeeping.
		{"Nov 25 11:40:01 srv sshd-session[812]: Connection from 203.0.113.9 port 50022 on 192.0.2.1 port 22 rdomain \"\"", ConnOpened, "203.0.113.9", 812},
		{"Nov 25 11:40:01 srv sshd[812]: Timeout before authentication for 203.0.113.9 port 50022", LoginTimeout, "203.0.113.9", 812},
		// dropbear's logins.
		{"Nov 25 11:40:01 srv dropbear[812]: Pubkey auth succeeded for 'root' with ssh-ed25519 key SHA256:x from 203.0.113.9:50022", Accepted, "203.0.113.9", 812},
	} {
		ev, ok := ParseLine(c.line)
		if !ok || ev.Kind != c.kind || ev.PID != c.pid || (c.addr == "") != !ev.Addr.IsValid() || c.addr != "" && ev.Addr != netip.MustParseAddr(c.addr) {
			t.Errorf("%q: got %+v (ok %v); want %s %q pid %d", c.line, ev, ok, c.kind, c.addr, c.pid)
		}
	}
}

// journald's entries carry sshd's PID, which ties a connection's lines.
func TestJournalEntryPID(t *testing.T) {
	l, err := ParseJournalEntry([]byte(`{"MESSAGE":"Disconnecting: Too many authentication failures [preauth]","SYSLOG_IDENTIFIER":"sshd-session","_PID":"4242","SYSLOG_PID":"1"}`))
	if err != nil || l.PID != 4242 || l.Prog != "sshd-session" {
		t.Fatalf("%+v %v", l, err)
	}
}

// The protector refuses this host's addresses, loopback, logged-in
// sessions and the allowlist, looking again when the snapshot is stale.
func TestProtector(t *testing.T) {
	local := []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	p := &Protector{
		Allowlist: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		Addrs:     func() ([]netip.Addr, error) { return local, nil },
		Sessions:  func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("2001:db8::7")}, nil },
		Fresh:     time.Nanosecond,
	}
	for a, want := range map[string]bool{"192.0.2.1": true, "127.0.0.5": true, "::1": true, "::ffff:192.0.2.1": true, "2001:db8::7": true,
		"198.51.100.4": true, "203.0.113.9": false, "192.0.2.2": false,
		// Never a client's: 'moat ban 255.255.255.255' put the limited
		// broadcast in the ban set, while multicast was refused.
		"255.255.255.255": true, "::ffff:255.255.255.255": true, "0.0.0.0": true, "::": true, "ff02::1": true, "224.0.0.1": true} {
		if why, got := p.Refuse(netip.MustParseAddr(a)); got != want {
			t.Errorf("%s: refused %v (%s); want %v", a, got, why, want)
		}
	}
	// An address added to an interface later is refused at once.
	local = append(local, netip.MustParseAddr("192.0.2.2"))
	time.Sleep(time.Millisecond)
	if _, got := p.Refuse(netip.MustParseAddr("192.0.2.2")); !got {
		t.Error("a new interface address was not refused")
	}
	// If listing fails, the last known addresses stay protected.
	p.Addrs = func() ([]netip.Addr, error) { return nil, errors.New("netlink") }
	time.Sleep(time.Millisecond)
	if _, got := p.Refuse(netip.MustParseAddr("192.0.2.1")); !got {
		t.Error("a listing error forgot the host's addresses")
	}
}

// The detector asks the protector at ban time and says why it refused.
func TestDetectorRefuses(t *testing.T) {
	g := policy.DefaultGuard
	g.MaxRetry = 2
	d := NewDetector(g, nil)
	var refused []string
	d.Refuse = func(a netip.Addr) (string, bool) {
		return "it is an address of this host", a == netip.MustParseAddr("192.0.2.1")
	}
	d.Refused = func(ev Event, why string) { refused = append(refused, ev.Addr.String()+": "+why) }
	t0 := time.Unix(1e9, 0)
	for i := 0; i < 6; i++ {
		if _, ok := d.Observe(ev(FailedPassword, "192.0.2.1"), t0); ok {
			t.Fatal("banned the host's own address")
		}
	}
	if len(refused) != 3 || d.History()[netip.MustParseAddr("192.0.2.1")] != nil {
		t.Fatalf("refusals %v, history %+v", refused, d.History())
	}
	d.Observe(ev(FailedPassword, "203.0.113.1"), t0)
	if _, ok := d.Observe(ev(FailedPassword, "203.0.113.1"), t0); !ok {
		t.Fatal("another address not banned")
	}
}
