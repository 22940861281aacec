package e2e

import (
	"context"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/lab"
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
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, "lo")
			}); err != nil {
				return err
			}
			return serr
		}}
		listenIn(t, e.topo.Server, lc, "tcp 0.0.0.0:8081", "tcp [::]:8082", "udp 0.0.0.0:8083")
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
		// The table shows the device the socket is bound to.
		if out, _ := e.moat("audit"); !strings.Contains(out, "::%lo") {
			t.Errorf("the table does not show the device:\n%s", out)
		}
		// Nothing outside listens on them: the rules allow ports in vain.
		unused := map[string]bool{}
		for _, u := range a.UnusedAllows {
			unused[u.Proto+" "+u.Ports] = true
		}
		if !unused["tcp 8081:8083"] || !unused["udp 8083"] {
			t.Errorf("unused allows %+v, want tcp 8081:8083 and udp 8083 (only sockets bound to lo)", a.UnusedAllows)
		}
		e.checkAudit(a, nil)
	})
}

// Sockets bound to one address: a secondary address of eth0, an address
// of another interface, 127.0.0.2, ::1, an IPv6 socket on :: with
// IPV6_V6ONLY (IPv6 only). Each is judged at its address and probed there with real packets.
func TestAuditBoundAddresses(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		e.run("server", "ip", "addr", "add", "192.0.2.9/24", "dev", "eth0")
		e.run("server", "ip", "addr", "add", "2001:db8::9/64", "dev", "eth0", "nodad")
		e.run("server", "ip", "link", "add", "adv0", "type", "veth", "peer", "name", "adv1")
		e.run("server", "ip", "link", "set", "adv0", "up")
		e.run("server", "ip", "addr", "add", "198.51.100.1/24", "dev", "adv0")
		e.run("client", "ip", "route", "add", "198.51.100.0/24", "via", lab.ServerV4.String())
		v6only := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
			}); err != nil {
				return err
			}
			return serr
		}}
		listenIn(t, e.topo.Server, net.ListenConfig{}, "tcp4 192.0.2.9:8090", "tcp6 [2001:db8::9]:8090",
			"tcp4 198.51.100.1:8091", "tcp4 127.0.0.2:8092", "tcp6 [::1]:8092")
		listenIn(t, e.topo.Server, v6only, "tcp6 [::]:8093")
		e.apply("default deny incoming\nallow 8090:8093/tcp\n")
		a, _ := e.audit()
		got := map[string]string{}
		for _, f := range a.Sockets {
			if f.Port >= 8090 && f.Port <= 8093 {
				got[f.Family+" "+f.Address+" "+strconv.Itoa(int(f.Port))] = f.Status
			}
		}
		want := map[string]string{
			"ipv4 192.0.2.9 8090": "open", "ipv6 2001:db8::9 8090": "open", "ipv4 198.51.100.1 8091": "open",
			"ipv4 127.0.0.2 8092": "local-only", "ipv6 ::1 8092": "local-only", "ipv6 :: 8093": "open",
		}
		if !maps.Equal(got, want) {
			t.Errorf("audit %v, want %v", got, want)
		}
		e.checkAudit(a, nil)
		// The IPV6_V6ONLY socket takes no IPv4.
		e.expect(false, "client tcp 192.0.2.1:8093 refused")
	})
}

