package termtext

import "testing"

// Printable drops terminal controls, and escapes the characters that
// break a line: text others wrote stays in the line moat prints it in.
func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"MOAT-input":                     "MOAT-input",
		"\x1b]0;owned\x07chain":          "]0;ownedchain",
		"a\x1b[2Jb\r\nc\x7f\u009bd":      "a[2Jb\\r\\ncd",
		"user\nmoat: banned 192.0.2.9":   "user\\nmoat: banned 192.0.2.9",
		"a\vb\fc\u0085d\u2028e\u2029f":   "a\\vb\\fc\\u0085d\\u2028e\\u2029f",
		"tab\there":                      "tabhere",
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

// TestCut: a cut never splits a character, and says when it cut.
func TestCut(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int
		want string
		cut  bool
	}{
		{"abc", 3, "abc", false}, {"abcd", 3, "abc", true}, {"aé", 2, "a", true}, {"aé", 3, "aé", false},
		{"€€", 4, "€", true}, {"€", 0, "", true}, {"", 0, "", false},
	} {
		if got, cut := Cut(c.s, c.n); got != c.want || cut != c.cut {
			t.Errorf("Cut(%q, %d) = %q, %v; want %q, %v", c.s, c.n, got, cut, c.want, c.cut)
		}
	}
}
