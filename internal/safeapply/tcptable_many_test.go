package safeapply

import (
	"fmt"
	"net"
	"slices"
	"testing"

	"github.com/moat-fw/moat/internal/labtest"
)

// With thousands of sockets the kernel answers a dump in many parts:
// the one dump of both families (TCPDIAG_GETSOCK) still gives every
// socket the two dumps per family give, every field, IPv4 connections to
// a dual-stack listener (IPv4-mapped addresses) among them, and no socket
// twice.
func TestKernelTCPTableManySockets(t *testing.T) {
	needRoot(t)
	t.Parallel()
	ns := labtest.NS(t, "moattcpn")
	const perFamily = 1500
	var closers []func() error
	t.Cleanup(func() {
		for _, c := range closers {
			_ = c()
		}
	})
	err := ns.Do(func() error {
		for i := range perFamily {
			for _, a := range []string{"127.0.0.1:0", "[::1]:0"} {
				ln, err := net.Listen("tcp", a)
				if err != nil {
					return fmt.Errorf("listener %d: %w", i, err)
				}
				closers = append(closers, ln.Close)
			}
		}
		// Dual-stack: IPv4 clients on an IPv6 socket.
		ds, err := net.Listen("tcp", "[::]:0")
		if err != nil {
			return err
		}
		closers = append(closers, ds.Close)
		dsPort := uint16(ds.Addr().(*net.TCPAddr).Port)
		for range 200 {
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", dsPort))
			if err != nil {
				return err
			}
			closers = append(closers, c.Close)
			s, err := ds.Accept()
			if err != nil {
				return err
			}
			closers = append(closers, s.Close)
		}
		both, a, b, err := oneDumpAndPerFamily()
		if err != nil {
			return err
		}
		if want := 2*perFamily + 1 + 2*200; len(a) != want {
			t.Errorf("one dump: %d sockets, want %d", len(a), want)
		}
		if len(slices.Compact(slices.Clone(a))) != len(a) {
			t.Error("one dump: a socket twice")
		}
		if !slices.Equal(a, b) {
			t.Errorf("one dump (%d sockets) and the dumps per family (%d) differ", len(a), len(b))
		}
		// The server sides of the IPv4 connections to the dual-stack
		// listener: IPv4 addresses (unmapped), the listener's port.
		served := 0
		for _, e := range both {
			if e.state == "01" && e.local.Port() == dsPort && e.local.Addr().Is4() && e.remote.Addr().Is4() {
				served++
			}
		}
		if served != 200 {
			t.Errorf("%d IPv4 connections served by the dual-stack listener, want 200", served)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
