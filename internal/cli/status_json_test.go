package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
)

// TestWriteStatusJSONSameBytes: the rule-at-a-time writer prints what
// encoding/json's indenting encoder prints for the whole report, byte for
// byte, with hostile text in every string (a config path that reads like
// the rules field, HTML, line and paragraph separators, quotes).
func TestWriteStatusJSONSameBytes(t *testing.T) {
	hostile := "/tmp/x\n  \"rules\": null,\n<script>&\u2028\u2029\"\\"
	rule := func(n int, s string) statusRule {
		return statusRule{Number: n, Line: n + 1, RuleJSON: policy.RuleJSON{Action: policy.Deny, Direction: policy.In, From: "192.0.2.1", Comment: s},
			Text: "deny from 192.0.2.1 comment '" + s + "'", CounterID: "L" + s, Packets: uint64(n) * 7, Bytes: 1 << 40, Applied: n%2 == 0, InFile: true}
	}
	for _, tc := range []struct {
		name  string
		rules []statusRule
	}{
		{"none", []statusRule{}},
		{"nil", nil},
		{"one", []statusRule{rule(1, "a")}},
		{"hostile", []statusRule{rule(1, hostile), rule(2, "\"rules\": null,"), rule(3, "")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := &statusReport{Status: "active", Backend: "nftables", Config: hostile, Defaults: map[string]statusDefault{"incoming": {Policy: policy.Deny, Line: 1}},
				Rules: tc.rules, Builtins: []statusBuiltin{{ID: "builtin:x", Text: hostile}},
				Pending:     &statusPending{Applied: time.Unix(1700000000, 0).UTC(), Deadline: time.Unix(1700000030, 0).UTC()},
				statusTruth: statusTruth{InSync: true, FileError: hostile}}
			var want bytes.Buffer
			enc := json.NewEncoder(&want)
			enc.SetIndent("", "  ")
			if err := enc.Encode(rep); err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			if err := writeStatusJSON(&got, rep); err != nil {
				t.Fatal(err)
			}
			if got.String() != want.String() {
				t.Fatalf("differs:\ngot  %q\nwant %q", got.String(), want.String())
			}
			if len(rep.Rules) != len(tc.rules) || (tc.rules == nil) != (rep.Rules == nil) {
				t.Fatalf("the report's rules changed: %d, want %d", len(rep.Rules), len(tc.rules))
			}
		})
	}
}

type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n++; w.n > 1 {
		return 0, errors.New("broken pipe")
	}
	return len(p), nil
}

// TestWriteStatusJSONWriteError: a failed write (a closed pipe) is an
// error, not a silent half document.
func TestWriteStatusJSONWriteError(t *testing.T) {
	rep := &statusReport{Defaults: map[string]statusDefault{}, Builtins: []statusBuiltin{}}
	for i := range 5000 {
		rep.Rules = append(rep.Rules, statusRule{Number: i, Text: strings.Repeat("x", 100)})
	}
	if err := writeStatusJSON(&failWriter{}, rep); err == nil || !strings.Contains(err.Error(), "broken pipe") {
		t.Fatalf("err = %v, want the write error", err)
	}
}
