package policy

import (
	"regexp"
	"strings"
	"testing"
)

// appNameExamples are names at every edge of appNameRE: the first
// character, each allowed and refused punctuation, the length limit,
// non-ASCII letters and digits, line ends (where `$` must not match
// before a newline), NUL.
var appNameExamples = []string{
	"", "a", "Z", "0", " ", "_", "-a", ".a", "(a)", "a b", "a_b", "a.b", "a+b", "a(b)", "a-b",
	"OpenSSH", "Apache Full", "WWW Secure", "Nginx HTTP(S)", "a/b", "a\\b", "a:b", "a,b", "a;b",
	"a\n", "a\nb", "\na", "a\r", "a\t", "a\x00", "a\x7f", "é", "aé", "a٣", "ａ", "a\u00a0b",
	strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a", 65), "a" + strings.Repeat(" ", 63),
	"a" + strings.Repeat(" ", 64), strings.Repeat("é", 32), "a" + strings.Repeat("é", 31),
}

func TestValidAppNameIsTheRegexp(t *testing.T) {
	re := regexp.MustCompile(appNameRE)
	for _, name := range appNameExamples {
		if got, want := validAppName(name), re.MatchString(name); got != want {
			t.Errorf("validAppName(%q) = %v, the regexp %s says %v", name, got, appNameRE, want)
		}
	}
	// Every one- and two-byte name.
	var b [2]byte
	for i := range 256 {
		b[0] = byte(i)
		if got, want := validAppName(string(b[:1])), re.Match(b[:1]); got != want {
			t.Errorf("validAppName(%q) = %v, the regexp says %v", b[:1], got, want)
		}
		for j := range 256 {
			b[1] = byte(j)
			if got, want := validAppName(string(b[:])), re.Match(b[:]); got != want {
				t.Errorf("validAppName(%q) = %v, the regexp says %v", b[:], got, want)
			}
		}
	}
}

// FuzzValidAppName holds validAppName to appNameRE on any text.
func FuzzValidAppName(f *testing.F) {
	for _, name := range appNameExamples {
		f.Add(name)
	}
	re := regexp.MustCompile(appNameRE)
	f.Fuzz(func(t *testing.T, name string) {
		if got, want := validAppName(name), re.MatchString(name); got != want {
			t.Errorf("validAppName(%q) = %v, the regexp %s says %v", name, got, appNameRE, want)
		}
	})
}
