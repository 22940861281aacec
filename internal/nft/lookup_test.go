package nft

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeSet answers BansOf's reads for a made-up ban set: its elements and
// the counts and generations read, in turn (the last one repeats).
type fakeSet struct {
	elems  []netip.Addr
	counts []uint32
	gens   []uint32
	fresh  []netip.Addr // of elems: their timeout was set just now (by the trap: no comment)
	made   []netip.Addr // of elems: banned by moat just now (a comment)
}

func next[T any](s *[]T) T {
	v := (*s)[0]
	if len(*s) > 1 {
		*s = (*s)[1:]
	}
	return v
}

func (f *fakeSet) install(t *testing.T) {
	t.Helper()
	c, e, g := lookupCount, lookupElems, dumpGeneration
	t.Cleanup(func() { lookupCount, lookupElems, dumpGeneration = c, e, g })
	lookupCount = func(string) (uint32, bool, error) { return next(&f.counts), true, nil }
	dumpGeneration = func() (uint32, error) { return next(&f.gens), nil }
	// As the kernel does: one answer per request, the element if it is in
	// the set (a request made twice is answered twice).
	lookupElems = func(_ string, addrs []netip.Addr) ([]Elem, error) {
		var out []Elem
		for _, a := range addrs {
			if slices.Contains(f.elems, a) {
				e := Elem{Key: a.AsSlice(), Comment: "manual", Timeout: time.Hour, Expires: 50 * time.Minute}
				if slices.Contains(f.fresh, a) {
					e.Expires, e.Comment = time.Hour-time.Millisecond, ""
				}
				if slices.Contains(f.made, a) {
					e.Expires = time.Hour - time.Millisecond
				}
				out = append(out, e)
			}
		}
		return out, nil
	}
}

// A ban set is listed from lookups only when they found as many elements
// as the kernel counts in it, with the count and the generation the same
// before and after; else the caller dumps it. An address known twice is
// looked up once: two answers for it would pass for another element.
func TestBansOfCompleteOnlyWhenCounted(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")
	c := netip.MustParseAddr("192.0.2.3")
	for _, tc := range []struct {
		name     string
		set      fakeSet
		known    []netip.Addr
		complete bool
	}{
		{"all known", fakeSet{elems: []netip.Addr{a, b}, counts: []uint32{2}, gens: []uint32{9}}, []netip.Addr{a, b, c}, true},
		{"empty set", fakeSet{counts: []uint32{0}, gens: []uint32{9}}, nil, true},
		{"one not known", fakeSet{elems: []netip.Addr{a, b}, counts: []uint32{2}, gens: []uint32{9}}, []netip.Addr{a, c}, false},
		{"known twice, one not known", fakeSet{elems: []netip.Addr{a, b}, counts: []uint32{2}, gens: []uint32{9}}, []netip.Addr{a, a}, false},
		{"known twice as mapped, one not known", fakeSet{elems: []netip.Addr{a, b}, counts: []uint32{2}, gens: []uint32{9}}, []netip.Addr{a, netip.AddrFrom16(a.As16()), c}, false},
		{"more in the set than known", fakeSet{elems: []netip.Addr{a, b, c}, counts: []uint32{3}, gens: []uint32{9}}, []netip.Addr{a, b}, false},
		{"generation moved", fakeSet{elems: []netip.Addr{a, b}, counts: []uint32{2}, gens: []uint32{9, 10}}, []netip.Addr{a, b}, false},
		{"count moved", fakeSet{elems: []netip.Addr{a}, counts: []uint32{2, 1}, gens: []uint32{9}}, []netip.Addr{a, b}, false},
		{"an expired element not yet freed", fakeSet{elems: []netip.Addr{a}, counts: []uint32{2}, gens: []uint32{9}}, []netip.Addr{a, b}, false},
		// The trap banned b again during the lookups (no commit) while a
		// ban found expired and was freed: both counts 2, the lookups find
		// 2 (one of them b), and c, banned by the trap and not recorded,
		// would be left out.
		{"an element found was added during the lookups", fakeSet{elems: []netip.Addr{a, b}, fresh: []netip.Addr{b}, counts: []uint32{2}, gens: []uint32{9}}, []netip.Addr{a, b}, false},
		// A ban moat made just before (a commit, before the first
		// generation read) was counted.
		{"a ban moat made just before", fakeSet{elems: []netip.Addr{a, b}, made: []netip.Addr{b}, counts: []uint32{2}, gens: []uint32{9}}, []netip.Addr{a, b}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.set.install(t)
			bans, complete, err := NetlinkReader{}.BansOf("ban4", tc.known)
			if err != nil {
				t.Fatal(err)
			}
			if complete != tc.complete {
				t.Fatalf("complete %v, want %v (%v)", complete, tc.complete, bans)
			}
			if complete && len(bans) != len(tc.set.elems) {
				t.Errorf("%d bans, want %d", len(bans), len(tc.set.elems))
			}
			if !complete && bans != nil {
				t.Errorf("bans %v with complete false", bans)
			}
		})
	}
}

