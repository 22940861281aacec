package netmerge

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"go4.org/netipx"
)

func ipset(t testing.TB, ps []netip.Prefix) []netip.Prefix {
	var b netipx.IPSetBuilder
	for _, p := range ps {
		b.AddPrefix(p)
	}
	s, err := b.IPSet()
	if err != nil {
		t.Fatal(err)
	}
	return s.Prefixes()
}

func parse(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// TestMergeSameAsIPSet: overlaps, adjacent networks, networks inside
// others, the ends of each family's space, duplicates, unmasked and
// invalid prefixes.
func TestMergeSameAsIPSet(t *testing.T) {
	for _, ps := range [][]netip.Prefix{
		nil,
		parse("192.0.2.0/25", "192.0.2.128/25", "192.0.2.7/32"),
		parse("192.0.2.0/24", "192.0.2.7/32", "192.0.2.9/32"),
		parse("255.255.255.255/32", "::/128", "0.0.0.0/32", "255.255.255.254/32", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"),
		parse("0.0.0.0/0", "::/0", "192.0.2.0/24"),
		parse("198.51.100.3/32", "198.51.100.1/32", "198.51.100.2/32", "198.51.100.2/32", "2001:db8::/33", "2001:db8:8000::/33"),
		parse("203.0.113.0/24", "203.0.112.0/24", "203.0.114.0/24", "2001:db8::1/128"),
		parse("192.0.2.77/24", "2001:db8::1/32"),
	} {
		if got, want := Merge(ps), ipset(t, ps); !slices.Equal(got, want) {
			t.Errorf("%v: Merge %v, IPSet %v", ps, got, want)
		}
	}
	// An invalid prefix (which IPSetBuilder reports as an error) is
	// skipped.
	if got := Merge([]netip.Prefix{{}, netip.MustParsePrefix("192.0.2.0/24")}); !slices.Equal(got, parse("192.0.2.0/24")) {
		t.Errorf("Merge with an invalid prefix: %v", got)
	}
}

// FuzzMerge: Merge is IPSet's merge; Overlaps agrees with a scan; Split
// keeps the order.
func FuzzMerge(f *testing.F) {
	f.Add([]byte{192, 0, 2, 0, 24, 192, 0, 2, 128, 25, 198, 51, 100, 7, 32})
	f.Add([]byte{255, 255, 255, 255, 32, 0, 0, 0, 0, 0, 10, 0, 0, 0, 8, 10, 1, 0, 0, 16})
	f.Fuzz(func(t *testing.T, data []byte) {
		// 5 bytes an IPv4 prefix; a byte of 0xff before one makes it IPv6
		// (the 4 bytes as the top of 2001:db8::/32's neighbourhood).
		var ps []netip.Prefix
		for len(data) >= 5 {
			if data[0] == 0xfe && len(data) >= 6 {
				var a [16]byte
				binary.BigEndian.PutUint32(a[:], 0x20010db8)
				copy(a[4:8], data[1:5])
				ps = append(ps, netip.PrefixFrom(netip.AddrFrom16(a), int(data[5])%129))
				data = data[6:]
				continue
			}
			a := netip.AddrFrom4([4]byte(data[:4]))
			ps = append(ps, netip.PrefixFrom(a, int(data[4])%33))
			data = data[5:]
		}
		got, want := Merge(ps), ipset(t, ps)
		if !slices.Equal(got, want) {
			t.Fatalf("%v: Merge %v, IPSet %v", ps, got, want)
		}
		// IsMerged holds exactly for Merge's own results: what it
		// accepts is kept as it is, so it must accept nothing that
		// merging would change, and it must accept every merged list
		// (else the shortcut never applies).
		if !IsMerged(got) {
			t.Fatalf("IsMerged(%v) is false for Merge's result", got)
		}
		if IsMerged(ps) && !slices.Equal(ps, want) {
			t.Fatalf("IsMerged(%v) is true, but it merges to %v", ps, want)
		}
		if IsMerged(ps) != isMergedSlow(ps) || IsMerged(got) != isMergedSlow(got) {
			t.Fatalf("%v: IsMerged %v, netip's check %v", ps, IsMerged(ps), isMergedSlow(ps))
		}
		if w, ok := walk(ps, true); ok && IsMerged(ps) != slices.Equal(w, ps) {
			t.Fatalf("%v: IsMerged %v, the walk gives %v", ps, IsMerged(ps), w)
		}
		// The same networks in order (unmasked as given) take the walk
		// without the sort.
		sorted := slices.Clone(ps)
		slices.SortStableFunc(sorted, compareMasked)
		if got := Merge(sorted); !slices.Equal(got, want) {
			t.Fatalf("%v in order: Merge %v, IPSet %v", sorted, got, want)
		}
		for _, p := range ps {
			scan := false
			for _, m := range got {
				scan = scan || m.Overlaps(p)
			}
			if Overlaps(got, p) != scan {
				t.Fatalf("Overlaps(%v, %v) = %v", got, p, !scan)
			}
			for _, q := range []netip.Prefix{netip.PrefixFrom(p.Addr(), 32), netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("::1/128")} {
				scan := false
				for _, m := range got {
					scan = scan || m.Overlaps(q)
				}
				if Overlaps(got, q) != scan {
					t.Fatalf("Overlaps(%v, %v) = %v", got, q, !scan)
				}
			}
		}
		v4, v6 := Split(got)
		if !slices.Equal(append(slices.Clone(v4), v6...), got) {
			t.Fatal("Split")
		}
		for _, p := range v4 {
			if !p.Addr().Is4() {
				t.Fatal("Split: v6 in v4")
			}
		}
		for _, p := range v6 {
			if p.Addr().Is4() {
				t.Fatal("Split: v4 in v6")
			}
		}
	})
}

// IsMerged on the cases that matter: halves of one network (either
// family), neighbours that are not halves, overlaps, order, families.
func TestIsMerged(t *testing.T) {
	for _, c := range []struct {
		ps   []string
		want bool
	}{
		{nil, true},
		{[]string{"192.0.2.0/24"}, true},
		{[]string{"192.0.2.0/25", "192.0.2.128/25"}, false},
		{[]string{"192.0.2.64/26", "192.0.2.128/26"}, true}, // neighbours, not halves
		{[]string{"192.0.2.0/26", "192.0.2.64/26", "192.0.2.128/25"}, false},
		{[]string{"192.0.2.0/24", "192.0.2.7/32"}, false},
		{[]string{"192.0.2.7/32", "192.0.2.0/24"}, false},
		{[]string{"192.0.2.7/32", "192.0.2.7/32"}, false},
		{[]string{"0.0.0.0/1", "128.0.0.0/1"}, false},
		{[]string{"0.0.0.0/0", "::/0"}, true},
		{[]string{"::/0", "0.0.0.0/0"}, false},
		{[]string{"2001:db8::/33", "2001:db8:8000::/33"}, false},
		{[]string{"2001:db8::/64", "2001:db8:0:2::/64"}, true},
		{[]string{"::ffff:192.0.2.0/121", "::ffff:192.0.3.0/121"}, true},
		{[]string{"::ffff:192.0.2.0/121", "::ffff:192.0.2.128/121"}, false},
		{[]string{"255.255.255.254/32", "255.255.255.255/32"}, false},
		// Each word of the address: halves and overlaps at 64, 65, 128.
		{[]string{"2001:db8:0:2::/64", "2001:db8:0:3::/64"}, false},
		{[]string{"2001:db8:0:1::/64", "2001:db8:0:2::/64"}, true},
		{[]string{"2001:db8::/65", "2001:db8::8000:0:0:0/65"}, false},
		{[]string{"2001:db8::/64", "2001:db8::8000:0:0:0/65"}, false},
		{[]string{"2001:db8::8000:0:0:0/65", "2001:db8:0:1::/65"}, true},
		{[]string{"2001:db8::fe/128", "2001:db8::ff/128"}, false},
		{[]string{"2001:db8::ff/128", "2001:db8::100/128"}, true},
		{[]string{"2001:db8::/127", "2001:db8::1/128"}, false},
		{[]string{"192.0.2.0/32", "::ffff:192.0.2.1/128"}, true}, // two families
		{[]string{"::ffff:192.0.2.0/128", "192.0.2.1/32"}, false},
	} {
		ps := parse(c.ps...)
		if got := IsMerged(ps); got != c.want || isMergedSlow(ps) != c.want {
			t.Errorf("IsMerged(%v) = %v (netip's check %v)", c.ps, got, isMergedSlow(ps))
		}
		if c.want && !slices.Equal(Merge(ps), ps) {
			t.Errorf("%v is merged, but Merge changes it to %v", c.ps, Merge(ps))
		}
	}
	if IsMerged([]netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("192.0.2.7"), 24)}) {
		t.Errorf("an unmasked network counts as merged")
	}
}

