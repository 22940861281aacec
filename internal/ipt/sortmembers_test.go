package ipt

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

func randomMembers(n int) []ipsetMember {
	r := rand.New(rand.NewPCG(1, 2))
	m := make([]ipsetMember, n)
	for i := range m {
		a := netip.AddrFrom4([4]byte{100, byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
		m[i] = ipsetMember{p: netip.PrefixFrom(a, 32)}
	}
	return m
}

func BenchmarkSortMembers(b *testing.B) {
	src := randomMembers(50000)
	m := make([]ipsetMember, len(src))
	for i := 0; i < b.N; i++ {
		copy(m, src)
		sortMembers(m)
	}
}

// The radix sort gives the order of the comparison sort: address, then
// length, IPv4 apart from IPv6, for plain members of both families and
// of many lengths; members with other attributes are sorted the same way
// and then by them.
func TestSortMembersOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var m []ipsetMember
	for i := 0; i < 3000; i++ {
		var a netip.Addr
		if r.IntN(2) == 0 {
			a = netip.AddrFrom4([4]byte{byte(r.IntN(3)), byte(r.IntN(256)), 0, byte(r.IntN(4))})
		} else {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(r.IntN(3)), 9: byte(r.IntN(256)), 15: byte(r.IntN(4))})
		}
		m = append(m, ipsetMember{p: netip.PrefixFrom(a, r.IntN(a.BitLen()+1))})
	}
	less := func(a, b ipsetMember) bool {
		a16, b16 := a.p.Addr().As16(), b.p.Addr().As16()
		if a16 != b16 {
			return string(a16[:]) < string(b16[:])
		}
		ab, bb := a.p.Bits()+1, b.p.Bits()+1
		if a.p.Addr().Is4() {
			ab += 256
		}
		if b.p.Addr().Is4() {
			bb += 256
		}
		if ab != bb {
			return ab < bb
		}
		return a.extra < b.extra
	}
	for _, withExtra := range []bool{false, true} {
		in := slices.Clone(m)
		if withExtra {
			in[7].extra, in[8].extra = "8 00000002", "8 00000001"
			in[8].p = in[7].p
		}
		got := slices.Clone(in)
		sortMembers(got)
		for i := 1; i < len(got); i++ {
			if less(got[i], got[i-1]) {
				t.Fatalf("extra %v: members %d and %d out of order: %v %v", withExtra, i-1, i, got[i-1], got[i])
			}
		}
		// The same members in another order sort the same.
		r.Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
		sortMembers(in)
		if !slices.Equal(in, got) {
			t.Errorf("extra %v: another order of the same members sorts differently", withExtra)
		}
	}
}

func BenchmarkSortMembersCompare(b *testing.B) {
	src := randomMembers(50000)
	src[0].extra = "x" // the comparison sort
	m := make([]ipsetMember, len(src))
	for i := 0; i < b.N; i++ {
		copy(m, src)
		sortMembers(m)
	}
}
