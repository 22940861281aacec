package e2e

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// echoOnce writes a line on c and reads it back within wait.
func echoOnce(c net.Conn, line string, wait time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(wait))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(c, line); err != nil {
		return err
	}
	buf := make([]byte, len(line))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != line {
		return fmt.Errorf("echoed %q, want %q", buf, line)
	}
	return nil
}

// dialFrom opens a TCP connection in the client namespace from src (the
// zero Addr: any) to dst, trying again while the forward is not up yet.
func (e *env) dialFrom(src netip.Addr, dst netip.AddrPort) net.Conn {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var c net.Conn
		err := e.topo.Client.Do(func() error {
			d := net.Dialer{Timeout: 2 * time.Second}
			if src.IsValid() {
				d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
			}
			var err error
			c, err = d.Dial("tcp", dst.String())
			return err
		})
		if err == nil {
			if err = echoOnce(c, "hello\n", 10*time.Second); err == nil {
				e.t.Cleanup(func() { _ = c.Close() })
				return c
			}
			_ = c.Close()
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("connect %s from %v: %v", dst, src, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A logged-in admin's forwarded channels (ssh -L: connections the session
// makes to any address; ssh -R: connections anyone makes to the forwarded
// port) do not make their peers "logged in": with the channels open
// through a real OpenSSH session, and moat applied again while they are,
// the guard bans each peer (IPv4 and IPv6) and the ban drops its packets
// before conntrack, the forwarded channels' own included, while the
// admin's address stays unbanned and its session carries data. Before
// 2cb8623 the guard refused the bans ("it has a logged-in SSH session
// here") and the early drop spared the peers.
func TestForwardedChannelsShieldNoAddress(t *testing.T) {
	requireSSH(t)
	eachBackend(t, func(t *testing.T, b string) {
		e := newSSHEnv(t, b)
		// A long-lived flow's end in the client namespace: the -L
		// targets (the client's other addresses) and the -R target.
		svc := &lab.Services{}
		t.Cleanup(func() { _ = svc.Close() })
		if err := svc.ServeEcho(e.topo.Client, 7100); err != nil {
			t.Fatal(err)
		}
		srv, logFile := e.loggedSSHD(verboseSSHD + "GatewayPorts clientspecified\nAllowTcpForwarding yes\n")
		e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\nallow 7000/tcp\nguard sshd maxretry 2 findtime 10m bantime 1m weak 1\n")
		lTarget4, lTarget6 := lab.ClientAlt[0], lab.ClientAlt[2] // 192.0.2.3, 2001:db8::3
		rPeer4, rPeer6 := lab.ClientAlt[1], lab.ClientAlt[3]     // 192.0.2.4, 2001:db8::4
		admin := srv.loginWith(lab.ServerV4,                     // from lab.ClientV4
			"-o", "ExitOnForwardFailure=yes",
			"-L", fmt.Sprintf("127.0.0.1:9000:%s:7100", lTarget4),
			"-L", fmt.Sprintf("127.0.0.1:9001:[%s]:7100", lTarget6),
			"-R", "*:7000:127.0.0.1:7100")
		lo := netip.MustParseAddr("127.0.0.1")
		chans := map[netip.Addr]net.Conn{
			lTarget4: e.dialFrom(netip.Addr{}, netip.AddrPortFrom(lo, 9000)),
			lTarget6: e.dialFrom(netip.Addr{}, netip.AddrPortFrom(lo, 9001)),
			rPeer4:   e.dialFrom(rPeer4, netip.AddrPortFrom(lab.ServerV4, 7000)),
			rPeer6:   e.dialFrom(rPeer6, netip.AddrPortFrom(lab.ServerV6, 7000)),
		}
		// The protected sets are the sessions logged in at apply: apply
		// again with every channel open.
		e.mustMoat("enable")
		e.startGuard("--log-file", logFile)
		var lines []string
		for i := 0; i < 3; i++ {
			for j, a := range []netip.Addr{lab.ClientV4, lTarget4, lTarget6, rPeer4, rPeer6} {
				lines = append(lines, fmt.Sprintf("Failed password for root from %s port %d ssh2", a, 6000+10*j+i))
			}
		}
		appendLines(t, logFile, lines...)
		waitFor(t, 10*time.Second, "the forwarded channels' peers not all banned", func() bool {
			bans := e.bans()
			for a := range chans {
				if _, ok := bans[a.String()]; !ok {
					return false
				}
			}
			return true
		})
		time.Sleep(300 * time.Millisecond) // every line read
		if _, ok := e.bans()[lab.ClientV4.String()]; ok {
			t.Errorf("the admin's address was banned: %v", e.bans())
		}
		if log := e.guardLog(); !strings.Contains(log, "it has a logged-in SSH session here") {
			t.Errorf("no refusal logged for the admin:\n%s", log)
		}
		// The bans drop the peers' packets before conntrack: new
		// connections and the forwarded channels' established flows.
		e.expect(false,
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout",
			"client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/2001:db8::4 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.2 tcp 192.0.2.1:80 open",
		)
		for a, c := range chans {
			if err := echoOnce(c, "after the ban\n", 500*time.Millisecond); err == nil {
				t.Errorf("the forwarded channel with %s still carries data after its ban", a)
			}
		}
		if err := admin.alive(5 * time.Second); err != nil {
			t.Errorf("the admin's session: %v", err)
		}
		if ex := e.mustMoat("explain", "in", "tcp", "from", rPeer4.String(), "to", "port", "80"); !strings.Contains(ex, "DROP") {
			t.Errorf("explain of a banned forwarded peer:\n%s", ex)
		}
	})
}
