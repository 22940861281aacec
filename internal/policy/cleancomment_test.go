package policy

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzCleanComment: whatever the text, the cleaned comment is one the
// parser takes, and valid UTF-8 it takes already is kept as it is
// (invalid bytes become U+FFFD).
func FuzzCleanComment(f *testing.F) {
	for _, s := range []string{"web server", "it's \"$HOME\"", "a\u009bb\u202ec", strings.Repeat("é", 80), "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := CleanComment(s)
		if msg := checkComment(c); msg != "" {
			t.Fatalf("CleanComment(%q) = %q: %s", s, c, msg)
		}
		if utf8.ValidString(s) && checkComment(s) == "" && c != s {
			t.Fatalf("CleanComment(%q) = %q changed a valid comment", s, c)
		}
	})
}
