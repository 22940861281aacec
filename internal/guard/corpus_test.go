package guard

import (
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
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

// deliberate are corpus verdicts moat departs from on purpose.
var deliberate = []struct {
	re  *regexp.Regexp
	why string
}{
	// Issue 8: a client (JSch) that says it gave up after failed logins is
	// a failed login; sshguard ignores the line.
	{regexp.MustCompile(`Received disconnect from .*: 3: .*Auth fail \[preauth\]$`), "the client reports its failed login"},
}

// corpusLocal are the corpus's servers' own addresses, as the guard on
// those servers would know them: the OpenSSH 9.8 timeout line names the
// server too, and only the other address can be the client.
var corpusLocal = map[netip.Addr]bool{netip.MustParseAddr("192.168.0.2"): true}

// judgeLine judges one line alone, as the guard would.
func judgeLine(line string) []Event {
	ev, ok := ParseLine(line)
	if !ok {
		return nil
	}
	j := NewJudge(func(a netip.Addr) bool { return corpusLocal[a] })
	return j.Judge(ev, time.Unix(1e9, 0)).Count
}

// Every M case of the SSH and Banner formats sections gives sshguard's
// verdict and address, judged as the guard judges it.
func TestSSHGuardCorpus(t *testing.T) {
	passed, total, departed := 0, 0, 0
	for _, c := range readCorpus(t) {
		if c.mode != "M" || (c.section != "SSH" && c.section != "Banner formats") {
			continue
		}
		total++
		counted := judgeLine(c.line)
		if c.expect == "*" {
			dep := ""
			for _, d := range deliberate {
				if d.re.MatchString(c.line) {
					dep = d.why
				}
			}
			switch {
			case dep != "" && len(counted) == 0:
				t.Errorf("tests.txt:%d: %q not counted; moat counts it (%s)", c.lineNo, c.line, dep)
			case dep != "":
				departed++
			case len(counted) > 0:
				t.Errorf("tests.txt:%d: %q counted as %s from %s; sshguard ignores it", c.lineNo, c.line, counted[0].Kind, counted[0].Addr)
			default:
				passed++
			}
			continue
		}
		f := strings.Fields(c.expect)
		want := netip.MustParseAddr(f[1])
		switch {
		case len(counted) == 0:
			t.Errorf("tests.txt:%d: %q not counted; want %s", c.lineNo, c.line, want)
		case counted[0].Addr != want:
			t.Errorf("tests.txt:%d: %q gives %s; want %s", c.lineNo, c.line, counted[0].Addr, want)
		case (f[2] == "4") != counted[0].Addr.Is4():
			t.Errorf("tests.txt:%d: family of %s; want IPv%s", c.lineNo, counted[0].Addr, f[2])
		default:
			passed++
		}
	}
	t.Logf("sshguard corpus (SSH, Banner formats): %d of %d M cases passed, %d more counted on purpose where sshguard does not", passed, total, departed)
	if total < 70 {
		t.Errorf("only %d cases read from the corpus", total)
	}
}
