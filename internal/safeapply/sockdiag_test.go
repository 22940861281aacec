package safeapply

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/moat-fw/moat/internal/lab"
)

// The kernel says which interface an accepted link-local connection runs
// over (sock_diag), on a host where every interface routes fe80::/64; an
// IPv4 connection is bound to none.
func TestSockDiagLinkLocal(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run this test as root")
		}
		t.Skip("needs root for network namespaces")
	}
	topo, err := lab.NewTopology("moatsd", true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = topo.Close() })
	out, err := topo.Server.Run(context.Background(), "ip", "-6", "-o", "addr", "show", "dev", "eth1", "scope", "link")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var ll netip.Addr
	if f := strings.Fields(string(out)); len(f) > 3 {
		ll = netip.MustParsePrefix(f[3]).Addr()
	}
	// The zone is the interface's index in the backend's namespace: Go
	// resolves a zone name through one table per process (refreshed once
	// a minute), which knows nothing of namespaces. Once any test has
	// filled it in another namespace (Accept below formats the peer's
	// zone, in the host's namespace), "%eth0" named the host's eth0
	// index: "network is unreachable", most runs after the first.
	var zone int
	if err := topo.Backend.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err == nil {
			zone = l.Attrs().Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := topo.Server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "[::]:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	inodes := map[string]string{} // inode → what it is
	for _, c := range []struct {
		from *lab.NS
		dst  string
		name string
	}{
		{topo.Backend, fmt.Sprintf("[%s%%%d]:%d", ll, zone, port), "link-local via eth1"},
		{topo.Client, fmt.Sprintf("192.0.2.1:%d", port), "IPv4 via eth0"},
	} {
		conn, err := c.from.Dial(ctx, c.dst)
		if err != nil {
			t.Fatalf("dial %s: %v", c.dst, err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		acc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = acc.Close() })
		f, err := acc.(*net.TCPConn).File()
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
		inodes[fmt.Sprint(st.Ino)] = c.name
	}
	want := map[string]bool{}
	for in := range inodes {
		want[in] = true
	}
	var got map[string]string
	var neigh string
	peer := netip.MustParseAddr(backendLinkLocal(t, topo))
	if err := topo.Server.Do(func() error {
		var err error
		got, err = sockDiagIfaces(want)
		neigh = neighbourIface(peer)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for in, name := range inodes {
		wantIface := ""
		if strings.HasPrefix(name, "link-local") {
			wantIface = "eth1"
		}
		if got[in] != wantIface {
			t.Errorf("%s: interface %q, want %q", name, got[in], wantIface)
		}
	}
	if neigh != "eth1" {
		t.Errorf("neighbour table: %q, want eth1", neigh)
	}
}

// backendLinkLocal is the backend's link-local address on its eth0.
func backendLinkLocal(t *testing.T, topo *lab.Topology) string {
	out, err := topo.Backend.Run(context.Background(), "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	f := strings.Fields(string(out))
	if len(f) < 4 {
		t.Fatalf("no link-local address on the backend: %s", out)
	}
	return strings.Split(f[3], "/")[0]
}
