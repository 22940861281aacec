package policy

import (
	"net/netip"
	"strings"
	"testing"
)

var parseAddrSeeds = []string{
	"any", "ANY", "192.0.2.1", "192.0.2.0/24", "192.0.2.1/24", "192.0.2.0/024", "192.0.2.0/33", "192.0.2.0/-1",
	"192.0.2.0/+8", "192.0.2.0/", "/24", "192.0.2.0/24/8", "192.0.2.0/255.255.255.0", "192.0.2.0/255.0.255.0",
	"2001:db8::/32", "2001:db8::1/64", "2001:db8::/129", "2001:db8::/0", "::ffff:192.0.2.1", "::ffff:192.0.2.0/120",
	"fe80::1%eth0", "fe80::1%eth0/64", "2001:db8::/0x20", "2001:db8::/ 32", "1.2.3.4/32", "0.0.0.0/0", "::/0",
	"2001:db8::/00", "2001:0db8:0000::/48", "1.2.3.04", "1.2.3.4/٣", "2001:db8::/1_0",
	// Lengths past the address's and past an int, blanks, hostile bytes,
	// IPv4-mapped networks and embedded IPv4, a zone after the length.
	"192.0.2.0/4294967328", "2001:db8::/18446744073709551744", "192.0.2.0/ 24", " 192.0.2.0/24", "192.0.2.0/24 ",
	"192.0.2.0\x00/24", "192.0.2.0/2\x004", "\xff/8", "::ffff:192.0.2.0/96", "::ffff:0.0.0.0/0", "::ffff:192.0.2.0/95",
	"64:ff9b::192.0.2.1/128", "::192.0.2.1/128", "2001:db8::/32%eth0", "192.0.2.0/24/", "0/0", "::/", "1.2.3.4/32.0",
	"192.0.2.0/255.255.255.255", "192.0.2.0/0.0.0.0", "2001:db8::/255.255.0.0", "192.0.2.0/+24", "192.0.2.0/-0",
}

// checkParseAddrAt holds parseAddrAt, which builds a CIDR's network from
// the address it parsed (netip.PrefixFrom), to netip.ParsePrefix, which
// it used before and which parses the text again: for a CIDR with a
// decimal length, either both take it, as the same masked network, or
// parseAddrAt says why not (a zone, an IPv4-mapped address: refused
// whatever ParsePrefix says).
func checkParseAddrAt(t *testing.T, s string) {
	t.Helper()
	p, col, msg := parseAddrAt(s)
	if msg == "" && col != 0 {
		t.Fatalf("parseAddrAt(%q): column %d without an error", s, col)
	}
	addrText, bitsText, isCIDR := strings.Cut(s, "/")
	if !isCIDR || strings.Contains(bitsText, ".") || strings.EqualFold(s, "any") {
		return // no second parse to agree with (a dotted netmask is rewritten first)
	}
	pp, err := netip.ParsePrefix(s)
	switch {
	case msg == "" && err != nil:
		t.Fatalf("parseAddrAt(%q) = %v; netip.ParsePrefix refuses it: %v", s, p, err)
	case msg == "" && pp.Masked() != p:
		t.Fatalf("parseAddrAt(%q) = %v; netip.ParsePrefix: %v", s, p, pp.Masked())
	case msg != "" && err == nil && !pp.Addr().Is4In6() && !strings.Contains(addrText, "%"):
		t.Fatalf("parseAddrAt(%q) refuses it (%s); netip.ParsePrefix takes it: %v", s, msg, pp)
	}
}

func TestParseAddrAtSameAsParsePrefix(t *testing.T) {
	for _, s := range parseAddrSeeds {
		checkParseAddrAt(t, s)
	}
}

func FuzzParseAddrAt(f *testing.F) {
	for _, s := range parseAddrSeeds {
		f.Add(s)
	}
	f.Fuzz(checkParseAddrAt)
}
