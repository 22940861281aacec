package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"

	"github.com/moat-fw/moat/internal/lab"
)

// TestBuiltinsBehindGates: the built-ins that only DHCP, DHCPv6, ICMP,
// ICMPv6 and MLD packets can match (moved after the policy's rules they
// cannot meet, and on nftables behind one gate rule each in a chain of
// their own) accept what they accepted, no more, still before the
// policy's rules that could match their packets, and a packet the gated
// chain does not decide goes on to the policy's rules.
// Real packets, both backends, IPv4 and IPv6; the built-ins' counters
// count them.
func TestBuiltinsBehindGates(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		svc := &lab.Services{}
		t.Cleanup(func() { _ = svc.Close() })
		for _, p := range []uint16{68, 546} {
			if err := svc.ServeUDP(e.topo.Server, p); err != nil {
				t.Fatal(err)
			}
		}
		// The denies of the DHCP ports come after the built-ins in
		// ufw's order: the built-ins must stop before them, where
		// allow 22/tcp lets them pass.
		e.apply("default deny incoming\nallow 22/tcp\ndeny 68/udp\ndeny 546/udp\nallow 53/udp\n")
		ctx := context.Background()
		probe := func(src netip.Addr, sport uint16, dst netip.AddrPort, want lab.Outcome) {
			t.Helper()
			got, err := e.topo.Client.Send(ctx, lab.Probe{Proto: "udp", Src: src, SPort: sport, Dst: dst})
			if err != nil {
				t.Fatalf("udp %s:%d → %s: %v", src, sport, dst, err)
			}
			if got != want {
				t.Errorf("udp %s:%d → %s: %s, want %s", src, sport, dst, got, want)
			}
		}
		v4 := func(p uint16) netip.AddrPort { return netip.AddrPortFrom(lab.ServerV4, p) }
		v6 := func(p uint16) netip.AddrPort { return netip.AddrPortFrom(lab.ServerV6, p) }
		// DHCP: server port 67 to client port 68 only.
		probe(lab.ClientV4, 67, v4(68), lab.Open)
		probe(lab.ClientV4, 66, v4(68), lab.Timeout)
		probe(lab.ClientV4, 67, v4(69), lab.Timeout)
		// A packet the gate lets in but no built-in takes goes on to
		// the policy: allow 53/udp.
		probe(lab.ClientV4, 67, v4(53), lab.Open)
		probe(lab.ClientV6, 547, v6(53), lab.Open)
		// DHCPv6: port 547 to 546, from a link-local address only.
		probe(lab.ClientV6, 547, v6(546), lab.Timeout)
		ll := linkLocal(t, e.topo.Client, "eth0").WithZone("eth0")
		if got := udpFromLinkLocal(t, e.topo.Client, ll, 547, v6(546)); got != lab.Open {
			t.Errorf("udp [%s]:547 → %s: %s, want open", ll, v6(546), got)
		}
		if got := udpFromLinkLocal(t, e.topo.Client, ll, 548, v6(546)); got != lab.Timeout {
			t.Errorf("udp [%s]:548 → %s: %s, want timeout", ll, v6(546), got)
		}
		// ICMP that no built-in takes (echo) falls through to the
		// default drop.
		e.expect(false, "client icmp 192.0.2.1 timeout", "client icmp 2001:db8::1 timeout")
		// MLD from a link-local source is accepted (counted), from a
		// global one is not.
		before := e.builtinPackets("builtin:mld")
		sendMLDQuery(t, e.topo.Client, ll)
		if n := e.builtinPackets("builtin:mld"); n <= before {
			t.Errorf("builtin:mld counted %d packets after an MLD query from %s, %d before", n, ll, before)
		}
		for id, min := range map[string]uint64{"builtin:dhcp": 1, "builtin:dhcpv6": 1} {
			if n := e.builtinPackets(id); n < min {
				t.Errorf("%s counted %d packets, want at least %d", id, n, min)
			}
		}
		if out := e.mustMoat("status"); !strings.Contains(out, "Status: active") || strings.Contains(out, "changed outside moat") {
			t.Errorf("status after the probes:\n%s", out)
		}
		if b != "nftables" {
			return
		}
		// A rule deleted by hand from a gated chain is drift, and a
		// reload puts it back.
		for _, line := range strings.Split(e.run("server", "nft", "-a", "list", "chain", "inet", "moat", "input_icmp"), "\n") {
			if _, h, ok := strings.Cut(line, `comment "builtin:mld" # handle `); ok {
				e.run("server", "nft", "delete", "rule", "inet", "moat", "input_icmp", "handle", strings.TrimSpace(h))
			}
		}
		if out := e.mustMoat("status"); !strings.Contains(out, "chain input_icmp lacks 1 rule moat loaded: builtin:mld") {
			t.Errorf("status after a hand deletion in input_icmp:\n%s", out)
		}
		e.mustMoat("reload")
		e.expectStatusClean("status after reload")
		sendMLDQuery(t, e.topo.Client, ll)
		if n := e.builtinPackets("builtin:mld"); n == 0 {
			t.Errorf("builtin:mld counted nothing after reload and an MLD query")
		}
	})
}

