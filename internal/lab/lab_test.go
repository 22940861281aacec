package lab

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run the namespace tests as root")
		}
		t.Skip("needs root for network namespaces")
	}
}

// testTopology makes the namespaces of a test, removed when it ends.
func testTopology(t *testing.T, prefix string, withBackend bool) *Topology {
	t.Helper()
	topo, err := NewTopology(prefix, withBackend)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	return topo
}

// Without any firewall every probe gets through: the lab itself works.
func TestTopologyWithoutFirewall(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	topo := testTopology(t, "labtest", true)
	var svc Services
	t.Cleanup(func() { _ = svc.Close() }) // closes sockets the test may have ended
	for _, ns := range []*NS{topo.Server, topo.Client, topo.Backend} {
		if err := svc.ServeAll(context.Background(), ns, []uint16{80}, []uint16{53}); err != nil {
			t.Fatal(err)
		}
	}
	var checks []Check
	for _, pair := range []struct {
		from *NS
		to   netip.Addr
	}{
		{topo.Client, ServerV4}, {topo.Client, ServerV6}, {topo.Server, ClientV4}, {topo.Server, ClientV6},
		{topo.Client, BackendV4}, {topo.Client, BackendV6}, {topo.Backend, ClientV6},
	} {
		for _, proto := range []string{"tcp", "udp", "icmp"} {
			checks = append(checks, Check{Name: pair.from.Name + " " + proto + " " + pair.to.String(), From: pair.from,
				Probe: Probe{Proto: proto, Dst: netip.AddrPortFrom(pair.to, map[string]uint16{"tcp": 80, "udp": 53}[proto])}, Expect: Open})
		}
	}
	checks = append(checks, Check{Name: "closed port", From: topo.Client, Probe: Probe{Proto: "tcp", Dst: netip.AddrPortFrom(ServerV6, 81)}, Expect: Refused})
	checks = append(checks, Check{Name: "alt source", From: topo.Client, Probe: Probe{Proto: "tcp", Src: ClientAlt[2], Dst: netip.AddrPortFrom(ServerV6, 80)}, Expect: Open})
	for _, r := range RunChecks(context.Background(), checks) {
		if !r.OK() {
			t.Errorf("%s: expected %s, observed %s (%v)", r.Name, r.Expect, r.Observed, r.Err)
		}
	}
}

// A UDP answer that comes after DropWait (its server's process was slow
// to run, as on a loaded machine) is still an open port where one was
// expected; a port that never answers stays a timeout.
func TestRunChecksSlowUDPAnswer(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	topo := testTopology(t, "labslow", false)
	var pc net.PacketConn
	if err := topo.Server.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", "[::]:5353")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			time.Sleep(DropWait + 300*time.Millisecond) // later than a first probe waits
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	// A port with a socket that never answers: the kernel keeps what it
	// receives, no ICMP unreachable comes back.
	var mute net.PacketConn
	if err := topo.Server.Do(func() error {
		var err error
		mute, err = net.ListenPacket("udp", "[::]:5354")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mute.Close() })
	res := RunChecks(context.Background(), []Check{
		{Name: "slow", From: topo.Client, Probe: Probe{Proto: "udp", Dst: netip.AddrPortFrom(ServerV4, 5353)}, Expect: Open},
		{Name: "mute", From: topo.Client, Probe: Probe{Proto: "udp", Dst: netip.AddrPortFrom(ServerV4, 5354)}, Expect: Open},
	})
	if res[0].Observed != Open || res[0].Err != nil {
		t.Errorf("slow answer: observed %s (%v), want open", res[0].Observed, res[0].Err)
	}
	if res[1].Observed != Timeout || res[1].Err != nil {
		t.Errorf("no answer: observed %s (%v), want timeout", res[1].Observed, res[1].Err)
	}
}
