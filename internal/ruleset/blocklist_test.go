package ruleset

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
)

func TestBlocklistCompile(t *testing.T) {
	p := mustPolicy(t, `default deny incoming
allowlist 198.51.100.64/26
allow 22/tcp
blocklist drop url https://lists.example/drop.txt
blocklist local file /etc/moat/local.netset
`)
	p.Blocklists[0].Prefixes = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("2001:db8:bad::/48")}
	p.Blocklists[1].Prefixes = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	rs := Compile(p)
	drop4 := rs.Set("bl4_drop")
	if drop4 == nil || drop4.Blocklist != "drop" || rs.Set("bl6_drop") == nil || rs.Set("bl4_local") == nil || rs.Set("bl6_local") == nil {
		t.Fatalf("sets: %+v", rs.Sets)
	}
	// The allowlist wins over every list and loopback is never blocked.
	want := []string{"198.51.100.0/26", "198.51.100.128/25"}
	got := drop4.Prefixes()
	if len(got) != len(want) || got[0].String() != want[0] || got[1].String() != want[1] {
		t.Errorf("bl4_drop = %v, want %v", got, want)
	}
	// The drops are in the chain before conntrack: IPv4 (ban, lists),
	// neighbour discovery, IPv6 (ban, lists).
	pre := rs.Chain(Prerouting)
	var ids []string
	for _, r := range pre.Rules {
		ids = append(ids, r.Origin.ID)
	}
	wantIDs := []string{"builtin:ban", "blocklist:drop", "blocklist:local", "builtin:ndp-early", "builtin:ban", "blocklist:drop", "blocklist:local"}
	if !slices.Equal(ids, wantIDs) {
		t.Fatalf("prerouting chain %v, want %v", ids, wantIDs)
	}
	for _, r := range pre.Rules {
		if r.Verdict == Drop && (r.NotInIface != "lo" || !r.LocalDst || !slices.Equal(r.ExceptSrcSets, []string{ProtectSet4}) && !slices.Equal(r.ExceptSrcSets, []string{ProtectSet6})) {
			t.Errorf("drop %+v: want loopback, forwarded packets and the protected set exempt", r)
		}
	}
	for _, r := range rs.Chain(Input).Rules {
		if r.Origin.ID == "builtin:ban" || strings.HasPrefix(r.Origin.ID, "blocklist:") {
			t.Errorf("input chain still has %s", r.Origin.ID)
		}
	}
	for _, tc := range []struct {
		src     string
		port    uint16
		verdict Verdict
		origin  string
	}{
		{"198.51.100.7", 22, Drop, "blocklist:drop"},
		{"198.51.100.70", 22, Accept, "L3"}, // allowlisted
		{"203.0.113.9", 22, Drop, "blocklist:local"},
		{"2001:db8:bad::1", 22, Drop, "blocklist:drop"},
		{"2001:db8::1", 22, Accept, "L3"},
		{"192.0.2.1", 80, Drop, "default:input"},
	} {
		dst := "192.0.2.1"
		if netip.MustParseAddr(tc.src).Is6() {
			dst = "2001:db8::2"
		}
		d, err := rs.Evaluate(in2(tc.src, dst, tc.port))
		if err != nil || d.Verdict != tc.verdict || d.Origin.ID != tc.origin {
			t.Errorf("%s port %d: %+v %v, want %s by %s", tc.src, tc.port, d, err, tc.verdict, tc.origin)
		}
		if tc.origin == "blocklist:drop" && d.Origin.Text != "blocklist drop url https://lists.example/drop.txt" {
			t.Errorf("explain names %q", d.Origin.Text)
		}
	}
}

func in2(src, dst string, port uint16) Packet {
	return Packet{Hook: Input, InIface: "eth0", Proto: "tcp", Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SPort: 40000, DPort: port}
}

