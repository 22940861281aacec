package guard

import (
	"net/netip"
	"os"
	"strings"
	"testing"
)

// corpusPath is sshguard's parser test corpus, copied with its licence (ISC,
// testdata/sshguard/COPYING).
const corpusPath = "testdata/sshguard/tests.txt"

type corpusCase struct {
	line, expect, mode, section string
	lineNo                      int
}

// readCorpus reads sshguard's test corpus: three lines a case (log line,
// expected "SERVICE ADDRESS FAMILY DANGER" or "*", M or X).
func readCorpus(t testing.TB) []corpusCase {
	data, err := os.ReadFile(corpusPath)
	if err != nil {
		t.Fatalf("the sshguard corpus: %v (the copy in testdata/sshguard)", err)
	}
	lines := strings.Split(string(data), "\n")
	var cases []corpusCase
	section := ""
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.HasPrefix(l, "#### ") {
			section = strings.TrimSuffix(strings.TrimPrefix(l, "#### "), " {{{")
			continue
		}
		if strings.HasPrefix(l, "#") || strings.TrimSpace(l) == "" {
			continue
		}
		if i+2 >= len(lines) {
			t.Fatalf("corpus line %d: incomplete case", i+1)
		}
		cases = append(cases, corpusCase{line: l, expect: lines[i+1], mode: lines[i+2], section: section, lineNo: i + 1})
		i += 2
	}
	return cases
}

// Every M case of the SSH and Banner formats sections gives sshguard's
// verdict and address.
func TestSSHGuardCorpus(t *testing.T) {
	passed, total := 0, 0
	for _, c := range readCorpus(t) {
		if c.mode != "M" || (c.section != "SSH" && c.section != "Banner formats") {
			continue
		}
		total++
		ev, ok := ParseLine(c.line)
		if c.expect == "*" {
			if ok && ev.Kind.Failure() {
				t.Errorf("tests.txt:%d: %q counted as %s from %s; sshguard ignores it", c.lineNo, c.line, ev.Kind, ev.Addr)
				continue
			}
			passed++
			continue
		}
		f := strings.Fields(c.expect)
		want := netip.MustParseAddr(f[1])
		switch {
		case !ok || !ev.Kind.Failure():
			t.Errorf("tests.txt:%d: %q not matched; want %s", c.lineNo, c.line, want)
		case ev.Addr != want:
			t.Errorf("tests.txt:%d: %q gives %s; want %s", c.lineNo, c.line, ev.Addr, want)
		case (f[2] == "4") != ev.Addr.Is4():
			t.Errorf("tests.txt:%d: family of %s; want IPv%s", c.lineNo, ev.Addr, f[2])
		default:
			passed++
		}
	}
	t.Logf("sshguard corpus (SSH, Banner formats): %d of %d M cases passed", passed, total)
	if total < 70 {
		t.Errorf("only %d cases read from the corpus", total)
	}
}
