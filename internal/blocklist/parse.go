// Package blocklist reads lists of networks to block (Spamhaus DROP and
// EDROP, FireHOL .netset, ipdeny .zone files, plain address lists), merges
// them, checks that they are safe to load, fetches them over HTTPS with
// conditional requests, and keeps the last good copy in moat's state
// directory.
package blocklist

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"go4.org/netipx"
)

// MaxLineLen bounds a list line; no entry comes close.
const MaxLineLen = 4096

// MaxEntries bounds how many entries one list may hold.
const MaxEntries = 2_000_000

// Entry is one network of a list with the line it came from.
type Entry struct {
	Prefix netip.Prefix
	Line   int
}

// List is a parsed list: its entries as written (ranges split into
// prefixes), and the same networks merged into the fewest disjoint
// prefixes, IPv4 and IPv6 apart.
type List struct {
	Entries []Entry
	V4, V6  []netip.Prefix
}

// Prefixes is the merged list, IPv4 first.
func (l *List) Prefixes() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(l.V4)+len(l.V6))
	return append(append(out, l.V4...), l.V6...)
}

// LineError is a malformed line of a list.
type LineError struct {
	File string
	Line int
	Msg  string
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// Parse reads a list. Each line holds one entry: an address, a CIDR, or a
// range FIRST-LAST, optionally followed by a comment starting with '#' or
// ';' (Spamhaus writes "192.0.2.0/24 ; SBL123"); blank and comment lines
// are skipped. Spamhaus' JSON lines ({"cidr":"192.0.2.0/24",...}) are read
// too. A malformed line refuses the whole list: the error names the file
// and line.
func Parse(r io.Reader, file string) (*List, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, MaxLineLen), MaxLineLen)
	var l List
	var b netipx.IPSetBuilder
	line := 0
	for sc.Scan() {
		line++
		text := sc.Bytes()
		if line == 1 {
			text = bytes.TrimPrefix(text, []byte("\xef\xbb\xbf"))
		}
		prefixes, msg := parseLine(text)
		if msg != "" {
			return nil, &LineError{File: file, Line: line, Msg: msg}
		}
		for _, p := range prefixes {
			if len(l.Entries) >= MaxEntries {
				return nil, &LineError{File: file, Line: line, Msg: fmt.Sprintf("more than %d entries", MaxEntries)}
			}
			l.Entries = append(l.Entries, Entry{Prefix: p, Line: line})
			b.AddPrefix(p)
		}
	}
	if err := sc.Err(); err != nil {
		if err == bufio.ErrTooLong {
			return nil, &LineError{File: file, Line: line + 1, Msg: fmt.Sprintf("line longer than %d bytes", MaxLineLen)}
		}
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	set, err := b.IPSet()
	if err != nil {
		return nil, fmt.Errorf("merge %s: %w", file, err)
	}
	for _, p := range set.Prefixes() {
		if p.Addr().Is4() {
			l.V4 = append(l.V4, p)
		} else {
			l.V6 = append(l.V6, p)
		}
	}
	return &l, nil
}

const want = "expected an address, a CIDR (192.0.2.0/24, 2001:db8::/32) or a range (192.0.2.1-192.0.2.9), then an optional '#' or ';' comment"

// parseLine reads one line; it returns no prefixes for a blank or comment
// line and a message for a malformed one.
func parseLine(text []byte) ([]netip.Prefix, string) {
	s := strings.TrimSpace(string(text))
	if s == "" || s[0] == '#' || s[0] == ';' {
		return nil, ""
	}
	if s[0] == '{' {
		return parseJSONLine(s)
	}
	if i := strings.IndexAny(s, "#;"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	// ipset save style "add SET ENTRY" and tab-separated extra columns are
	// not lists; only one field is allowed.
	if strings.ContainsAny(s, " \t") {
		a, b, ok := strings.Cut(s, "-")
		if !ok {
			return nil, fmt.Sprintf("bad entry %q: %s", clip(s), want)
		}
		s = strings.TrimSpace(a) + "-" + strings.TrimSpace(b)
		if strings.ContainsAny(s, " \t") {
			return nil, fmt.Sprintf("bad entry %q: %s", clip(s), want)
		}
	}
	return parseEntry(s)
}

func parseEntry(s string) ([]netip.Prefix, string) {
	bad := fmt.Sprintf("bad entry %q: %s", clip(s), want)
	if strings.Contains(s, "%") {
		return nil, fmt.Sprintf("bad entry %q: scoped addresses (%%zone) cannot be blocked", clip(s))
	}
	if first, last, ok := strings.Cut(s, "-"); ok {
		a, err1 := netip.ParseAddr(first)
		b, err2 := netip.ParseAddr(last)
		if err1 != nil || err2 != nil {
			return nil, bad
		}
		a, b = a.Unmap(), b.Unmap()
		if a.Is4() != b.Is4() {
			return nil, fmt.Sprintf("bad range %q: both ends must be of one IP version", clip(s))
		}
		r := netipx.IPRangeFrom(a, b)
		if !r.IsValid() {
			return nil, fmt.Sprintf("bad range %q: the first address must not be above the last", clip(s))
		}
		return r.Prefixes(), ""
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, bad
		}
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				return nil, fmt.Sprintf("bad entry %q: an IPv4-mapped network shorter than /96", clip(s))
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return []netip.Prefix{p.Masked()}, ""
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return nil, bad
	}
	a = a.Unmap()
	return []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}, ""
}

// parseJSONLine reads Spamhaus' JSON form: one object a line with a "cidr"
// member; the closing metadata line has none and is skipped.
func parseJSONLine(s string) ([]netip.Prefix, string) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &obj); err != nil {
		return nil, fmt.Sprintf("bad JSON line %q: %v", clip(s), err)
	}
	raw, ok := obj["cidr"]
	if !ok {
		return nil, ""
	}
	var cidr string
	if err := json.Unmarshal(raw, &cidr); err != nil || cidr == "" || strings.ContainsAny(cidr, " -") {
		return nil, fmt.Sprintf("bad JSON line %q: \"cidr\" must be a CIDR string", clip(s))
	}
	return parseEntry(cidr)
}

// clip shortens hostile text for a message.
func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}
