// Package termtext keeps text that others write (names and comments read
// from the kernel, profile files) from steering the admin's terminal.
package termtext

import (
	"strings"
	"unicode/utf8"
)

// Printable drops control characters (C0, DEL, C1: escape sequences start
// with them) and bidirectional controls (they show text in another order
// than it has).
func Printable(s string) string {
	return strings.Map(func(r rune) rune {
		if Dropped(r) {
			return -1
		}
		return r
	}, s)
}

// AppendPrintable appends Printable(s) to dst (invalid UTF-8 as U+FFFD,
// as Printable writes it).
func AppendPrintable(dst []byte, s string) []byte {
	for _, r := range s {
		if !Dropped(r) {
			dst = utf8.AppendRune(dst, r)
		}
	}
	return dst
}

// Dropped says whether Printable drops r: a control character or a
// bidirectional control.
func Dropped(r rune) bool {
	return r < 0x20 || (r >= 0x7f && r <= 0x9f) || IsBidi(r)
}

// IsBidi says whether r is a bidirectional embedding, override or isolate
// control, or an invisible direction mark.
func IsBidi(r rune) bool {
	return (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) ||
		r == 0x200e || r == 0x200f || r == 0x061c
}
