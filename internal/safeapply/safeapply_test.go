package safeapply

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// fakeProc builds a /proc with an sshd (pid 100) holding listening socket
// inode 1111 on port 2222, an established session to it, and another
// process's socket.
func fakeProc(t *testing.T) string {
	root := t.TempDir()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "net"), 0o755))
	header := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	tcp := header +
		"   0: 00000000:08AE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0\n" +
		"   1: 010200C0:08AE 020200C0:C350 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0 100 0 0 10 0\n" +
		"   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3333 1 0 100 0 0 10 0\n" +
		"   3: 010200C0:0050 030200C0:C351 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0 100 0 0 10 0\n"
	must(os.WriteFile(filepath.Join(root, "net/tcp"), []byte(tcp), 0o644))
	// [2001:db8::1]:2222 ← [2001:db8::2]:50000, words in little-endian host order.
	tcp6 := header +
		"   0: B80D0120000000000000000001000000:08AE B80D0120000000000000000002000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 5555 1 0 100 0 0 10 0\n"
	must(os.WriteFile(filepath.Join(root, "net/tcp6"), []byte(tcp6), 0o644))
	for pid, comm := range map[string]string{"100": "sshd", "200": "nginx"} {
		must(os.MkdirAll(filepath.Join(root, pid, "fd"), 0o755))
		must(os.WriteFile(filepath.Join(root, pid, "comm"), []byte(comm+"\n"), 0o644))
	}
	must(os.Symlink("socket:[1111]", filepath.Join(root, "100/fd/3")))
	must(os.Symlink("socket:[3333]", filepath.Join(root, "200/fd/3")))
	return root
}

func TestFindSSH(t *testing.T) {
	st, err := FindSSH(fakeProc(t), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Listen) != 1 || st.Listen[0] != netip.MustParseAddrPort("0.0.0.0:2222") {
		t.Fatalf("listen: %v", st.Listen)
	}
	if len(st.Sessions) != 1 || st.Sessions[0].Client != netip.MustParseAddrPort("192.0.2.2:50000") {
		t.Fatalf("sessions: %v (the port 80 connection is not SSH)", st.Sessions)
	}
	// SSH_CONNECTION counts when that connection exists here...
	st, _ = FindSSH(fakeProc(t), "2001:db8::2 50000 2001:db8::1 2222")
	if len(st.Sessions) != 2 || st.Sessions[1].Source != "SSH_CONNECTION of this shell" {
		t.Fatalf("SSH_CONNECTION session: %v", st.Sessions)
	}
	// ...and not when it names a connection of another namespace.
	st, _ = FindSSH(fakeProc(t), "198.51.100.9 40000 203.0.113.1 22")
	if len(st.Sessions) != 1 {
		t.Fatalf("foreign SSH_CONNECTION taken: %v", st.Sessions)
	}
}

func TestCheckSessions(t *testing.T) {
	s := Session{Client: netip.MustParseAddrPort("192.0.2.2:50000"), Server: netip.MustParseAddrPort("192.0.2.1:2222"), Source: "test"}
	for _, c := range []struct {
		policy string
		cut    bool
		fix    string
	}{
		{"default deny incoming\nallow 2222/tcp\n", false, ""},
		{"default deny incoming\nallow 22/tcp\n", true, "moat allow 2222/tcp"},
		{"allow 80/tcp\ndeny from 192.0.2.0/24\nallow 2222/tcp\n", true, "moat insert 2 allow proto tcp from 192.0.2.2 to any port 2222"},
		{"limit 2222/tcp rate 2/60s\n", true, "moat insert 1"},
		{"limit 2222/tcp\n", false, ""},
		{"default allow incoming\ndeny in on eth0 to any port 2222 proto tcp\n", true, "moat insert 1"},
		{"default allow incoming\ndeny in on eth1 to any port 2222 proto tcp\n", false, ""},
	} {
		p, err := policy.NewDocument("moat.conf", []byte(c.policy)).Policy(nil)
		if err != nil {
			t.Fatal(err)
		}
		problems := CheckSessions(ruleset.Compile(p), p, []Session{s}, func(netip.Addr) string { return "eth0" })
		if (len(problems) > 0) != c.cut {
			t.Errorf("%q: problems %+v, want cut=%v", c.policy, problems, c.cut)
			continue
		}
		if c.cut && !strings.Contains(strings.Join(problems[0].Fixes, "\n"), c.fix) {
			t.Errorf("%q: fixes %v lack %q", c.policy, problems[0].Fixes, c.fix)
		}
	}
}