// builtinPackets is a built-in's packet count in 'moat status --json'.
func (e *env) builtinPackets(id string) uint64 {
	e.t.Helper()
	builtins, out := e.builtinCounters()
	for _, b := range builtins {
		if b.ID == id {
			return b.Packets
		}
	}
	e.t.Fatalf("no built-in %s in status:\n%s", id, out)
	return 0
}

// builtinCounter is a built-in's counter in 'moat status --json'.
type builtinCounter struct {
	Chain   string `json:"chain"`
	ID      string `json:"id"`
	Packets uint64 `json:"packets"`
}

// builtinCounters are the built-ins' counters in 'moat status --json',
// and that output.
func (e *env) builtinCounters() ([]builtinCounter, string) {
	e.t.Helper()
	var st struct {
		Builtins []builtinCounter `json:"builtins"`
	}
	out := e.mustMoat("status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		e.t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st.Builtins, out
}

// preroutingPackets are the packet counts of the built-ins in the
// prerouting chain (the drops before conntrack) by ID, and the output of
// 'moat status --json' they come from.
func (e *env) preroutingPackets() (map[string]uint64, string) {
	e.t.Helper()
	builtins, out := e.builtinCounters()
	seen := map[string]uint64{}
	for _, b := range builtins {
		if b.Chain == "prerouting" {
			seen[b.ID] += b.Packets
		}
	}
	return seen, out
}

// udpFromLinkLocal sends one datagram from a link-local address and port
// to dst and says whether the echo came back.
func udpFromLinkLocal(t *testing.T, ns *lab.NS, src netip.Addr, sport uint16, dst netip.AddrPort) lab.Outcome {
	t.Helper()
	// The port is fixed: no child process may keep a copy of the socket
	// past its close (lab.HoldForks). Not lab's probe: that connects,
	// and the echo comes back from the server's link-local address.
	defer lab.HoldForks()()
	out := lab.Timeout
	err := ns.Do(func() error {
		c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: src.AsSlice(), Port: int(sport), Zone: src.Zone()})
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }() // a datagram socket: nothing to flush
		if _, err := c.WriteToUDP([]byte("dhcpv6"), net.UDPAddrFromAddrPort(dst)); err != nil {
			return err
		}
		if err := c.SetReadDeadline(time.Now().Add(lab.DropWait)); err != nil {
			return err
		}
		buf := make([]byte, 64)
		if _, _, err := c.ReadFromUDP(buf); err == nil {
			out = lab.Open
		} else if !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("udp [%s]:%d → %s: %v", src, sport, dst, err)
	}
	return out
}

// sendMLDQuery sends an MLD general query (ICMPv6 type 130) from src to
// all nodes (ff02::1) on src's link.
func sendMLDQuery(t *testing.T, ns *lab.NS, src netip.Addr) {
	t.Helper()
	err := ns.Do(func() error {
		c, err := icmp.ListenPacket("ip6:ipv6-icmp", src.String())
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }() // a datagram socket: nothing to flush
		if err := c.IPv6PacketConn().SetMulticastHopLimit(1); err != nil {
			return err
		}
		// Maximum response delay, reserved, multicast address (:: for a
		// general query).
		body := &icmp.RawBody{Data: make([]byte, 2+2+16)}
		msg, err := (&icmp.Message{Type: ipv6.ICMPTypeMulticastListenerQuery, Body: body}).Marshal(nil)
		if err != nil {
			return err
		}
		_, err = c.WriteTo(msg, &net.IPAddr{IP: net.ParseIP("ff02::1"), Zone: src.Zone()})
		return err
	})
	if err != nil {
		t.Fatalf("MLD query from %s: %v", src, err)
	}
}