// isMergedSlow is IsMerged as written with netip's methods (before it
// read each network into two words): FuzzMerge holds the two equal.
func isMergedSlow(ps []netip.Prefix) bool {
	for i, p := range ps {
		if !p.IsValid() || p.Addr() != p.Masked().Addr() {
			return false
		}
		if i == 0 {
			continue
		}
		// Both masked: in order means a later start (IPv4 before IPv6);
		// q, starting before p, overlaps it if it holds p's start.
		q := ps[i-1]
		if q.Addr().Compare(p.Addr()) >= 0 {
			return false
		}
		if q.Addr().BitLen() == p.Addr().BitLen() && (q.Contains(p.Addr()) || halvesSlow(q, p)) {
			return false
		}
	}
	return true
}

// halves says whether q and p, masked networks of one family, are the two
// halves of one network: the same length, and their addresses differ in
// the last bit of it alone.
func halvesSlow(q, p netip.Prefix) bool {
	bits := q.Bits()
	if bits == 0 || bits != p.Bits() {
		return false
	}
	if q.Addr().Is4() {
		bits += 96 // As16 puts IPv4 in the last 32 bits
	}
	a, b := q.Addr().As16(), p.Addr().As16()
	at, bit := (bits-1)/8, byte(0x80>>((bits-1)%8))
	for k := range a {
		x := a[k] ^ b[k]
		if k == at && x != bit || k != at && x != 0 {
			return false
		}
	}
	return true
}

