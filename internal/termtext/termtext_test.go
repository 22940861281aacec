package termtext

import "testing"

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"MOAT-input":                     "MOAT-input",
		"\x1b]0;owned\x07chain":          "]0;ownedchain",
		"a\x1b[2Jb\r\nc\x7f\u009bd":      "a[2Jbcd",
		"evil\u202egnp.exe\u2066x\u2069": "evilgnp.exex",
		"\u200fmark\u061c":               "mark",
		"café ✓":                         "café ✓",
		"bad \xff utf8":                  "bad \ufffd utf8",
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
		if got := string(AppendPrintable([]byte("> "), in)); got != "> "+want {
			t.Errorf("AppendPrintable(%q) = %q, want %q", in, got, "> "+want)
		}
	}
}
