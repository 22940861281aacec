// Package netmerge merges lists of networks into the fewest disjoint
// prefixes, as netipx.IPSet does, in one sort and one pass: a blocklist of
// 100,000 networks is merged without IPSetBuilder's copies.
package netmerge

import (
	"net/netip"
	"slices"

	"go4.org/netipx"
)

// Merge gives the fewest disjoint prefixes that cover ps, IPv4 first, each
// family in address order: what netipx.IPSet.Prefixes gives for the same
// prefixes (an invalid prefix, which IPSetBuilder reports as an error, is skipped). The
// networks become ranges, sorted; overlapping or adjacent ones join; a
// joined range is split into prefixes again, a network that joined none
// stays as it is.
func Merge(ps []netip.Prefix) []netip.Prefix {
	type item struct {
		r netipx.IPRange
		p netip.Prefix
	}
	items := make([]item, 0, len(ps))
	for _, p := range ps {
		if r := netipx.RangeOfPrefix(p); r.IsValid() {
			items = append(items, item{r, p.Masked()})
		}
	}
	if len(items) == 0 {
		return nil
	}
	sorted := slices.IsSortedFunc(items, func(a, b item) int { return compareRange(a.r, b.r) })
	if !sorted {
		slices.SortFunc(items, func(a, b item) int { return compareRange(a.r, b.r) })
	}
	out := make([]netip.Prefix, 0, len(items))
	cur, single := items[0].r, items[0].p
	flush := func() {
		if single.IsValid() {
			out = append(out, single)
		} else {
			out = cur.AppendPrefixes(out)
		}
	}
	for _, it := range items[1:] {
		from, to := it.r.From(), cur.To()
		if from.BitLen() != to.BitLen() || from.Compare(to) > 0 && from != to.Next() {
			flush()
			cur, single = it.r, it.p
			continue
		}
		if it.r.To().Compare(to) > 0 {
			cur = netipx.IPRangeFrom(cur.From(), it.r.To())
			single = netip.Prefix{}
		}
		// A network inside the one before adds nothing: cur stays, and so
		// does its single prefix.
	}
	flush()
	return out
}

func compareRange(a, b netipx.IPRange) int {
	if c := a.From().Compare(b.From()); c != 0 {
		return c
	}
	return a.To().Compare(b.To())
}

// Split cuts merged prefixes (IPv4 first) into the two families.
func Split(merged []netip.Prefix) (v4, v6 []netip.Prefix) {
	n4 := 0
	for n4 < len(merged) && merged[n4].Addr().Is4() {
		n4++
	}
	if n4 > 0 {
		v4 = merged[:n4:n4]
	}
	if n4 < len(merged) {
		v6 = merged[n4:]
	}
	return v4, v6
}

// Overlaps tells whether p shares an address with any of merged (as Merge
// gives them: disjoint and in order).
func Overlaps(merged []netip.Prefix, p netip.Prefix) bool {
	if !p.IsValid() {
		return false
	}
	r := netipx.RangeOfPrefix(p)
	// The first network that ends at or after p's start.
	i, _ := slices.BinarySearchFunc(merged, r.From(), func(m netip.Prefix, a netip.Addr) int {
		return netipx.RangeOfPrefix(m).To().Compare(a)
	})
	return i < len(merged) && merged[i].Overlaps(p)
}
