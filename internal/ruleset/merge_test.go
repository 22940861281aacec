package ruleset

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"go4.org/netipx"
)

// builderMerge is mergePrefixes the general way.
func builderMerge(entries []SetEntry) []netip.Prefix {
	var b netipx.IPSetBuilder
	for _, e := range entries {
		b.AddPrefix(e.Prefix)
	}
	s, _ := b.IPSet()
	return s.Prefixes()
}

// The fast merge gives what netipx's builder gives, whatever the
// networks: apart, overlapping, touching, duplicated, unsorted, host
// bits set, the ends of the address space.
func TestMergePrefixesAsBuilder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	fixed := [][]string{
		{"192.0.2.0/25", "192.0.2.128/25"},
		{"192.0.2.1/32", "192.0.2.3/32"},
		{"192.0.2.1/32", "192.0.2.2/32"},
		{"192.0.2.0/24", "192.0.2.7/32"},
		{"192.0.2.7/32", "192.0.2.7/32"},
		{"255.255.255.255/32", "255.255.255.254/32"},
		{"255.255.255.255/32", "0.0.0.0/32"},
		{"2001:db8::/64", "2001:db8:0:2::/64", "2001:db8:0:1::/64"},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "2001:db8::1/128"},
		{"192.0.2.9/24"},
		{"0.0.0.0/0"},
		{"198.51.100.0/24", "192.0.2.0/24", "203.0.113.0/24"},
	}
	var cases [][]SetEntry
	for _, f := range fixed {
		var es []SetEntry
		for _, s := range f {
			es = append(es, SetEntry{Prefix: netip.MustParsePrefix(s)})
		}
		cases = append(cases, es)
	}
	for range 2000 {
		n := 1 + rng.IntN(40)
		v6 := rng.IntN(2) == 0
		var es []SetEntry
		for range n {
			var p netip.Prefix
			if v6 {
				a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, byte(rng.IntN(4)), 0, 0, 0, 0, 0, 0, 0, byte(rng.IntN(8))})
				p = netip.PrefixFrom(a, []int{64, 126, 127, 128}[rng.IntN(4)])
			} else {
				a := netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(32))})
				p = netip.PrefixFrom(a, []int{27, 30, 31, 32}[rng.IntN(4)])
			}
			es = append(es, SetEntry{Prefix: p})
		}
		cases = append(cases, es)
	}
	fast := 0
	for _, es := range cases {
		if _, ok := apartPrefixes(es); ok {
			fast++
		}
		if got, want := mergePrefixes(es), builderMerge(es); !slices.Equal(got, want) {
			t.Fatalf("%v:\nmerged  %v\nbuilder %v", es, got, want)
		}
	}
	if fast < 100 {
		t.Errorf("the fast merge took only %d cases", fast)
	}
}