// Rate limits, interfaces, forwarding rules and a rejecting default:
// 'limit' is open (rate limited), 'allow in on eth0' open to any on
// eth0 when another interface exists, 'allow in on adv0' not reachable
// from the client (on eth0), a 'route' rule opens nothing to the host.
func TestAuditRuleKinds(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		e.run("server", "ip", "link", "add", "adv0", "type", "veth", "peer", "name", "adv1")
		e.run("server", "ip", "link", "set", "adv0", "up")
		for p := 8100; p <= 8104; p++ {
			listenIn(t, e.topo.Server, net.ListenConfig{}, "tcp :"+strconv.Itoa(p))
		}
		e.apply(`default reject incoming
limit 8100/tcp
allow in on eth0 to any port 8101 proto tcp
allow in on adv0 to any port 8102 proto tcp
route allow proto tcp from any to any port 8103
allow in on eth0 from 192.0.2.3 to any port 8104 proto tcp
allow in on eth0 from 2001:db8::3 to any port 8104 proto tcp
`)
		a, _ := e.audit()
		want := map[string]string{"8100": "open", "8101": "open-some", "8102": "open-some", "8103": "closed", "8104": "open-some"}
		for _, f := range a.Sockets {
			if w, ok := want[strconv.Itoa(int(f.Port))]; ok && f.Status != w {
				t.Errorf("%s tcp/%d: %s (from %v), want %s", f.Family, f.Port, f.Status, f.From, w)
			}
		}
		e.checkAudit(a, nil)
	})
}

// Fail-closed (a restore that found its saved state corrupt): the audit
// judges the fail-closed ruleset (only SSH open), not the policy file,
// and says so; an allow made while fail-closed opens nothing yet.
func TestAuditFailClosed(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		e.apply(engineBase + "allow 80/tcp\n")
		writeFile(t, filepath.Join(e.stateDir(), "saved.json"), "{not json")
		boot := newEnv(t, backend, false)
		boot.conf, boot.dir = e.conf, e.dir
		if out, err := boot.moat("restore"); err == nil || !strings.Contains(out, "fail-closed") {
			t.Fatalf("restore: %v\n%s", err, out)
		}
		_, _ = boot.moat("allow", "443/tcp")
		a, _ := boot.audit()
		warned := false
		for _, w := range a.Warnings {
			warned = warned || strings.Contains(w, "FAIL-CLOSED")
		}
		if !a.Active || !warned {
			t.Errorf("fail-closed: active %v, warnings %q", a.Active, a.Warnings)
		}
		for _, f := range a.Sockets {
			if (f.Port == 80 || f.Port == 443) && f.Proto == "tcp" && f.Status != "closed" {
				t.Errorf("fail-closed: %s tcp/%d %s, want closed", f.Family, f.Port, f.Status)
			}
		}
		boot.checkAudit(a, nil)
	})
}

// A socket on the server's link-local address (zone eth0) is judged on
// eth0 (sock_diag gives the zone as the bound device) and reached from
// the client on the link, IPv6, TCP.
func TestAuditLinkLocal(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		var ll netip.Addr
		for _, f := range strings.Fields(e.run("server", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link")) {
			if p, err := netip.ParsePrefix(f); err == nil {
				ll = p.Addr()
			}
		}
		if !ll.IsLinkLocalUnicast() {
			t.Fatal("no link-local address on the server's eth0")
		}
		listenIn(t, e.topo.Server, net.ListenConfig{}, "tcp6 "+netip.AddrPortFrom(ll.WithZone("eth0"), 8110).String())
		for _, c := range []struct {
			policy string
			status string
			reach  bool
		}{
			{"default deny incoming\nallow 8110/tcp\n", "open", true},
			{"default deny incoming\nallow in on adv9 to any port 8110 proto tcp\n", "closed", false},
		} {
			e.apply(c.policy)
			a, _ := e.audit()
			n := 0
			for _, f := range a.Sockets {
				if f.Port == 8110 {
					n++
					if f.Status != c.status || f.Address != ll.String() {
						t.Errorf("%q: %+v, want %s at %s", c.policy, f, c.status, ll)
					}
				}
			}
			if n != 1 {
				t.Errorf("%q: %d findings for port 8110, want 1", c.policy, n)
			}
			dst := netip.AddrPortFrom(ll.WithZone("eth0"), 8110)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			r := lab.RunChecks(ctx, []lab.Check{{Name: "link-local", From: e.topo.Client,
				Probe: lab.Probe{Proto: "tcp", Dst: dst}, Expect: lab.Open}})[0]
			cancel()
			if r.Err != nil || (r.Observed == lab.Open) != c.reach {
				t.Errorf("%q: tcp %s observed %s (%v), want reachable %v", c.policy, dst, r.Observed, r.Err, c.reach)
			}
		}
	})
}

