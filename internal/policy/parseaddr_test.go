package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// parseAddrAtParsePrefix is parseAddrAt as it was before it built a
// network from the address it parsed: it parsed the text again with
// netip.ParsePrefix. FuzzParseAddrAt holds the two equal.
func parseAddrAtParsePrefix(s string) (netip.Prefix, int, string) {
	if strings.EqualFold(s, "any") {
		return netip.Prefix{}, 0, ""
	}
	if strings.Contains(s, "%") {
		return netip.Prefix{}, 0, fmt.Sprintf("bad address '%s': scoped addresses (%%zone) cannot be filtered; use 'in on IFACE'", s)
	}
	var pfx netip.Prefix
	if addrText, bitsText, ok := strings.Cut(s, "/"); ok {
		a, err := netip.ParseAddr(addrText)
		if err != nil {
			return netip.Prefix{}, 0, fmt.Sprintf("bad address '%s': expected any, an IP address or a CIDR such as 203.0.113.0/24 or 2001:db8::/32", s)
		}
		if strings.Contains(bitsText, ".") {
			bits, msg := netmaskBits(a, bitsText)
			if msg != "" {
				return netip.Prefix{}, len(addrText) + 1, fmt.Sprintf("bad address '%s': %s", s, msg)
			}
			bitsText = strconv.Itoa(bits)
			s = addrText + "/" + bitsText
		}
		_, ok = parseCount(bitsText, 0, a.BitLen())
		if !ok || (len(bitsText) > 1 && bitsText[0] == '0') {
			return netip.Prefix{}, len(addrText) + 1, fmt.Sprintf("bad address '%s': prefix length '%s' is out of range: expected 0 to %d for an IPv%d address", s, bitsText, a.BitLen(), map[int]int{32: 4, 128: 6}[a.BitLen()])
		}
		pp, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, 0, fmt.Sprintf("bad address '%s': expected any, an IP address or a CIDR such as 203.0.113.0/24 or 2001:db8::/32", s)
		}
		pfx = pp.Masked()
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, 0, fmt.Sprintf("bad address '%s': expected any, an IP address or a CIDR such as 203.0.113.0/24 or 2001:db8::/32", s)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx.Addr().Is4In6() {
		return netip.Prefix{}, 0, fmt.Sprintf("bad address '%s': IPv4-mapped IPv6 addresses are not filtered as such; write the IPv4 address", s)
	}
	return pfx, 0, ""
}

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

func checkParseAddrAt(t *testing.T, s string) {
	t.Helper()
	p, col, msg := parseAddrAt(s)
	wp, wcol, wmsg := parseAddrAtParsePrefix(s)
	if p != wp || col != wcol || msg != wmsg {
		t.Fatalf("parseAddrAt(%q) = %v, %d, %q; ParsePrefix's: %v, %d, %q", s, p, col, msg, wp, wcol, wmsg)
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
