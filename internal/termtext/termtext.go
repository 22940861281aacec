// Package termtext keeps text that others write (names and comments read
// from the kernel, profile files) from steering the admin's terminal.
package termtext

import "strings"

// Printable drops control characters (C0, DEL, C1: escape sequences start
// with them) and bidirectional controls (they show text in another order
// than it has).
func Printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) || IsBidi(r) {
			return -1
		}
		return r
	}, s)
}

// IsBidi says whether r is a bidirectional embedding, override or isolate
// control, or an invisible direction mark.
func IsBidi(r rune) bool {
	return (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) ||
		r == 0x200e || r == 0x200f || r == 0x061c
}