// The built-in DHCP rule accepts UDP from source port 67 to port 68 from
// anyone: a DHCP client's socket on 0.0.0.0:68 is open to that source
// port (a packet from another port is dropped), not closed.
func TestAuditSourcePort(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		var closers []func() error
		t.Cleanup(func() {
			for _, c := range closers {
				_ = c()
			}
		})
		if err := e.topo.Server.Do(func() error {
			u, err := net.ListenPacket("udp4", "0.0.0.0:68")
			if err != nil {
				return err
			}
			closers = append(closers, u.Close)
			go func() { // echo, so a probe sees it reached
				buf := make([]byte, 1500)
				for {
					n, from, err := u.ReadFrom(buf)
					if err != nil {
						return
					}
					_, _ = u.WriteTo(buf[:n], from)
				}
			}()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		e.apply("default deny incoming\n")
		a, code := e.audit()
		var f *auditFinding
		for i := range a.Sockets {
			if a.Sockets[i].Port == 68 {
				f = &a.Sockets[i]
			}
		}
		if f == nil || f.Status != "open-some" || !slices.Equal(f.From, []string{"any from port 67"}) || f.Unexplained || code != 0 {
			t.Errorf("udp/68: %+v (exit %d), want open-some from any from port 67, explained by the built-in DHCP rule (exit 0)", f, code)
		}
		dst := netip.AddrPortFrom(lab.ServerV4, 68)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, r := range lab.RunChecks(ctx, []lab.Check{
			{Name: "from port 67", From: e.topo.Client, Probe: lab.Probe{Proto: "udp", Dst: dst, SPort: 67}, Expect: lab.Open},
			{Name: "from port 50000", From: e.topo.Client, Probe: lab.Probe{Proto: "udp", Dst: dst, SPort: 50000}},
		}) {
			if r.Err != nil || (r.Observed == lab.Open) != (r.Expect == lab.Open) {
				t.Errorf("udp %s %s: observed %s (%v)", dst, r.Name, r.Observed, r.Err)
			}
		}
		e.checkAudit(a, nil)
	})
}

// A deny for a narrower network before an allow from a wider one that
// holds the first address of the wider: the rest of the wider network
// still gets through, so the port is open to some sources, not closed.
func TestAuditNarrowDenyFirst(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		e.run("client", "ip", "addr", "add", "192.0.2.100/32", "dev", "eth0")
		e.run("client", "ip", "addr", "add", "2001:db8::100/128", "dev", "eth0", "nodad")
		listenIn(t, e.topo.Server, net.ListenConfig{}, "tcp :8120")
		e.apply(`default deny incoming
deny from 192.0.2.0/28 to any port 8120 proto tcp
deny from 2001:db8::/120 to any port 8120 proto tcp
allow from 192.0.2.0/24 to any port 8120 proto tcp
allow from 2001:db8::/64 to any port 8120 proto tcp
`)
		a, _ := e.audit()
		for _, f := range a.Sockets {
			if f.Port == 8120 && f.Status != "open-some" {
				t.Errorf("%s tcp/8120: %s, want open-some", f.Family, f.Status)
			}
		}
		var checks []lab.Check
		for _, c := range []struct {
			src, dst netip.Addr
			reach    bool
		}{
			{netip.MustParseAddr("192.0.2.100"), lab.ServerV4, true}, {lab.ClientV4, lab.ServerV4, false},
			{netip.MustParseAddr("2001:db8::100"), lab.ServerV6, true}, {lab.ClientV6, lab.ServerV6, false},
		} {
			checks = append(checks, lab.Check{Name: c.src.String(), From: e.topo.Client,
				Probe:  lab.Probe{Proto: "tcp", Src: c.src, Dst: netip.AddrPortFrom(c.dst, 8120)},
				Expect: map[bool]lab.Outcome{true: lab.Open, false: ""}[c.reach]})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, r := range lab.RunChecks(ctx, checks) {
			if r.Err != nil || (r.Observed == lab.Open) != (r.Expect == lab.Open) {
				t.Errorf("tcp/8120 from %s: observed %s (%v)", r.Name, r.Observed, r.Err)
			}
		}
	})
}

