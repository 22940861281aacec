package drift

import "testing"

// TestAddrsDiff: the same addresses however written are no difference
// (the shortcut when both sets are equal), and a difference still names
// what was added and taken, and elements that are not addresses.
func TestAddrsDiff(t *testing.T) {
	for _, c := range []struct{ want, got, diff string }{
		{"192.0.2.0/24, 2001:db8::/64", "192.0.2.128/25, 192.0.2.0/25, 2001:db8::/65, 2001:db8::8000:0:0:0/65", ""},
		{"192.0.2.0/24", "192.0.2.0-192.0.2.255", ""},
		{"192.0.2.0/24", "192.0.2.0/24, 198.51.100.7", "+198.51.100.7/32"},
		{"192.0.2.0/24", "192.0.2.0/25", "-192.0.2.128/25"},
		{"192.0.2.0/24, x", "192.0.2.0/24, y", "other elements: +y"},
		{"192.0.2.0/24, x", "192.0.2.0/24", "other elements"},
		{"192.0.2.0/24, x", "192.0.2.0/24, x", ""},
		{"", "", ""},
	} {
		var w, g addrs
		w.addText(c.want)
		g.addText(c.got)
		if d := w.diff(&g); d != c.diff {
			t.Errorf("%q against %q: %q, want %q", c.want, c.got, d, c.diff)
		}
	}
}
