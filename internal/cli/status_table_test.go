package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/termtext"
)

// countingWriter counts the writes that reach it.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	return c.Buffer.Write(p)
}

// The rules' table of 'moat status' reaches the output in a few large
// writes, not text/tabwriter's several a cell (a write(2) each on a
// terminal or pipe, and a pass through termtext.Writer: 800,000 at 100k
// rules); a character cut between two of them is printed whole.
func TestStatusTableFewWrites(t *testing.T) {
	rep := &statusReport{Status: "active", Defaults: map[string]statusDefault{}}
	const n = 3000
	for i := range n {
		rep.Rules = append(rep.Rules, statusRule{Number: i + 1, Line: i + 1, Applied: true, InFile: true,
			RuleJSON: policy.RuleJSON{Action: policy.Allow, Direction: policy.In, Proto: "tcp", ToPort: "22", Comment: "hôte d'administration ☃"}})
	}
	for _, mode := range []string{"", "numbered", "verbose"} {
		var cw countingWriter
		tw := termtext.NewWriter(&cw)
		a := &app{out: tw, errOut: &bytes.Buffer{}}
		if err := a.printStatus(rep, mode); err != nil {
			t.Fatal(err)
		}
		if err := tw.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := strings.Count(cw.String(), "hôte d'administration ☃\n"); got != n {
			t.Errorf("%q: %d rows with the comment whole, want %d", mode, got, n)
		}
		if strings.ContainsRune(cw.String(), '\uFFFD') {
			t.Errorf("%q: a character was cut", mode)
		}
		if cw.writes > 100 {
			t.Errorf("%q: %d writes for %d rules", mode, cw.writes, n)
		}
	}
}
