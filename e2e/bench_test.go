package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// denyRules writes n deny rules for IPv6 networks the probes never use
// (2001:db8:ffff:N::/64). Address-only rules compile to a set; with a port,
// each rule stays a rule of its own, walked one by one: the linear variant.
func denyRules(n int, withPort bool) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if withPort {
			fmt.Fprintf(&b, "deny from 2001:db8:ffff:%x::/64 to any port 9 proto tcp\n", i)
		} else {
			fmt.Fprintf(&b, "deny from 2001:db8:ffff:%x::/64\n", i)
		}
	}
	return b.String()
}

// BenchmarkNewConnections measures what a new TCP connection costs through
// moat's rules, in the kernel, from the client namespace to the server:
// with no deny rules (the baseline, measured in the same run), with 10,000
// address-only deny rules (compiled to sets), and with 10,000 deny rules
// that name a port (each a rule of its own, walked one by one). It reports
// ns per connection and the ratio to the baseline; run it with
//
//	go test -run XXX -bench NewConnections -benchtime 3000x ./e2e/
func BenchmarkNewConnections(b *testing.B) {
	const n = 10000
	variants := []struct {
		name   string
		policy string
	}{
		{"baseline", ""},
		{"sets-10k", denyRules(n, false)},
		{"linear-10k", denyRules(n, true)},
	}
	for _, backend := range backends {
		baseline := 0.0
		for _, v := range variants {
			b.Run(backend+"/"+v.name, func(b *testing.B) {
				e := newBenchEnv(b, backend)
				e.apply("default deny incoming\n" + v.policy + "allow 22/tcp\n")
				ctx := context.Background()
				dst := netip.MustParseAddrPort("[2001:db8::1]:22")
				// Warm up: neighbour entries, conntrack, caches.
				for i := 0; i < 50; i++ {
					connect(b, ctx, e.topo.Client, dst)
				}
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					connect(b, ctx, e.topo.Client, dst)
				}
				per := float64(time.Since(start).Nanoseconds()) / float64(b.N)
				b.ReportMetric(per, "ns/conn")
				if v.name == "baseline" {
					baseline = per
				}
				if baseline > 0 {
					b.ReportMetric(per/baseline, "x-baseline")
				}
			})
		}
	}
}

func connect(b *testing.B, ctx context.Context, ns *lab.NS, dst netip.AddrPort) {
	c, err := ns.Dial(ctx, dst.String())
	if err != nil {
		b.Fatalf("connect %s: %v", dst, err)
	}
	if err := c.Close(); err != nil {
		b.Fatal(err)
	}
}

// newBenchEnv is newEnv for benchmarks (testing.TB has no Parallel).
func newBenchEnv(b *testing.B, backend string) *env {
	b.Helper()
	topo, err := lab.NewTopology("moatbench", false)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := topo.Close(); err != nil {
			b.Error(err)
		}
	})
	svc := &lab.Services{}
	b.Cleanup(func() { _ = svc.Close() }) // also closes sockets the peers ended
	if err := svc.ServeTCP(topo.Server, 22); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	return &env{t: b, topo: topo, dir: dir, conf: dir + "/moat.conf", backend: backend}
}
