package blocklist

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"go4.org/netipx"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func same(a, b []netip.Prefix) bool { return samePrefixes(a, b) }

func TestParseFormats(t *testing.T) {
	for _, tc := range []struct {
		file    string
		entries int
		want    []netip.Prefix
	}{
		// Two halves of 192.0.2.0/24 merge into one.
		{"testdata/drop.txt", 4, prefixes("192.0.2.0/24", "198.51.100.0/24", "203.0.113.64/26")},
		// A single address, a /29 and a /28 inside a /24 merge away.
		{"testdata/firehol.netset", 4, prefixes("192.0.2.7/32", "192.0.2.8/29", "203.0.113.0/24")},
		{"testdata/cn.zone", 3, prefixes("2001:db8:100::/40", "2001:db8:200::/40")}, // the /48 is inside the first /40
		{"testdata/drop_v4.json", 2, prefixes("192.0.2.0/24", "2001:db8:aa::/48")},
	} {
		data, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		l, err := Parse(bytes.NewReader(data), tc.file)
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		if len(l.Entries) != tc.entries {
			t.Errorf("%s: %d entries, want %d", tc.file, len(l.Entries), tc.entries)
		}
		if got := l.Prefixes(); !same(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.file, got, tc.want)
		}
	}
}

func TestParseLines(t *testing.T) {
	in := "\xef\xbb\xbf# BOM first\r\n" +
		"192.0.2.1-192.0.2.6 # a range\n" +
		"192.0.2.10 - 192.0.2.11\n" +
		"  198.51.100.7/24   ; host bits are masked\n" +
		"::ffff:203.0.113.9\n" +
		"::ffff:203.0.113.0/120\n" +
		"2001:db8::1\n" +
		"\n\t\n;\n#\n"
	l, err := Parse(strings.NewReader(in), "x")
	if err != nil {
		t.Fatal(err)
	}
	want := prefixes("192.0.2.1/32", "192.0.2.2/31", "192.0.2.4/31", "192.0.2.6/32", "192.0.2.10/31", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::1/128")
	if !same(l.Prefixes(), want) {
		t.Errorf("got %v\nwant %v", l.Prefixes(), want)
	}
	if l.Entries[0].Line != 2 {
		t.Errorf("first entry on line %d, want 2", l.Entries[0].Line)
	}
}

func TestParseRefusesWholeList(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"192.0.2.0/24\nbogus\n", "f.txt:2: bad entry \"bogus\""},
		{"192.0.2.0/24\n192.0.2.0/33\n", "f.txt:2: bad entry"},
		{"192.0.2.9-192.0.2.1\n", "f.txt:1: bad range"},
		{"192.0.2.1-2001:db8::1\n", "both ends must be of one IP version"},
		{"fe80::1%eth0\n", "scoped addresses"},
		{"add moat-x 192.0.2.1\n", "f.txt:1: bad entry"},
		{"192.0.2.1 192.0.2.2\n", "bad entry"},
		{"{\"cidr\": 5}\n", "\"cidr\" must be a CIDR string"},
		{"{broken\n", "bad JSON line"},
		{"192.0.2.0/24\n" + strings.Repeat("1", MaxLineLen+10) + "\n", "f.txt:2: line longer than"},
		{"1.2.3.4\n\x00\x01evil\x1b[31m\n", `f.txt:2: bad entry "\x00\x01evil\x1b[31m"`},
	} {
		_, err := Parse(strings.NewReader(tc.in), "f.txt")
		var le *LineError
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.80q: got %.200v, want %q", tc.in, err, tc.want)
		} else if !errors.As(err, &le) {
			t.Errorf("%q: not a LineError: %T", tc.in, err)
		}
	}
}

