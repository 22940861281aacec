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
	"unsafe"

	"go4.org/netipx"

	"github.com/moat-fw/moat/internal/netmerge"
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
	return parse(r, file, parseLine)
}

// ParseBytes is Parse of a list in memory, with room made for its lines
// at once (up to 256k: a file of blank lines must not reserve room for
// millions of entries).
func ParseBytes(data []byte, file string) (*List, error) {
	return parseSized(bytes.NewReader(data), file, parseLine, min(bytes.Count(data, []byte("\n"))+1, 1<<18))
}

// parse is Parse with the line reader given (the fuzz test compares the
// fast one with parseLineSlow).
func parse(r io.Reader, file string, lineFn func([]netip.Prefix, []byte) ([]netip.Prefix, string)) (*List, error) {
	return parseSized(r, file, lineFn, 0)
}

func parseSized(r io.Reader, file string, lineFn func([]netip.Prefix, []byte) ([]netip.Prefix, string), size int) (*List, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, MaxLineLen), MaxLineLen)
	l := List{Entries: make([]Entry, 0, size)}
	var buf []netip.Prefix
	line := 0
	for sc.Scan() {
		line++
		text := sc.Bytes()
		if line == 1 {
			text = bytes.TrimPrefix(text, []byte("\xef\xbb\xbf"))
		}
		var msg string
		buf, msg = lineFn(buf[:0], text)
		if msg != "" {
			return nil, &LineError{File: file, Line: line, Msg: msg}
		}
		for _, p := range buf {
			if len(l.Entries) >= MaxEntries {
				return nil, &LineError{File: file, Line: line, Msg: fmt.Sprintf("more than %d entries", MaxEntries)}
			}
			l.Entries = append(l.Entries, Entry{Prefix: p, Line: line})
		}
	}
	if err := sc.Err(); err != nil {
		if err == bufio.ErrTooLong {
			return nil, &LineError{File: file, Line: line + 1, Msg: fmt.Sprintf("line longer than %d bytes", MaxLineLen)}
		}
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	l.V4, l.V6 = merge(l.Entries)
	return &l, nil
}

// merge gives the fewest disjoint prefixes that cover the entries, IPv4
// and IPv6 apart, each in address order (netmerge: what
// netipx.IPSet.Prefixes gives, TestMergeSameAsIPSet and the fuzz tests).
func merge(entries []Entry) (v4, v6 []netip.Prefix) {
	ps := make([]netip.Prefix, len(entries))
	for i, e := range entries {
		ps[i] = e.Prefix
	}
	if netmerge.IsMerged(ps) {
		return netmerge.Split(ps) // a list merged already (in order, disjoint): ps is its own copy
	}
	return netmerge.Split(netmerge.Merge(ps))
}

const want = "expected an address, a CIDR (192.0.2.0/24, 2001:db8::/32) or a range (192.0.2.1-192.0.2.9), then an optional '#' or ';' comment"

// parseLine reads one line, appending its networks to dst; it adds none
// for a blank or comment line and returns a message for a malformed one.
// A plain line (an address or CIDR, ASCII blanks around it, an optional
// comment) is read without copying it; every other line goes the general
// way (parseLineSlow). Both give the same networks and messages
// (FuzzParseFastSameAsSlow).
func parseLine(dst []netip.Prefix, text []byte) ([]netip.Prefix, string) {
	end := len(text)
	for i, c := range text {
		if c == '#' || c == ';' {
			end = i
			break
		}
	}
	start := 0
	for start < end && asciiSpace(text[start]) {
		start++
	}
	for end > start && asciiSpace(text[end-1]) {
		end--
	}
	if start == end {
		// Blank before any comment: the slow path decides (a comment
		// line, or a line of unicode blanks).
		return parseLineSlow(dst, text)
	}
	slash := false
	for _, c := range text[start:end] {
		if !plainByte(c) {
			return parseLineSlow(dst, text)
		}
		slash = slash || c == '/'
	}
	// Read in place, not copied (100,000 small strings at 100,000
	// lines): parseNet keeps nothing of s once it returns (its messages
	// are formatted copies; a zone, the one part of an address netip
	// keeps, cannot be in a plain line). A plain line holds no range and
	// no zone: parseEntry's search for them is left out.
	return parseNet(dst, unsafe.String(&text[start], end-start), slash)
}

func asciiSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// plainByte: a byte of an address or CIDR (no range, zone or JSON).
func plainByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '.' || c == ':' || c == '/'
}

// parseLineSlow is the general reader of a line (see parseLine).
func parseLineSlow(dst []netip.Prefix, text []byte) ([]netip.Prefix, string) {
	s := strings.TrimSpace(string(text))
	if s == "" || s[0] == '#' || s[0] == ';' {
		return dst, ""
	}
	if s[0] == '{' {
		return parseJSONLine(dst, s)
	}
	if i := strings.IndexAny(s, "#;"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	// ipset save style "add SET ENTRY" and tab-separated extra columns are
	// not lists; only one field is allowed.
	if strings.ContainsAny(s, " \t") {
		a, b, ok := strings.Cut(s, "-")
		if !ok {
			return dst, fmt.Sprintf("bad entry %q: %s", clip(s), want)
		}
		s = strings.TrimSpace(a) + "-" + strings.TrimSpace(b)
		if strings.ContainsAny(s, " \t") {
			return dst, fmt.Sprintf("bad entry %q: %s", clip(s), want)
		}
	}
	return parseEntry(dst, s)
}

func parseEntry(dst []netip.Prefix, s string) ([]netip.Prefix, string) {
	bad := func() string { return fmt.Sprintf("bad entry %q: %s", clip(s), want) }
	if strings.Contains(s, "%") {
		return dst, fmt.Sprintf("bad entry %q: scoped addresses (%%zone) cannot be blocked", clip(s))
	}
	if first, last, ok := strings.Cut(s, "-"); ok {
		a, err1 := netip.ParseAddr(first)
		b, err2 := netip.ParseAddr(last)
		if err1 != nil || err2 != nil {
			return dst, bad()
		}
		a, b = a.Unmap(), b.Unmap()
		if a.Is4() != b.Is4() {
			return dst, fmt.Sprintf("bad range %q: both ends must be of one IP version", clip(s))
		}
		r := netipx.IPRangeFrom(a, b)
		if !r.IsValid() {
			return dst, fmt.Sprintf("bad range %q: the first address must not be above the last", clip(s))
		}
		return r.AppendPrefixes(dst), ""
	}
	return parseNet(dst, s, strings.Contains(s, "/"))
}

// parseNet reads an address, or a network (slash: s holds a '/'), that
// holds no range and no zone (parseEntry).
func parseNet(dst []netip.Prefix, s string, slash bool) ([]netip.Prefix, string) {
	bad := func() string { return fmt.Sprintf("bad entry %q: %s", clip(s), want) }
	if slash {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return dst, bad()
		}
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				return dst, fmt.Sprintf("bad entry %q: an IPv4-mapped network shorter than /96", clip(s))
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return append(dst, p.Masked()), ""
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return dst, bad()
	}
	a = a.Unmap()
	return append(dst, netip.PrefixFrom(a, a.BitLen())), ""
}

// parseJSONLine reads Spamhaus' JSON form: one object a line with a "cidr"
// member; the closing metadata line has none and is skipped.
func parseJSONLine(dst []netip.Prefix, s string) ([]netip.Prefix, string) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &obj); err != nil {
		return dst, fmt.Sprintf("bad JSON line %q: %v", clip(s), err)
	}
	raw, ok := obj["cidr"]
	if !ok {
		return dst, ""
	}
	var cidr string
	if err := json.Unmarshal(raw, &cidr); err != nil || cidr == "" || strings.ContainsAny(cidr, " -") {
		return dst, fmt.Sprintf("bad JSON line %q: \"cidr\" must be a CIDR string", clip(s))
	}
	return parseEntry(dst, cidr)
}

// clip shortens hostile text for a message.
func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}
