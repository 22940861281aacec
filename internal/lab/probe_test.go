package lab

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// spin burns CPU without a function call, so that with asynchronous
// preemption off (GODEBUG=asyncpreemptoff=1) nothing else runs on its P.
//
//go:noinline
func spin(n int) int {
	x := 0
	for i := 0; i < n; i++ {
		x += i ^ x
	}
	return x
}

var sink int

// A probe whose process gets no CPU for longer than its wait, while the
// answer comes back at once, is an open port, not a dropped packet. The
// parallel CI run on two shared cores starved test processes that long:
// net.Dial's deadline timer then ran before the goroutine the SYN-ACK had
// woken, and TestStateMachineKernel read an open port as a drop (once on
// each backend). The child process here is that machine in small: one P
// (GOMAXPROCS=1), held for 800ms by a loop that cannot be preempted,
// right after the probe sent its SYN to a listener on loopback.
func TestProbeStarved(t *testing.T) {
	if os.Getenv("MOAT_LAB_STARVED_CHILD") == "1" {
		starvedChild()
		return
	}
	t.Parallel()
	for i := 0; i < 3; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestProbeStarved$", "-test.count=1")
		cmd.Env = append(os.Environ(), "MOAT_LAB_STARVED_CHILD=1", "GOMAXPROCS=1", "GODEBUG=asyncpreemptoff=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "outcome: open\n") {
			t.Fatalf("a starved probe of an open port: %s", out)
		}
	}
}

func starvedChild() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer func() { _ = ln.Close() }()
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	// How many turns of the loop take 800ms here and now.
	start := time.Now()
	sink += spin(1 << 24)
	n := int(float64(1<<24) * float64(800*time.Millisecond) / float64(max(time.Since(start), time.Microsecond)))
	res := make(chan string, 1)
	go func() {
		out, err := probeTCP(context.Background(), Probe{Proto: "tcp", Dst: netip.AddrPortFrom(dst.Addr(), dst.Port()), Wait: 200 * time.Millisecond})
		if err != nil {
			res <- "error " + err.Error()
			return
		}
		res <- string(out)
	}()
	runtime.Gosched() // the probe sends its SYN, then waits
	sink += spin(n)
	println("outcome: " + <-res)
}

// TestSockaddrZone: a link-local destination's zone is a device's name or
// its index, as net.Dial takes it.
func TestSockaddrZone(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skip("no lo:", err)
	}
	for _, zone := range []string{"lo", strconv.Itoa(lo.Index)} {
		sa, ok := sockaddr(netip.MustParseAddrPort("[fe80::1%" + zone + "]:22")).(*unix.SockaddrInet6)
		if !ok || sa.ZoneId != uint32(lo.Index) || sa.Port != 22 {
			t.Errorf("zone %q: %+v, want zone %d", zone, sa, lo.Index)
		}
	}
}

// TestProbeHonoursCancel: a TCP probe whose SYN goes unanswered (sent
// over a veth to a MAC address nobody has) stops when its context is
// cancelled, not only at the end of its wait.
func TestProbeHonoursCancel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	t.Parallel()
	ns, err := NewNS(UniqueName("moatcancel"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Close() })
	for _, args := range [][]string{
		{"link", "add", "cx0", "type", "veth", "peer", "name", "cx1"},
		{"addr", "add", "192.0.2.1/24", "dev", "cx0"},
		{"link", "set", "cx0", "up"},
		{"link", "set", "cx1", "up"},
		{"neigh", "add", "192.0.2.2", "lladdr", "02:00:00:00:00:02", "dev", "cx0", "nud", "permanent"},
	} {
		if out, err := ns.Run(context.Background(), "ip", args...); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() {
		_, err := ns.Send(ctx, Probe{Proto: "tcp", Dst: netip.MustParseAddrPort("192.0.2.2:80"), Wait: time.Minute})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), context.Canceled.Error()) {
			t.Errorf("a cancelled probe returned %v, want the cancellation", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a probe cancelled after 100ms still waits after 20s (its wait is a minute)")
	}
}

// Probes from one fixed source port, one after another, while other
// goroutines of the process start programs, as the parallel e2e tests do
// (moat, nft, ip). fork copies every open descriptor into the child until
// it execs: a probe's socket closed meanwhile stayed bound in the child,
// and the next probe's bind failed with EADDRINUSE (TestBuiltinsBehindGates
// in the parallel CI run; here most probes failed before the fix). TCP:
// an answered probe closed with a FIN left TIME_WAIT behind it, and the
// next one from the same port failed to bind.
func TestProbeFixedPortWhileForking(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	topo := testTopology(t, "labfork", false)
	var svc Services
	t.Cleanup(func() { _ = svc.Close() })
	if err := svc.ServeAll(context.Background(), topo.Server, []uint16{80}, []uint16{53}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	const forkers = 4
	for i := 0; i < forkers; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := exec.Command("true").Run(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	defer func() {
		close(stop)
		for i := 0; i < forkers; i++ {
			<-done
		}
	}()
	for _, p := range []Probe{
		{Proto: "udp", Src: ClientV4, SPort: 67, Dst: netip.AddrPortFrom(ServerV4, 53)},
		{Proto: "udp", Src: ClientV6, SPort: 547, Dst: netip.AddrPortFrom(ServerV6, 53)},
		{Proto: "tcp", Src: ClientV4, SPort: 1500, Dst: netip.AddrPortFrom(ServerV4, 80)},
		{Proto: "tcp", Src: ClientV6, SPort: 1500, Dst: netip.AddrPortFrom(ServerV6, 80)},
	} {
		for i := 0; i < 100; i++ {
			got, err := topo.Client.Send(context.Background(), p)
			if err != nil {
				t.Fatalf("%s from port %d, probe %d: %v", p, p.SPort, i, err)
			}
			if got != Open {
				t.Fatalf("%s from port %d, probe %d: %s, want open", p, p.SPort, i, got)
			}
		}
	}
}
