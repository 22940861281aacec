package blocklist

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
)

// DefaultMaxShare is the largest share of an IP version's address space a
// list may cover: half of it (a /1). Real lists cover far less (Spamhaus
// DROP: about 0.4% of IPv4; FireHOL level1 with its bogons: about 14%).
const DefaultMaxShare = 0.5

// Protect is what a list must never cover.
type Protect struct {
	// Sessions are the client addresses of the admin's live SSH sessions.
	Sessions []netip.Addr
	// MaxShare is the cap on the share of one family's address space (0:
	// DefaultMaxShare).
	MaxShare float64
}

// RefusedError says why a list was not loaded.
type RefusedError struct {
	Name   string
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("blocklist %s refused: %s", e.Name, e.Reason)
}

// Check refuses a list that would cut the admin's live SSH session or that
// covers an implausible share of the address space (a list gone wrong, or
// hostile). Loopback and the allowlist need no refusal: loopback traffic is
// accepted before any list is looked at, and the allowlist is taken out of
// every list before it reaches the kernel.
func Check(name string, l *List, pr Protect) error {
	for _, a := range pr.Sessions {
		a = a.Unmap()
		for _, e := range l.Entries {
			if e.Prefix.Contains(a) {
				return &RefusedError{Name: name, Reason: fmt.Sprintf("line %d (%s) covers your live SSH session from %s", e.Line, e.Prefix, a)}
			}
		}
	}
	max := pr.MaxShare
	if max <= 0 {
		max = DefaultMaxShare
	}
	for _, fam := range []struct {
		name     string
		prefixes []netip.Prefix
	}{{"IPv4", l.V4}, {"IPv6", l.V6}} {
		share := Share(fam.prefixes)
		if share > max {
			return &RefusedError{Name: name, Reason: fmt.Sprintf("it covers %.1f%% of the %s address space (at most %.0f%% is plausible for a blocklist)",
				100*share, fam.name, 100*max)}
		}
	}
	return nil
}

// Share is the fraction of their family's address space that disjoint
// prefixes of one family cover (a /8 of IPv4 is 1/256, as is a /8 of IPv6).
func Share(prefixes []netip.Prefix) float64 {
	var s float64
	for _, p := range prefixes {
		s += math.Ldexp(1, -p.Bits())
	}
	return s
}

// Describe writes a short summary of a list: "1234 networks (IPv4 1200, IPv6 34)".
func Describe(l *List) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d networks (IPv4 %d, IPv6 %d)", len(l.V4)+len(l.V6), len(l.V4), len(l.V6))
	return b.String()
}

// Diff compares two merged prefix lists (as List.Prefixes gives them) and
// returns what to add to old and delete from it to get new, each in the
// order of its list. Lists in order (as merged lists are) are walked side
// by side; others go through a map.
func Diff(old, new []netip.Prefix) (add, del []netip.Prefix) {
	if sortedPrefixes(old) && sortedPrefixes(new) {
		i, j := 0, 0
		for i < len(old) && j < len(new) {
			switch c := comparePrefix(old[i], new[j]); {
			case c == 0:
				i++
				j++
			case c < 0:
				del = append(del, old[i])
				i++
			default:
				add = append(add, new[j])
				j++
			}
		}
		return append(add, new[j:]...), append(del, old[i:]...)
	}
	in := make(map[netip.Prefix]struct{}, len(old))
	for _, p := range old {
		in[p] = struct{}{}
	}
	keep := make(map[netip.Prefix]struct{}, len(new))
	for _, p := range new {
		keep[p] = struct{}{}
		if _, ok := in[p]; !ok {
			add = append(add, p)
		}
	}
	for _, p := range old {
		if _, ok := keep[p]; !ok {
			del = append(del, p)
		}
	}
	return add, del
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// sortedPrefixes: each prefix strictly after the one before.
func sortedPrefixes(ps []netip.Prefix) bool {
	for i := 1; i < len(ps); i++ {
		if comparePrefix(ps[i-1], ps[i]) >= 0 {
			return false
		}
	}
	return true
}