// moat's rules removed from the kernel behind its back (nft flush
// ruleset, iptables -F): what the audit calls closed must not be
// reachable, or it must say it cannot tell.
func TestAuditRulesFlushed(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		e.apply("default deny incoming\nallow 22/tcp\n")
		if backend == "nftables" {
			e.run("server", "nft", "flush", "ruleset")
		} else {
			for _, c := range []string{"iptables", "ip6tables"} {
				e.run("server", c, "-F")
				e.run("server", c, "-X")
				e.run("server", c, "-P", "INPUT", "ACCEPT")
			}
		}
		a, code := e.audit()
		t.Logf("exit %d, active %v, warnings %q", code, a.Active, a.Warnings)
		e.checkAudit(a, nil)
	})
}

// A rule inserted by hand into moat's own input chain accepts a port
// the policy closes: the audit, which judges what moat applied, must not
// exit 0 as if all were well (exit 2: it cannot tell).
func TestAuditTampered(t *testing.T) {
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	e.apply("default deny incoming\nallow 22/tcp\n")
	table := ""
	for _, l := range strings.Split(e.run("server", "nft", "list", "tables"), "\n") {
		if f := strings.Fields(l); len(f) == 3 && strings.Contains(f[2], "moat") {
			table = f[2]
		}
	}
	e.run("server", "nft", "insert", "rule", "inet", table, "input", "tcp", "dport", "80", "accept")
	a, code := e.audit()
	warned := false
	for _, w := range a.Warnings {
		warned = warned || strings.Contains(w, "changed outside moat")
	}
	if code != 2 || !warned {
		t.Errorf("tampered: exit %d, warnings %q; want exit 2 and the change named", code, a.Warnings)
	}
	// What the warning is about: the port it judges closed is open.
	e.expect(false, "client tcp 192.0.2.1:80 open")
}

// The audit judges the blocklists moat loaded into the kernel, not the
// list files as they are now: a list file changed after the apply still
// drops its old networks until 'moat blocklist update' or 'moat reload'.
func TestAuditLoadedBlocklist(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		list := filepath.Join(e.dir, "bad.list")
		if err := os.WriteFile(list, []byte("192.0.2.0/24\n2001:db8::/64\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		e.apply("blocklist bad file " + list + "\ndefault deny incoming\nallow from 192.0.2.0/24 to any port 443 proto tcp\nallow from 2001:db8::/64 to any port 443 proto tcp\n")
		if err := os.WriteFile(list, []byte("198.51.100.0/24\n2001:db8:1::/64\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		a, _ := e.audit()
		for _, f := range a.Sockets {
			if f.Proto == "tcp" && f.Port == 443 && f.Status != "closed" {
				t.Errorf("%s tcp/443: %s (from %v), want closed (the loaded list drops the only sources allowed)", f.Family, f.Status, f.From)
			}
		}
		e.checkAudit(a, nil)
	})
}

// A service address on lo (an anycast or load balancer address routed to
// the host): a rule 'to' it opens a wildcard socket to packets for it.
func TestAuditAddressOnLoopback(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		e.run("server", "ip", "addr", "add", "198.51.100.5/32", "dev", "lo")
		e.run("client", "ip", "route", "add", "198.51.100.5/32", "via", lab.ServerV4.String())
		listenIn(t, e.topo.Server, net.ListenConfig{}, "tcp4 0.0.0.0:8130")
		e.apply("default deny incoming\nallow proto tcp from any to 198.51.100.5 port 8130\n")
		a, _ := e.audit()
		for _, f := range a.Sockets {
			if f.Port == 8130 && f.Status != "open" {
				t.Errorf("tcp/8130: %s, want open (at 198.51.100.5)", f.Status)
			}
		}
		e.expect(false, "client tcp 198.51.100.5:8130 open", "client tcp 192.0.2.1:8130 timeout")
	})
}