func TestCheck(t *testing.T) {
	l, _ := Parse(strings.NewReader("192.0.2.0/24\n203.0.113.0/24\n"), "x")
	if err := Check("x", l, Protect{Sessions: []netip.Addr{netip.MustParseAddr("198.51.100.1")}}); err != nil {
		t.Errorf("unrelated session: %v", err)
	}
	err := Check("x", l, Protect{Sessions: []netip.Addr{netip.MustParseAddr("::ffff:203.0.113.5")}})
	if err == nil || !strings.Contains(err.Error(), "blocklist x refused: line 2 (203.0.113.0/24) covers your live SSH session from 203.0.113.5") {
		t.Errorf("session: %v", err)
	}
	big, _ := Parse(strings.NewReader("0.0.0.0/1\n128.0.0.0/2\n"), "x")
	if err := Check("big", big, Protect{}); err == nil || !strings.Contains(err.Error(), "covers 75.0% of the IPv4 address space") {
		t.Errorf("share: %v", err)
	}
	half, _ := Parse(strings.NewReader("0.0.0.0/1\n::/1\n"), "x")
	if err := Check("half", half, Protect{}); err != nil {
		t.Errorf("a /1 is the cap, not over it: %v", err)
	}
	if err := Check("half", half, Protect{MaxShare: 0.1}); err == nil {
		t.Errorf("a lower cap is obeyed")
	}
	v6, _ := Parse(strings.NewReader("::/0\n"), "x")
	if err := Check("v6", v6, Protect{}); err == nil || !strings.Contains(err.Error(), "IPv6") {
		t.Errorf("v6 share: %v", err)
	}
}

func TestDiff(t *testing.T) {
	add, del := Diff(prefixes("192.0.2.0/24", "198.51.100.0/24"), prefixes("198.51.100.0/24", "203.0.113.0/24"))
	if !same(add, prefixes("203.0.113.0/24")) || !same(del, prefixes("192.0.2.0/24")) {
		t.Errorf("add %v del %v", add, del)
	}
}

// FuzzParse: no input panics; whatever is accepted parses back from its
// canonical form to the same networks, and every entry is inside them.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"testdata/drop.txt", "testdata/firehol.netset", "testdata/cn.zone", "testdata/drop_v4.json"} {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("192.0.2.1-192.0.2.200\n::ffff:1.2.3.4/127\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := Parse(bytes.NewReader(data), "fuzz")
		if err != nil {
			var le *LineError
			if errors.As(err, &le) && le.Line < 1 {
				t.Fatalf("line %d", le.Line)
			}
			return
		}
		again, err := Parse(bytes.NewReader(Canonical("fuzz", l)), "canonical")
		if err != nil {
			t.Fatalf("canonical form does not parse: %v", err)
		}
		if !same(again.Prefixes(), l.Prefixes()) {
			t.Fatalf("canonical form changed the networks")
		}
		for _, e := range l.Entries {
			if !e.Prefix.IsValid() || e.Prefix != e.Prefix.Masked() || e.Prefix.Addr().Is4In6() {
				t.Fatalf("entry %v is not a clean prefix", e.Prefix)
			}
		}
	})
}

