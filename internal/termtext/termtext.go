// Package termtext keeps text that others write (names and comments read
// from the kernel, profile files) from steering the admin's terminal.
package termtext

import (
	"unicode/utf8"
)

// Printable drops control characters (C0, DEL, C1: escape sequences start
// with them) and bidirectional controls (they show text in another order
// than it has), and writes the characters that break a line (line feed,
// carriage return, vertical tab, form feed, NEL, the line and paragraph
// separators) as escapes: \n, \r, \v, \f, \u0085, \u2028, \u2029. Text
// others wrote, printed inside one of moat's lines, then stays inside it
// (a line feed in a user name cannot start a line that looks like
// moat's), and what it held shows.
func Printable(s string) string {
	clean := true
	for _, r := range s {
		if Dropped(r) || r == utf8.RuneError {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	return string(AppendPrintable(make([]byte, 0, len(s)+8), s))
}

// AppendPrintable appends Printable(s) to dst (invalid UTF-8 as U+FFFD,
// as Printable writes it).
func AppendPrintable(dst []byte, s string) []byte {
	for _, r := range s {
		if e := lineBreak(r); e != "" {
			dst = append(dst, e...)
		} else if !Dropped(r) {
			dst = utf8.AppendRune(dst, r)
		}
	}
	return dst
}

// lineBreak is the escape Printable writes for a character that breaks a
// line ("" for any other).
func lineBreak(r rune) string {
	switch r {
	case '\n':
		return `\n`
	case '\r':
		return `\r`
	case '\v':
		return `\v`
	case '\f':
		return `\f`
	case 0x85:
		return `\u0085`
	case 0x2028:
		return `\u2028`
	case 0x2029:
		return `\u2029`
	}
	return ""
}

// Dropped says whether r is a control character, a bidirectional control
// or a line or paragraph separator (U+2028, U+2029: some terminals and
// log viewers start a line at them): Printable drops it, or escapes it
// when it breaks a line (lineBreak), and Writer drops it but for '\n'
// and '\t'.
func Dropped(r rune) bool {
	return r < 0x20 || (r >= 0x7f && r <= 0x9f) || IsBidi(r) || r == 0x2028 || r == 0x2029
}

// IsBidi says whether r is a bidirectional embedding, override or isolate
// control, or an invisible direction mark.
func IsBidi(r rune) bool {
	return (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) ||
		r == 0x200e || r == 0x200f || r == 0x061c
}

// Cut is s cut to at most n bytes at a character boundary (a message
// that quotes text of any length quotes its start), and whether it was.
func Cut(s string, n int) (string, bool) {
	if len(s) <= n {
		return s, false
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n], true
}