// In a real kernel: lookups in batches (more than one) find exactly the
// elements of the set among addresses mostly not in it, with their
// comment and time left; the set's count is its elements; and BansOf is
// complete with every element known, not with one of them left out, nor
// with one more element added by hand.
func TestKernelLookupElements(t *testing.T) {
	r, ns := kernelNS(t)
	ctx := context.Background()
	const n = 2500
	var in, out []netip.Addr
	var b strings.Builder
	b.WriteString("table inet moat {\n set ban6 {\n  type ipv6_addr\n  size 65536\n  flags dynamic,timeout\n  elements = { ")
	for i := 0; i < n+600; i++ {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)})
		if i%6 == 5 && len(out) < 600 {
			out = append(out, a)
			continue
		}
		if len(in) == n {
			out = append(out, a)
			continue
		}
		if len(in) > 0 {
			b.WriteString(", ")
		}
		// Set 10 minutes ago, as bans made before a listing: BansOf
		// takes one set during its lookups for one it may not have counted.
		fmt.Fprintf(&b, "%s timeout 1h expires 50m comment \"ban %d\"", a, len(in))
		in = append(in, a)
	}
	b.WriteString(" }\n }\n}\n")
	if _, err := r.run(ctx, []byte(b.String()), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	all := append(slices.Clone(out), in...)
	slices.SortFunc(all, netip.Addr.Compare)
	var els []Elem
	var count uint32
	var counted, complete, lessComplete bool
	err := ns.Do(func() error {
		var err error
		if els, err = LookupElements("ban6", all); err != nil {
			return err
		}
		if count, counted, err = SetCount("ban6"); err != nil {
			return err
		}
		if _, complete, err = (NetlinkReader{}).BansOf("ban6", all); err != nil {
			return err
		}
		_, lessComplete, err = NetlinkReader{}.BansOf("ban6", slices.Delete(slices.Clone(all), 7, 8))
		if err != nil {
			return err
		}
		// The one-element lookup the guard makes asks the same.
		for _, c := range []struct {
			a    netip.Addr
			want bool
		}{{in[0], true}, {in[n-1], true}, {out[0], false}} {
			if got, err := (NetlinkReader{}).Banned("ban6", c.a); err != nil || got != c.want {
				return fmt.Errorf("Banned(%s) = %v, %v, want %v", c.a, got, err, c.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !counted {
		t.Skip("this kernel does not count a set's elements (NFTA_SET_COUNT)")
	}
	if count != n {
		t.Errorf("count %d, want %d", count, n)
	}
	if len(els) != n {
		t.Fatalf("%d elements found, want %d", len(els), n)
	}
	got := map[netip.Addr]Elem{}
	for _, e := range els {
		a, _ := netip.AddrFromSlice(e.Key)
		got[a] = e
	}
	for i, a := range in {
		e, ok := got[a]
		if !ok {
			t.Fatalf("%s not found", a)
		}
		if e.Comment != fmt.Sprintf("ban %d", i) || e.Timeout != time.Hour || e.Expires <= 0 || e.Expires > 50*time.Minute {
			t.Errorf("%s: %+v", a, e)
		}
	}
	if !complete {
		t.Error("every element known: not complete")
	}
	if lessComplete {
		t.Error("one element not known: complete")
	}
	if _, err := r.run(ctx, nil, "nft", "add", "element", "inet", "moat", "ban6", "{ 2001:db8:ff::1 }"); err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(func() error {
		_, complete, err = NetlinkReader{}.BansOf("ban6", all)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if complete {
		t.Error("an element added by hand, not known: complete")
	}
	// The kernel's time since an element's timeout was set (what BansOf
	// reads as "added during the lookups") is never more than the time
	// that passed: an element added during the lookups is taken for one.
	// addThenLook adds a to ban6 by hand (with the element's other words
	// after "timeout 1h") and looks it up.
	addThenLook := func(a netip.Addr, more string) []Elem {
		t.Helper()
		if _, err := r.run(ctx, nil, "nft", "add", "element", "inet", "moat", "ban6", "{ "+a.String()+" timeout 1h"+more+" }"); err != nil {
			t.Fatal(err)
		}
		var els []Elem
		if err := ns.Do(func() error {
			var err error
			els, err = LookupElements("ban6", []netip.Addr{a})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return els
	}
	added := netip.MustParseAddr("2001:db8:ff::2")
	start := time.Now()
	els = addThenLook(added, "")
	if len(els) != 1 || !addedSince(els, time.Since(start)+freshSlack) {
		t.Errorf("an element added %s ago: %+v, not taken for one added since", time.Since(start), els)
	}
	// One with a comment was put by a commit (moat's, the guard's).
	made := netip.MustParseAddr("2001:db8:ff::3")
	els = addThenLook(made, ` comment "manual: x"`)
	if len(els) != 1 || addedSince(els, time.Hour) {
		t.Errorf("an element with a comment: %+v, taken for one the packet path added", els)
	}
}