// ipsetMerge is the merge as netipx.IPSetBuilder gives it, which merge
// replaces.
func ipsetMerge(t testing.TB, entries []Entry) (v4, v6 []netip.Prefix) {
	var b netipx.IPSetBuilder
	for _, e := range entries {
		b.AddPrefix(e.Prefix)
	}
	set, err := b.IPSet()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range set.Prefixes() {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return v4, v6
}

// TestMergeSameAsIPSet: overlaps, adjacent networks, the ends of each
// family's space, duplicates.
func TestMergeSameAsIPSet(t *testing.T) {
	for _, list := range [][]string{
		{},
		{"192.0.2.0/25", "192.0.2.128/25", "192.0.2.7/32"},
		{"255.255.255.255/32", "::/128", "0.0.0.0/32", "255.255.255.254/32", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"},
		{"0.0.0.0/0", "::/0", "192.0.2.0/24"},
		{"198.51.100.3/32", "198.51.100.1/32", "198.51.100.2/32", "198.51.100.2/32", "2001:db8::/33", "2001:db8:8000::/33"},
		{"203.0.113.0/24", "203.0.112.0/24", "203.0.114.0/24", "2001:db8::1/128"},
	} {
		var entries []Entry
		for i, p := range prefixes(list...) {
			entries = append(entries, Entry{Prefix: p, Line: i + 1})
		}
		v4, v6 := merge(entries)
		w4, w6 := ipsetMerge(t, entries)
		if !same(v4, w4) || !same(v6, w6) {
			t.Errorf("%v: merge %v %v, IPSet %v %v", list, v4, v6, w4, w6)
		}
	}
}

// FuzzParseFastSameAsSlow: the fast reader of plain lines gives the same
// networks, the same merge and the same errors as the general one, and the
// merge is netipx.IPSet's.
func FuzzParseFastSameAsSlow(f *testing.F) {
	for _, name := range []string{"testdata/drop.txt", "testdata/firehol.netset", "testdata/cn.zone", "testdata/drop_v4.json"} {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"192.0.2.1 ; SBL1\n2001:db8::/32 # x\n",
		"\u00a0192.0.2.1\n", "192.0.2.1\u00a0\n", "192.0.2.1\u0085; c\n", " \t192.0.2.0/24\t \r\n",
		"192.0.2.1/33\n", "::ffff:192.0.2.0/120\n", "::ffff:0.0.0.0/95\n", "192.0.2.1 192.0.2.2\n",
		"1.2.3.4/24\n", "fe80::1%eth0\n", "::1:\n", "0x1.2.3.4\n", "01.2.3.4\n", "1.2.3.4/024\n",
		"#\n;\n  ; x\n{\"cidr\":\"192.0.2.0/24\"}\n", "192.0.2.9-192.0.2.1\n", "192.0.2.0/25\n192.0.2.128/25\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ferr := parse(bytes.NewReader(data), "f", parseLine)
		slow, serr := parse(bytes.NewReader(data), "f", parseLineSlow)
		if (ferr == nil) != (serr == nil) || ferr != nil && ferr.Error() != serr.Error() {
			t.Fatalf("fast: %v\nslow: %v", ferr, serr)
		}
		if ferr != nil {
			return
		}
		if !slices.Equal(fast.Entries, slow.Entries) || !same(fast.V4, slow.V4) || !same(fast.V6, slow.V6) {
			t.Fatalf("fast %v\nslow %v", fast, slow)
		}
		w4, w6 := ipsetMerge(t, fast.Entries)
		if !same(fast.V4, w4) || !same(fast.V6, w6) {
			t.Fatalf("merge %v %v, IPSet %v %v", fast.V4, fast.V6, w4, w6)
		}
	})
}

// TestDiffSortedSameAsMap: the walk over merged lists gives what the map
// gives; unsorted lists (and duplicates) still go through the map.
func TestDiffSortedSameAsMap(t *testing.T) {
	mapDiff := func(old, new []netip.Prefix) (add, del []netip.Prefix) {
		in, keep := map[netip.Prefix]bool{}, map[netip.Prefix]bool{}
		for _, p := range old {
			in[p] = true
		}
		for _, p := range new {
			keep[p] = true
			if !in[p] {
				add = append(add, p)
			}
		}
		for _, p := range old {
			if !keep[p] {
				del = append(del, p)
			}
		}
		return add, del
	}
	for _, c := range [][2][]string{
		{{"192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32"}, {"192.0.2.0/25", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/48"}},
		{{}, {"192.0.2.0/24", "2001:db8::/32"}},
		{{"192.0.2.0/24", "2001:db8::/32"}, {}},
		{{"203.0.113.0/24", "192.0.2.0/24"}, {"192.0.2.0/24", "198.51.100.0/24"}},
		{{"192.0.2.0/24", "192.0.2.0/24"}, {"192.0.2.0/24"}},
	} {
		old, new := prefixes(c[0]...), prefixes(c[1]...)
		add, del := Diff(old, new)
		wadd, wdel := mapDiff(old, new)
		if !same(add, wadd) || !same(del, wdel) {
			t.Errorf("%v: add %v del %v, want %v %v", c, add, del, wadd, wdel)
		}
	}
}
