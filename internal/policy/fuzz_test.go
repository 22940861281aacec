package policy

import (
	"os"
	"strings"
	"testing"
)

// FuzzParseDocument checks that no input makes the parser panic, and that a
// rule it accepts keeps its meaning when its line is parsed again.
func FuzzParseDocument(f *testing.F) {
	f.Add([]byte(sample))
	for _, name := range []string{"testdata/accept.txt", "testdata/reject.txt", "testdata/numbers.txt"} {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if in, _, ok := strings.Cut(line, " => "); ok {
				f.Add([]byte(in))
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d := NewDocument("fuzz.conf", data)
		p, err := d.Policy(testServices)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.conf:") {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		for _, r := range p.AllRules() {
			st, ok, err := ParseLine(r.Text, Pos{File: "again"}, testServices)
			if err != nil || !ok || !st.Rule.Equal(r) {
				t.Fatalf("rule text %q does not parse back to the same rule: %v", r.Text, err)
			}
		}
	})
}
