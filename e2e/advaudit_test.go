package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAuditProbeSource: the source 'moat audit' judges "anyone" by is
// not one a rule or list names. A bogon blocklist holding 0.0.0.0/8 and
// ::/8 (as many do) made every open port "closed by moat", and a rule
// allowing only 0.0.0.0/8 made its port "open to anyone"; real packets
// say otherwise. Destination-restricted rules ('to ADDR') open a socket
// bound to the wildcard address for packets to ADDR.
func TestAuditProbeSource(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		bogons := filepath.Join(e.dir, "bogons.list")
		if err := os.WriteFile(bogons, []byte("0.0.0.0/8\n::/8\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		e.apply("blocklist bogons file " + bogons + "\n" + `default deny incoming
allow 22/tcp
allow 53/udp
allow from 0.0.0.0/8 to any port 443 proto tcp
allow from ::/8 to any port 443 proto tcp
allow proto tcp from any to 192.0.2.1 port 80
allow proto tcp from any to 2001:db8::1 port 80
`)
		a, code := e.audit()
		if code != 0 {
			t.Errorf("exit %d, want 0", code)
		}
		for _, f := range a.Sockets {
			want := map[string]string{"tcp 22": "open", "udp 53": "open", "tcp 80": "open", "tcp 443": "closed"}[f.Proto+" "+strconv.Itoa(int(f.Port))]
			if want != "" && f.Status != want {
				t.Errorf("%s %s/%d: %s (from %v), want %s", f.Family, f.Proto, f.Port, f.Status, f.From, want)
			}
		}
		e.checkAudit(a, nil)
	})
}

// A socket bound to a device (SO_BINDTODEVICE) takes packets only from
// it: bound to loopback it is local only though its address is the
// wildcard one, whatever the policy allows.
func TestAuditBoundDevice(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		var closers []func() error
		t.Cleanup(func() {
			for _, c := range closers {
				_ = c()
			}
		})
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, "lo")
			}); err != nil {
				return err
			}
			return serr
		}}
		if err := e.topo.Server.Do(func() error {
			for _, a := range []string{"0.0.0.0:8081", "[::]:8082"} {
				l, err := lc.Listen(context.Background(), "tcp", a)
				if err != nil {
					return err
				}
				closers = append(closers, l.Close)
			}
			u, err := lc.ListenPacket(context.Background(), "udp", "0.0.0.0:8083")
			if err != nil {
				return err
			}
			closers = append(closers, u.Close)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		inactive, _ := e.audit()
		e.checkAudit(inactive, nil)
		e.apply("default deny incoming\nallow 8081:8083/tcp\nallow 8083/udp\n")
		a, _ := e.audit()
		n := 0
		for _, f := range append(inactive.Sockets, a.Sockets...) {
			if f.Port >= 8081 && f.Port <= 8083 {
				n++
				if f.Status != "local-only" {
					t.Errorf("%s %s/%d bound to lo: %s, want local-only", f.Family, f.Proto, f.Port, f.Status)
				}
			}
		}
		if n != 12 {
			t.Errorf("%d findings for the sockets bound to lo, want 12: %+v", n, a.Sockets)
		}
		e.checkAudit(a, nil)
	})
}
