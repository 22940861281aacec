package policy

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// testServices is a fixed service table so grammar tests do not depend on
// the machine's /etc/services.
var testServices = ParseServices([]byte(`
ssh 22/tcp
smtp 25/tcp mail
domain 53/tcp
domain 53/udp
http 80/tcp www
auth 113/tcp authentication tap ident
ntp 123/udp
https 443/tcp
https 443/udp
`))

func summary(r Rule) string {
	s := fmt.Sprintf("%s %s %s %s %s %s %s %s", r.Direction, r.Action, r.Proto,
		AddrString(r.From), r.FromPort, AddrString(r.To), r.ToPort, r.Family)
	if r.InIface != "" {
		s += " in=" + r.InIface
	}
	if r.OutIface != "" {
		s += " out=" + r.OutIface
	}
	if r.Log != "" {
		s += " log=" + string(r.Log)
	}
	if r.Comment != "" {
		s += " comment=" + r.Comment
	}
	if r.Rate != nil {
		s += fmt.Sprintf(" rate=%d/%d", r.Rate.Count, r.Rate.Seconds)
	}
	return s
}

type grammarCase struct {
	line, want string
	lineNo     int
}

func readCases(t *testing.T, name string) []grammarCase {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var cases []grammarCase
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		in, want, ok := strings.Cut(line, " => ")
		if !ok {
			t.Fatalf("%s:%d: no ' => '", name, n)
		}
		cases = append(cases, grammarCase{in, want, n})
	}
	return cases
}

func parseLine(line string) (Statement, error) {
	st, _, err := ParseLine(line, Pos{File: "moat.conf", Line: 1}, testServices)
	return st, err
}

func TestGrammarAccepted(t *testing.T) {
	cases := readCases(t, "testdata/accept.txt")
	if len(cases) < 100 {
		t.Fatalf("only %d accepted cases; want at least 100", len(cases))
	}
	for _, c := range cases {
		st, err := parseLine(c.line)
		if err != nil {
			t.Errorf("accept.txt:%d: %q: %v", c.lineNo, c.line, err)
			continue
		}
		if st.Kind != StmtRule {
			t.Errorf("accept.txt:%d: %q: not a rule", c.lineNo, c.line)
			continue
		}
		if got := summary(st.Rule); got != c.want {
			t.Errorf("accept.txt:%d: %q\n got %s\nwant %s", c.lineNo, c.line, got, c.want)
		}
	}
	t.Logf("%d accepted lines checked", len(cases))
}

func TestGrammarRejected(t *testing.T) {
	cases := readCases(t, "testdata/reject.txt")
	if len(cases) < 100 {
		t.Fatalf("only %d rejected cases; want at least 100", len(cases))
	}
	for _, c := range cases {
		st, err := parseLine(c.line)
		if err == nil {
			t.Errorf("reject.txt:%d: %q accepted as %+v; want error containing %q", c.lineNo, c.line, st, c.want)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("reject.txt:%d: %q\n got error %q\nwant it to contain %q", c.lineNo, c.line, err, c.want)
		}
		if !strings.HasPrefix(err.Error(), "moat.conf:1:") {
			t.Errorf("reject.txt:%d: error %q does not name file and line", c.lineNo, err)
		}
	}
	t.Logf("%d rejected lines checked", len(cases))
}

func TestDefaultsAndBackend(t *testing.T) {
	for line, want := range map[string]string{
		"default deny incoming":   "in deny",
		"default allow outgoing":  "out allow",
		"default reject routed":   "route reject",
		"default deny":            "in deny",
		"DEFAULT REJECT OUTGOING": "out reject",
	} {
		st, err := parseLine(line)
		if err != nil || st.Kind != StmtDefault {
			t.Fatalf("%q: %v %+v", line, err, st)
		}
		if got := fmt.Sprintf("%s %s", st.DefaultDir, st.DefaultAction); got != want {
			t.Errorf("%q: got %s want %s", line, got, want)
		}
	}
	st, err := parseLine("backend iptables")
	if err != nil || st.Kind != StmtBackend || st.Backend != BackendIptables {
		t.Fatalf("backend: %v %+v", err, st)
	}
}

func TestErrorColumn(t *testing.T) {
	_, err := parseLine("allow from 203.0.113.0/24 to 2001:db8::1 port 99999/tcp")
	if err == nil || !strings.HasPrefix(err.Error(), "moat.conf:1:") {
		t.Fatalf("got %v", err)
	}
	_, err = parseLine("allow to any port 70000 proto tcp")
	if err == nil || !strings.HasPrefix(err.Error(), "moat.conf:1:19: bad port '70000'") {
		t.Fatalf("column: got %v", err)
	}
	_, err = ParseStatement(ArgsTokens([]string{"allow", "to", "any", "port", "0"}), Pos{}, testServices)
	if err == nil || !strings.HasPrefix(err.Error(), "argument 5: bad port '0'") {
		t.Fatalf("argument: got %v", err)
	}
}

