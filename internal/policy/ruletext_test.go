package policy

import "testing"

var ruleTextCases = []string{
	"allow 22/tcp",
	"  allow 22/tcp  \t\r",
	"allow 22/tcp # ssh",
	"allow from 'a b' to any",
	"allow from \"x\" ",
	"allow from 'unterminated",
	"allow fr'om",
	"deny 80\u00a0",
	"\u00a0deny 80\u0085",
	"deny\v80",
	"deny\f",
	"deny \x9b31m",
	"deny \xff\xfe",
	"",
	"   ",
	"#",
	"allow 'a'b",
	"allow 'a'#c",
	"allow ünï 22",
}

// ruleText's shortcut for lines without a comment gives what lexing gives.
func TestRuleTextShortcut(t *testing.T) {
	for _, line := range ruleTextCases {
		if got, want := ruleText(line), ruleTextLexed(line); got != want {
			t.Errorf("ruleText(%q) = %q, lexed %q", line, got, want)
		}
	}
}

func FuzzRuleText(f *testing.F) {
	for _, line := range ruleTextCases {
		f.Add(line)
	}
	f.Fuzz(func(t *testing.T, line string) {
		if got, want := ruleText(line), ruleTextLexed(line); got != want {
			t.Errorf("ruleText(%q) = %q, lexed %q", line, got, want)
		}
	})
}
