package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// nmapScan runs nmap in the client namespace from src against dst: a TCP
// SYN scan of the first 200 ports, fast, no host discovery.
func (e *env) nmapScan(src, dst netip.Addr) {
	e.t.Helper()
	if _, err := exec.LookPath("nmap"); err != nil {
		e.t.Fatal("nmap is not installed (scripts/setup.sh installs it)")
	}
	args := []string{"-n", "-Pn", "-sS", "-p", "1-200", "-T5", "--max-retries", "0", "--host-timeout", "20s", "-S", src.String(), "-e", "eth0"}
	if dst.Is6() {
		args = append(args, "-6")
	}
	args = append(args, dst.String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := e.topo.Client.Run(ctx, "nmap", args...); err != nil {
		e.t.Fatalf("nmap: %v\n%s", err, out)
	}
}

// connectScan is a scanner in Go: plain connections from src to many
// ports of dst, as a scanner without raw sockets would make them.
func (e *env) connectScan(src, dst netip.Addr, ports int) {
	e.t.Helper()
	var wg sync.WaitGroup
	for p := 1000; p < 1000+ports; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = e.topo.Client.Do(func() error {
				d := net.Dialer{Timeout: 300 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
				c, err := d.Dial("tcp", netip.AddrPortFrom(dst, uint16(p)).String())
				if err == nil {
					_ = c.Close() // nothing listens there; a connection would be a surprise, not an error
				}
				return nil
			})
		}()
	}
	wg.Wait()
}

// Port scans are banned in the kernel: nmap from the client gets banned
// (then even the allowed port is closed to it until the ban ends), a
// client using only the allowed port is never banned, an allowlisted
// scanner never; both backends, IPv4 and IPv6.
func TestPortscanBanned(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 80/tcp\nallowlist 192.0.2.4 2001:db8::4\nguard portscan ports 10 within 60s bantime 8s\n")

		// A client using only the allowed port, many times.
		for i := 0; i < 30; i++ {
			e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open")
		}
		var wg sync.WaitGroup
		for _, s := range []struct{ src, dst netip.Addr }{
			{netip.MustParseAddr("192.0.2.3"), lab.ServerV4},
			{netip.MustParseAddr("2001:db8::3"), lab.ServerV6},
			{netip.MustParseAddr("192.0.2.4"), lab.ServerV4}, // allowlisted
			{netip.MustParseAddr("2001:db8::4"), lab.ServerV6},
		} {
			wg.Add(1)
			go func() { defer wg.Done(); e.nmapScan(s.src, s.dst) }()
		}
		wg.Wait()
		bans := e.bans()
		for _, a := range []string{"192.0.2.3", "2001:db8::3"} {
			if ban, ok := bans[a]; !ok || ban.Reason != "portscan (kernel trap)" {
				t.Errorf("scanner %s not banned with the trap's reason: %+v", a, bans)
			}
		}
		for _, a := range []string{"192.0.2.2", "2001:db8::2", "192.0.2.4", "2001:db8::4"} {
			if _, ok := bans[a]; ok {
				t.Errorf("%s banned: %+v", a, bans)
			}
		}
		e.expect(false,
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout", // even the allowed port
			"client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client tcp 192.0.2.1:80 open",
			"client/192.0.2.4 tcp 192.0.2.1:80 open",
			"client/2001:db8::4 tcp [2001:db8::1]:80 open")
		// The ban ends by itself, in the kernel.
		waitFor(t, 15*time.Second, "the scanner's ban to end", func() bool {
			return e.probe("client/192.0.2.3 tcp 192.0.2.1:80") == lab.Open && e.probe("client/2001:db8::3 tcp [2001:db8::1]:80") == lab.Open
		})
		// A scanner without raw sockets (plain connects) is caught too.
		e.connectScan(netip.MustParseAddr("192.0.2.3"), lab.ServerV4, 20)
		if _, ok := e.bans()["192.0.2.3"]; !ok {
			t.Errorf("connect scan not banned")
		}
		e.mustMoat("check") // the kernel accepts the trap (iptables: on throwaway sets)
		st := e.mustMoat("show")
		if !strings.Contains(st, "portscan") {
			t.Errorf("show has no trap:\n%s", st)
		}
		// The trap's rules are what moat loaded: no drift reported.
		var rep struct {
			KernelChanged []string `json:"kernel_changed"`
		}
		out := e.mustMoat("status", "--json")
		if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.KernelChanged) != 0 {
			t.Errorf("status sees drift in the trap: %v\n%s", err, out)
		}
	})
}

// probe sends one probe ("HOST[/SRC] PROTO DST") and returns what it saw.
func (e *env) probe(spec string) lab.Outcome {
	e.t.Helper()
	c := e.parseProbe(spec + " open")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := lab.RunChecks(ctx, []lab.Check{c})
	return res[0].Observed
}

// The trap never bans the admin's live SSH session, even when it scans;
// both backends.
func TestPortscanSparesSession(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newSSHEnv(t, b)
		srv := e.startSSHD(22)
		e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
		sess := srv.login(lab.ServerV4)
		// Applied while the session is live: its address is protected.
		writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\nallow 80/tcp\nguard portscan ports 5 within 60s bantime 1h\n")
		if out := e.mustMoat("-v", "reload"); !strings.Contains(out, "sessions=1") {
			t.Errorf("reload did not see the session:\n%s", out)
		}
		e.nmapScan(lab.ClientV4, lab.ServerV4)
		if bans := e.bans(); len(bans) != 0 {
			t.Errorf("the admin's address was banned: %+v", bans)
		}
		if err := sess.alive(3 * time.Second); err != nil {
			t.Errorf("session cut: %v", err)
		}
		e.expect(false, "client tcp 192.0.2.1:80 open", "client/192.0.2.3 tcp 192.0.2.1:80 open")
		e.nmapScan(netip.MustParseAddr("192.0.2.3"), lab.ServerV4)
		if _, ok := e.bans()["192.0.2.3"]; !ok {
			t.Errorf("another scanner was not banned")
		}
	})
}