func TestGuardStatements(t *testing.T) {
	d := NewDocument("moat.conf", []byte("guard sshd maxretry 3 findtime 5m\nguard bantime 2h bantime-max 2w bantime-factor 1.5 weak 0\nallowlist 198.51.100.0/24 2001:db8:1::/48\nallowlist 203.0.113.7\n"))
	p, err := d.Policy(testServices)
	if err != nil {
		t.Fatal(err)
	}
	g := p.Guard
	if !g.Enabled || g.MaxRetry != 3 || g.FindTime != 5*time.Minute || g.BanTime != 2*time.Hour || g.BanTimeMax != 14*24*time.Hour ||
		g.BanTimeFactor != 1.5 || g.WeakWeight != 0 || len(g.Allowlist) != 3 || g.Allowlist[2].String() != "203.0.113.7/32" {
		t.Fatalf("%+v", g)
	}
	if p := New(); p.Guard.Enabled || p.Guard.MaxRetry != 5 || p.Guard.BanTime != time.Hour {
		t.Fatalf("defaults: %+v", p.Guard)
	}
	off, _ := NewDocument("moat.conf", []byte("guard sshd\nguard sshd off\n")).Policy(testServices)
	if off.Guard.Enabled {
		t.Fatal("guard sshd off did not turn it off")
	}
	for line, want := range map[string]string{
		"guard":                       "'guard' needs 'sshd' or a setting",
		"guard sshd maxretry":         "'maxretry' needs a count",
		"guard maxretry 0":            "invalid maxretry '0'",
		"guard maxretry many":         "invalid maxretry",
		"guard findtime 10":           "invalid findtime '10'",
		"guard bantime 2y":            "invalid bantime",
		"guard bantime-factor 0.5":    "invalid bantime-factor",
		"guard weak 2":                "invalid weak '2'",
		"guard nginx":                 "unknown guard setting 'nginx'",
		"allowlist":                   "'allowlist' needs addresses",
		"allowlist 198.51.100.0/33":   "bad allowlist address",
		"allowlist any":               "bad allowlist address 'any'",
		"guard sshd maxretry 5 extra": "unknown guard setting 'extra'",
	} {
		if _, err := parseLine(line); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", line, err, want)
		}
	}
}

// Every number of the grammar is bounded and checked where it is read, and
// the error points at the wrong part (testdata/numbers.txt).
func TestNumberBounds(t *testing.T) {
	data, err := os.ReadFile("testdata/numbers.txt")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, line := range strings.Split(string(data), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, " => ")
		if len(f) != 3 {
			t.Fatalf("numbers.txt:%d: want LINE => COLUMN => MESSAGE", i+1)
		}
		n++
		st, err := parseLine(f[0])
		if err == nil {
			t.Errorf("numbers.txt:%d: %q accepted as %+v", i+1, f[0], st)
			continue
		}
		if want := "moat.conf:1:" + f[1] + ": "; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("numbers.txt:%d: %q: error %q, want it at %s", i+1, f[0], err, want)
		}
		if !strings.Contains(err.Error(), f[2]) {
			t.Errorf("numbers.txt:%d: %q: error %q lacks %q", i+1, f[0], err, f[2])
		}
	}
	if n < 50 {
		t.Fatalf("only %d cases", n)
	}
	// The bounds themselves are accepted, with the values written.
	for line, want := range map[string]string{
		"limit 22/tcp rate 10/86400s":      "10/86400",
		"limit 22/tcp rate 10000/24h":      "10000/86400",
		"limit 22/tcp rate 2/1440m":        "2/86400",
		"limit 22/tcp rate 0000000006/30s": "6/30",
	} {
		st, err := parseLine(line)
		if err != nil {
			t.Errorf("%q: %v", line, err)
			continue
		}
		if got := fmt.Sprintf("%d/%d", st.Rule.Rate.Count, st.Rule.Rate.Seconds); got != want {
			t.Errorf("%q: rate %s, want %s", line, got, want)
		}
	}
	for _, line := range []string{"allow 65535/tcp", "allow 1:65535/tcp", "allow from 0.0.0.0/0", "allow to ::/128",
		"guard maxretry 1000 bantime 365d findtime 1s bantime-factor 100 weak 0", "guard bantime 52w weak 1.0 bantime-factor 1.5",
		"guard weak .5 bantime-factor 2."} {
		if _, err := parseLine(line); err != nil {
			t.Errorf("%q: %v", line, err)
		}
	}
	// ParseDuration (also 'moat ban --for') never overflows.
	for _, s := range []string{"106751991167301d", "15250284452472w", "99999999999999999999d", "-1d", "+1h", "5215w"} {
		if d, err := ParseDuration(s); err == nil {
			t.Errorf("ParseDuration(%q) = %v", s, d)
		}
	}
	if d, err := ParseDuration("2d"); err != nil || d != 48*time.Hour {
		t.Errorf("2d: %v %v", d, err)
	}
}