func BenchmarkIsMerged(b *testing.B) {
	ps := make([]netip.Prefix, 0, 100000)
	for i := range 50000 {
		ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(i >> 15), byte(i >> 7), byte(2 * (i & 127))}), 32))
	}
	for i := range 50000 {
		a := [16]byte{0x20, 0x01, 0x0d, 0xb8, 0xf0, byte(i >> 15), byte(i >> 7), byte(2 * (i & 127))}
		ps = append(ps, netip.PrefixFrom(netip.AddrFrom16(a), 64))
	}
	if !IsMerged(ps) || !isMergedSlow(ps) {
		b.Fatal("the list is not merged")
	}
	b.Run("words", func(b *testing.B) {
		for range b.N {
			IsMerged(ps)
		}
	})
	b.Run("netip", func(b *testing.B) {
		for range b.N {
			isMergedSlow(ps)
		}
	})
}

// FuzzIsMergedSameAsNetip: IsMerged is the netip check it replaced
// (isMergedSlow) for networks of any address (every bit of both words of
// an IPv6 address, IPv4-mapped ones beside IPv4), any length, invalid
// ones (a length past the address's, the zero Prefix) and any order.
func FuzzIsMergedSameAsNetip(f *testing.F) {
	f.Add([]byte{4, 192, 0, 2, 0, 24, 4, 192, 0, 2, 128, 25})
	f.Add([]byte{6, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 65, 6, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 65})
	f.Add([]byte{0, 4, 255, 255, 255, 255, 33})
	f.Fuzz(func(t *testing.T, data []byte) {
		var ps []netip.Prefix
		for len(data) > 0 {
			switch {
			case data[0]%3 == 0:
				ps = append(ps, netip.Prefix{})
				data = data[1:]
			case data[0]%3 == 1 && len(data) >= 6:
				ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte(data[1:5])), int(data[5])%35))
				data = data[6:]
			case len(data) >= 18:
				ps = append(ps, netip.PrefixFrom(netip.AddrFrom16([16]byte(data[1:17])), int(data[17])%131))
				data = data[18:]
			default:
				data = nil
			}
		}
		if got, want := IsMerged(ps), isMergedSlow(ps); got != want {
			t.Fatalf("%v: IsMerged %v, netip's check %v", ps, got, want)
		}
		// Masked and sorted, the list is more often merged.
		ms := make([]netip.Prefix, 0, len(ps))
		for _, p := range ps {
			if p.IsValid() {
				ms = append(ms, p.Masked())
			}
		}
		slices.SortFunc(ms, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		if got, want := IsMerged(ms), isMergedSlow(ms); got != want {
			t.Fatalf("%v: IsMerged %v, netip's check %v", ms, got, want)
		}
	})
}