// The SSH connections this host opened (a reverse tunnel) are named when
// the new rules would not let it open them again.
func TestOutgoingSSHWarnings(t *testing.T) {
	conns := []OutgoingSSH{{Local: netip.MustParseAddrPort("192.0.2.1:40000"), Remote: netip.MustParseAddrPort("198.51.100.7:22")},
		{Local: netip.MustParseAddrPort("[2001:db8::1]:40001"), Remote: netip.MustParseAddrPort("[2001:db8:5::7]:2222")}}
	for _, c := range []struct {
		policy string
		want   []string
	}{
		{"default deny outgoing\n", []string{"to 198.51.100.7:22 ", "'moat allow out to 198.51.100.7 port 22 proto tcp'", "to [2001:db8:5::7]:2222 ", "default deny outgoing"}},
		{"default deny outgoing\nallow out 22,2222/tcp\n", nil},
		{"deny out to 2001:db8:5::/48\n", []string{"to [2001:db8:5::7]:2222 ", "line 1: deny out to 2001:db8:5::/48"}},
		{"default deny incoming\n", nil},
		{"default deny outgoing\nallow out on eth0 to any port 22,2222 proto tcp\n", nil},
		{"default deny outgoing\nallow out on eth1 to any port 22,2222 proto tcp\n", []string{"198.51.100.7:22"}},
	} {
		p, err := policy.NewDocument("moat.conf", []byte(c.policy)).Policy(nil)
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(OutgoingSSHWarnings(ruleset.Compile(p), conns, func(netip.Addr) string { return "eth0" }), "\n")
		if (got == "") != (len(c.want) == 0) {
			t.Errorf("%q: warnings %q", c.policy, got)
		}
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%q: warnings lack %q:\n%s", c.policy, w, got)
			}
		}
	}
}

// The narrow fix for an IPv6 session names the client's /64: privacy
// addresses rotate within it, and a rule for today's /128 locks out
// tomorrow's.
func TestFixesIPv6Prefix(t *testing.T) {
	p, err := policy.NewDocument("moat.conf", []byte("default deny incoming\n")).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ client, want string }{
		{"[2001:db8:0:1:a:b:c:d]:50000", "moat allow proto tcp from 2001:db8:0:1::/64 to any port 22"},
		{"[fe80::2]:50000", "moat allow proto tcp from fe80::2 to any port 22"},
		{"192.0.2.2:50000", "moat allow proto tcp from 192.0.2.2 to any port 22"},
	} {
		s := Session{Client: netip.MustParseAddrPort(c.client), Server: netip.MustParseAddrPort("[::]:22"), Source: "test"}
		if s.Client.Addr().Is4() {
			s.Server = netip.MustParseAddrPort("192.0.2.1:22")
		} else {
			s.Server = netip.MustParseAddrPort("[2001:db8::1]:22")
		}
		problems := CheckSessions(ruleset.Compile(p), p, []Session{s}, nil)
		if len(problems) != 1 || !strings.Contains(strings.Join(problems[0].Fixes, "\n"), c.want) {
			t.Errorf("%s: fixes %+v, want %q", c.client, problems, c.want)
		}
	}
}

// SSH this host routes is named when the new rules would not let the
// next connection through.
func TestForwardedSSHWarnings(t *testing.T) {
	conns := []ForwardedSSH{{Client: netip.MustParseAddrPort("192.0.2.2:50000"), Server: netip.MustParseAddrPort("10.0.0.5:22")}}
	for _, c := range []struct {
		policy, want string
	}{
		{"default deny routed\n", "routes from 192.0.2.2 to 10.0.0.5:22 could not be made again: it would be dropped by line 1: default deny routed; add 'moat route allow proto tcp from 192.0.2.2 to 10.0.0.5 port 22'"},
		{"default deny routed\nroute allow proto tcp to 10.0.0.0/8 port 22\n", ""},
		{"route reject in on eth0 to 10.0.0.5\n", "rejected by line 1"},
		{"route reject in on eth1 to 10.0.0.5\n", ""},
		{"default deny incoming\n", ""},
	} {
		p, err := policy.NewDocument("moat.conf", []byte(c.policy)).Policy(nil)
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(ForwardedSSHWarnings(ruleset.Compile(p), conns, func(netip.Addr) string { return "eth0" }), "\n")
		if (c.want == "" && got != "") || !strings.Contains(got, c.want) {
			t.Errorf("%q: warnings %q, want %q", c.policy, got, c.want)
		}
	}
}
