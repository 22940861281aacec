package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// Re-applying is atomic: while the policy is applied 50 times, a denied
// port is never seen open and an established flow is never cut.
func TestReapplyIsAtomic(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		var svc lab.Services
		t.Cleanup(func() { _ = svc.Close() }) // also closes sockets the peers ended
		if err := svc.ServeEcho(e.topo.Server, 7000); err != nil {
			t.Fatal(err)
		}
		policies := []string{
			"default deny incoming\nallow 22/tcp\nallow 7000/tcp\n",
			"default deny incoming\ndeny from 203.0.113.0/24\ndeny from 198.51.100.0/24\nallow 7000/tcp\nallow 443/tcp\nallow 22/tcp comment 'changed'\n",
		}
		e.apply(policies[0])
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()

		flows := []string{"192.0.2.1:7000", "[2001:db8::1]:7000"}
		var conns []interface {
			Write([]byte) (int, error)
			Read([]byte) (int, error)
			SetDeadline(time.Time) error
			Close() error
		}
		for _, dst := range flows {
			c, err := e.topo.Client.Dial(ctx, dst)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = c.Close() }()
			conns = append(conns, c)
		}
		var wg sync.WaitGroup
		var failures sync.Map
		var exchanges, probes atomic.Int64
		stop := make(chan struct{})
		for i, c := range conns {
			buf := make([]byte, 8)
			repeatUntil(&wg, stop, func() bool {
				if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
					failures.Store(fmt.Sprintf("flow %s deadline", flows[i]), err)
					return false
				}
				if _, err := c.Write([]byte("ping")); err != nil {
					failures.Store(fmt.Sprintf("flow %s write", flows[i]), err)
					return false
				}
				if _, err := c.Read(buf); err != nil {
					failures.Store(fmt.Sprintf("flow %s read", flows[i]), err)
					return false
				}
				exchanges.Add(1)
				time.Sleep(5 * time.Millisecond)
				return true
			})
		}
		for _, dst := range []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:80"), netip.MustParseAddrPort("[2001:db8::1]:80")} {
			repeatUntil(&wg, stop, func() bool {
				out, err := e.topo.Client.Send(ctx, lab.Probe{Proto: "tcp", Dst: dst, Wait: 50 * time.Millisecond})
				probes.Add(1)
				if err != nil || out == lab.Open {
					failures.Store(fmt.Sprintf("denied port %s", dst), fmt.Sprintf("%s %v", out, err))
				}
				return true
			})
		}
		for i := 0; i < 50; i++ {
			if err := os.WriteFile(e.conf, []byte(policies[i%2]), 0o644); err != nil {
				t.Fatal(err)
			}
			e.mustMoat("enable")
		}
		close(stop)
		wg.Wait()
		failures.Range(func(k, v any) bool {
			t.Errorf("%s: %v", k, v)
			return true
		})
		if exchanges.Load() < 10 || probes.Load() < 10 {
			t.Errorf("too little traffic to judge: %d exchanges, %d probes", exchanges.Load(), probes.Load())
		}
		t.Logf("%d flow exchanges and %d denied-port probes during 50 re-applies", exchanges.Load(), probes.Load())
	})
}
