package cli

import (
	"strings"
	"testing"
)

// A ban's reason is an element comment anyone with nft or ipset can
// write ('nft add element inet moat ban4 { 192.0.2.9 comment "..." }'):
// 'moat bans' prints no escape sequence of it, and no line break that
// would fake a row of the table.
func TestBanTableHostileReason(t *testing.T) {
	var out strings.Builder
	list := []banJSON{
		{Address: "192.0.2.9", Reason: "x\x1b]0;owned\x07\x1b[2J\n203.0.113.1  1h  1  manual\u202e", SecondsLeft: 60, BanCount: 1},
		{Address: "2001:db8::9", Reason: "manual: ok", SecondsLeft: 0, BanCount: 2},
	}
	if err := writeBanTable(&out, list); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if strings.ContainsAny(got, "\x1b\x07\u202e") {
		t.Errorf("control characters printed: %q", got)
	}
	if lines := strings.Count(got, "\n"); lines != 3 {
		t.Errorf("%d lines, want a header and 2 rows: %q", lines, got)
	}
	if !strings.Contains(got, "manual: ok") {
		t.Errorf("a plain reason is not printed as it is: %q", got)
	}
}
