package ruleset

import (
	"net/netip"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
)

func mustPolicy(t *testing.T, text string) *policy.Policy {
	t.Helper()
	svc := policy.ParseServices([]byte("ssh 22/tcp\nhttp 80/tcp\n"))
	p, err := policy.NewDocument("moat.conf", []byte(text)).Policy(svc)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func in(proto, src, dst string, dport uint16) Packet {
	return Packet{Hook: Input, InIface: "eth0", Proto: proto, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SPort: 40000, DPort: dport}
}

func TestEvaluate(t *testing.T) {
	rs := Compile(mustPolicy(t, `default deny incoming
deny from 203.0.113.7
deny from 203.0.113.0/28
deny from 2001:db8:bad::/48
allow from 203.0.113.5 to any port 22 proto tcp
deny from 203.0.113.5
allow 22/tcp
reject 113/tcp
limit 2222/tcp
allow in on eth1 to any port 80 proto tcp
allow proto icmp from 198.51.100.0/24
`))
	// ban4, ban6, login4, login6, the policy's, then protect4, protect6.
	if len(rs.Sets) != 8 || rs.Sets[4].Bans || rs.Sets[5].Bans || rs.Sets[4].Protect || !rs.Sets[6].Protect {
		t.Fatalf("want the 2 ban sets, the protected and login sets and 2 sets (v4, v6 of the first three denies), got %d", len(rs.Sets))
	}
	cases := []struct {
		p       Packet
		verdict Verdict
		origin  string
	}{
		{in("tcp", "203.0.113.7", "192.0.2.1", 22), Drop, "L2"},
		{in("tcp", "203.0.113.3", "192.0.2.1", 22), Drop, "L3"},
		{in("tcp", "2001:db8:bad::1", "2001:db8::1", 22), Drop, "L4"},
		{in("tcp", "203.0.113.5", "192.0.2.1", 22), Drop, "L3"}, // in 203.0.113.0/28
		{in("tcp", "198.51.100.9", "192.0.2.1", 22), Accept, "L7"},
		{in("udp", "198.51.100.9", "192.0.2.1", 22), Drop, "default:input"},
		{in("tcp", "198.51.100.9", "192.0.2.1", 113), Reject, "L8"},
		{in("tcp", "198.51.100.9", "192.0.2.1", 2222), Accept, "L9"},
		{in("tcp", "198.51.100.9", "192.0.2.1", 80), Drop, "default:input"},
		{in("icmp", "198.51.100.9", "192.0.2.1", 0), Accept, "L11"},
		{in("icmp", "192.0.2.9", "192.0.2.1", 0), Drop, "default:input"},
		{in("ipv6-icmp", "2001:db8::9", "2001:db8::1", 0), Drop, "default:input"},
	}
	for _, c := range cases {
		d, err := rs.Evaluate(c.p)
		if err != nil {
			t.Fatal(err)
		}
		if d.Verdict != c.verdict || d.Origin.ID != c.origin {
			t.Errorf("%s %v→%v:%d: got %s by %s, want %s by %s", c.p.Proto, c.p.Src, c.p.Dst, c.p.DPort, d.Verdict, d.Origin.ID, c.verdict, c.origin)
		}
	}
	p := in("tcp", "198.51.100.9", "192.0.2.1", 80)
	p.InIface = "eth1"
	if d, _ := rs.Evaluate(p); d.Verdict != Accept || d.Origin.ID != "L10" {
		t.Errorf("interface rule: %+v", d)
	}
	p.CTState = CTEstablished
	p.InIface = "eth0"
	if d, _ := rs.Evaluate(p); d.Verdict != Accept || d.Origin.ID != "builtin:established" {
		t.Errorf("established: %+v", d)
	}
	nd := Packet{Hook: Input, Proto: "ipv6-icmp", Src: netip.MustParseAddr("fe80::1"), Dst: netip.MustParseAddr("ff02::1"), ICMPType: 135, HasICMPType: true, HopLimit: 255}
	if d, _ := rs.Evaluate(nd); d.Verdict != Accept || d.Origin.ID != "builtin:ndp" {
		t.Errorf("neighbour solicitation: %+v", d)
	}
	nd.HopLimit = 64
	if d, _ := rs.Evaluate(nd); d.Verdict != Drop {
		t.Errorf("forged neighbour solicitation accepted: %+v", d)
	}
}

// A set may only merge neighbours: an allow between two denies keeps its
// place, so the address it allows is not swallowed by the later deny.
func TestSetsKeepOrder(t *testing.T) {
	rs := Compile(mustPolicy(t, `deny from 203.0.113.1
deny from 203.0.113.2
allow from 203.0.113.9
deny from 203.0.113.0/24
deny from 198.51.100.0/24
`))
	d, _ := rs.Evaluate(in("tcp", "203.0.113.9", "192.0.2.1", 22))
	if d.Verdict != Accept || d.Origin.ID != "L3" {
		t.Fatalf("got %+v", d)
	}
	d, _ = rs.Evaluate(in("tcp", "198.51.100.1", "192.0.2.1", 22))
	if d.Verdict != Drop || d.Origin.ID != "L5" {
		t.Fatalf("got %+v", d)
	}
	if got := rs.Sets[5].Prefixes(); len(got) != 2 {
		t.Fatalf("merged prefixes %v", got)
	}
}

func TestForwardLeftAloneByDefault(t *testing.T) {
	rs := Compile(mustPolicy(t, "allow 22/tcp\n"))
	if c := rs.Chain(Forward); len(c.Rules) != 0 || c.Default != Accept {
		t.Fatalf("forward chain filters without being asked: %+v", c)
	}
	rs = Compile(mustPolicy(t, "default deny routed\n"))
	if c := rs.Chain(Forward); len(c.Rules) == 0 || c.Default != Drop {
		t.Fatalf("routed default not compiled: %+v", c)
	}
}

func TestRateUnit(t *testing.T) {
	for _, c := range []struct {
		r    policy.Rate
		n    int
		unit string
	}{
		{policy.DefaultLimit, 10, "minute"},
		{policy.Rate{Count: 11, Seconds: 1, Burst: 10}, 10, "second"},
		{policy.Rate{Count: 4, Seconds: 3600, Burst: 3}, 3, "hour"},
		{policy.Rate{Count: 3, Seconds: 7, Burst: 2}, 24686, "day"},
	} {
		if n, u := RateUnit(c.r); n != c.n || u != c.unit {
			t.Errorf("%+v: got %d/%s want %d/%s", c.r, n, u, c.n, c.unit)
		}
	}
}