func TestPortscanCompile(t *testing.T) {
	p := mustPolicy(t, `default deny incoming
allowlist 198.51.100.0/24 2001:db8:1::/48
allow 22/tcp
guard portscan ports 10 within 60s bantime 1h
`)
	rs := Compile(p)
	rs.Protect([]netip.Addr{netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("::ffff:192.0.2.77")})
	in := rs.Chain(Input)
	var traps []*ScanTrap
	for i, r := range in.Rules {
		if r.Trap != nil {
			traps = append(traps, r.Trap)
			if i < len(in.Rules)-2 {
				t.Errorf("trap at %d of %d: it must come after every rule", i, len(in.Rules))
			}
		}
	}
	if len(traps) != 2 || traps[0].Rate != (policy.Rate{Count: 10, Seconds: 60, Burst: 9}) || traps[0].BanTime != time.Hour || traps[0].BanSet != BanSet4 || traps[1].BanSet != BanSet6 {
		t.Fatalf("traps: %+v", traps)
	}
	p4 := rs.Set(ProtectSet4).Prefixes()
	if len(p4) != 3 || rs.Set(ScanSet4).ScanWindow != time.Minute {
		t.Errorf("protect4 %v", p4)
	}
	// The trap decides nothing: a packet to a closed port still gets the default.
	d, _ := rs.Evaluate(in2("192.0.2.9", "192.0.2.1", 80))
	if d.Origin.ID != "default:input" {
		t.Errorf("got %+v", d)
	}
	// With 'default allow incoming' no port is unallowed: no trap.
	rs = Compile(mustPolicy(t, "default allow incoming\nguard portscan\n"))
	for _, r := range rs.Chain(Input).Rules {
		if r.Trap != nil {
			t.Errorf("trap with default allow")
		}
	}
	// An allowlist of everything leaves no one to trap.
	rs = Compile(mustPolicy(t, "allowlist 0.0.0.0/0\nguard portscan\n"))
	n := 0
	for _, r := range rs.Chain(Input).Rules {
		if r.Trap != nil {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d traps, want only the IPv6 one", n)
	}
}

// TestPreroutingSpares: the drops before conntrack never hit a live
// session, loopback or a forwarded packet, and explain names the chain.
func TestPreroutingSpares(t *testing.T) {
	p := mustPolicy(t, "default deny incoming\nallow 22/tcp\nroute allow 22/tcp\nblocklist big file /nonexistent\n")
	p.Blocklists[0].Prefixes = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:bad::/48")}
	rs := Compile(p)
	rs.Protect([]netip.Addr{netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("2001:db8:bad::9")})
	for _, tc := range []struct {
		pkt     Packet
		verdict Verdict
		chain   Hook
		origin  string
	}{
		{in2("203.0.113.7", "192.0.2.1", 22), Drop, Prerouting, "blocklist:big"},
		{in2("2001:db8:bad::7", "2001:db8::2", 22), Drop, Prerouting, "blocklist:big"},
		{in2("203.0.113.9", "192.0.2.1", 22), Accept, Input, "L2"},       // live session
		{in2("2001:db8:bad::9", "2001:db8::2", 22), Accept, Input, "L2"}, // live session
		{Packet{Hook: Input, InIface: "lo", Proto: "tcp", Src: netip.MustParseAddr("203.0.113.7"), Dst: netip.MustParseAddr("203.0.113.7"), DPort: 80}, Accept, Input, "builtin:loopback"},
		{Packet{Hook: Forward, InIface: "eth0", OutIface: "eth1", Proto: "tcp", Src: netip.MustParseAddr("203.0.113.7"), Dst: netip.MustParseAddr("198.51.100.1"), DPort: 22}, Accept, Forward, "L3"},
		{Packet{Hook: Input, InIface: "eth0", Proto: "ipv6-icmp", ICMPType: 135, HasICMPType: true, HopLimit: 255, Src: netip.MustParseAddr("2001:db8:bad::7"), Dst: netip.MustParseAddr("2001:db8::2")}, Accept, Input, "builtin:ndp"},
	} {
		d, err := rs.Evaluate(tc.pkt)
		if err != nil || d.Verdict != tc.verdict || d.Chain != tc.chain || d.Origin.ID != tc.origin {
			t.Errorf("%+v: %+v %v, want %s in %s by %s", tc.pkt, d, err, tc.verdict, tc.chain, tc.origin)
		}
	}
}

// TestBlocklistPrefixesSameAsIPSet: the fast way (no allowlist or loopback
// in the list) and the cut gives what IPSetBuilder gave.
func TestBlocklistPrefixesSameAsIPSet(t *testing.T) {
	ps := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	for _, c := range []struct{ list, allow []netip.Prefix }{
		{ps("192.0.2.0/25", "192.0.2.128/25", "2001:db8::/48", "198.51.100.7/32"), nil},
		{ps("192.0.2.0/24", "2001:db8::/32"), ps("192.0.2.9/32")},
		{ps("192.0.2.0/24", "2001:db8::/32"), ps("2001:db8:1::/48", "203.0.113.0/24")},
		{ps("0.0.0.0/0"), nil},
		{ps("::/0", "127.0.0.1/32"), nil},
		{ps("192.0.2.0/24"), ps("203.0.113.0/24", "192.0.1.255/32", "192.0.3.0/32")},
		{nil, ps("192.0.2.0/24")},
		{[]netip.Prefix{{}, netip.MustParsePrefix("192.0.2.0/24")}, nil},
		{ps("192.0.2.0/24"), []netip.Prefix{{}}},
	} {
		v4, v6 := BlocklistPrefixes(c.list, c.allow)
		w4, w6 := ipsetPrefixes(c.list, c.allow)
		if !slices.Equal(v4, w4) || !slices.Equal(v6, w6) {
			t.Errorf("%v without %v: %v %v, want %v %v", c.list, c.allow, v4, v6, w4, w6)
		}
	}
}

// A list merged already (as internal/blocklist gives every list) is not
// merged again: the compile used to copy and walk 100,000 networks a
// second time. A list not merged still is.
func TestBlocklistPrefixesMergedAsIs(t *testing.T) {
	var list []netip.Prefix
	for i := 0; i < 1000; i++ {
		list = append(list, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, byte(i >> 7), byte(i&0x7f) * 2}), 32))
	}
	list = append(list, netip.MustParsePrefix("2001:db8::/64"))
	allow := []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32")}
	var v4, v6 []netip.Prefix
	if n := testing.AllocsPerRun(10, func() { v4, v6 = BlocklistPrefixes(list, allow) }); n > 0 {
		t.Errorf("a merged list was copied: %v allocations", n)
	}
	if !slices.Equal(append(slices.Clone(v4), v6...), list) {
		t.Errorf("a merged list came out changed")
	}
	halves := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/25"), netip.MustParsePrefix("192.0.2.128/25")}
	if v4, _ := BlocklistPrefixes(halves, nil); !slices.Equal(v4, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}) {
		t.Errorf("two halves were not merged: %v", v4)
	}
}
