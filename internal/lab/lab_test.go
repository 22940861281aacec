package lab

import (
	"context"
	"net/netip"
	"os"
	"testing"
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

// Without any firewall every probe gets through: the lab itself works.
func TestTopologyWithoutFirewall(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	topo, err := NewTopology("labtest", true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
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
