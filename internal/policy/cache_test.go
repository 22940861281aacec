package policy

import (
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// slowStatement is a line parsed the general way, as lineStatement did
// before the fast path.
func slowStatement(line string, pos Pos, svc Services, apps Apps) (Statement, bool, error) {
	st, ok, err := ParseLineApps(line, pos, svc, apps)
	if err == nil && ok && st.Kind == StmtRule {
		st.Rule.Text = ruleText(line)
		for j := range st.More {
			st.More[j].Text = st.Rule.Text
		}
	}
	return st, ok, err
}

var fastSeeds = []string{
	"deny from 192.0.2.1", "deny from 192.0.2.0/24", "allow from 2001:db8::/32", "reject to 198.51.100.7",
	"  deny   from\t203.0.113.0/24  ", "deny from 192.0.2.1/255.255.255.0", "deny from 192.0.2.1/33",
	"deny from 192.0.2.1/024", "deny from any", "deny from ::ffff:192.0.2.1", "deny from fe80::1%eth0",
	"DENY from 192.0.2.1", "deny FROM 192.0.2.1", "limit from 192.0.2.1", "deny from 192.0.2.1 # x",
	"deny from '192.0.2.1'", "deny from 192.0.2.1 to any", "deny from 0.0.0.0/0", "deny from ::/0",
	"deny in from 192.0.2.1", "deny from 192.0.2.1\x00", "deny from 2001:db8::1/64", "deny from 192.0.2.1/",
	"deny from 1.2.3", "allow from 2001:DB8::1", "route deny from 192.0.2.1", "deny from 192.0.2.1\v",
	strings.Repeat(" ", 5000) + "deny from 192.0.2.1",
}

// FuzzFastRule: the fast path gives exactly what the general parser
// gives, or leaves the line to it.
func FuzzFastRule(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		pos := Pos{File: "f.conf", Line: 7}
		r, ok := fastRule(line, pos)
		if !ok {
			return
		}
		st, sok, err := slowStatement(line, pos, testServices, nil)
		if err != nil || !sok {
			t.Fatalf("fast path took %q, the parser refuses it: %v", line, err)
		}
		want := Statement{Kind: StmtRule, Rule: r}
		if !reflect.DeepEqual(st, want) {
			t.Fatalf("%q:\nfast    %+v\ngeneral %+v", line, want, st)
		}
	})
}

func TestFastRuleSeeds(t *testing.T) {
	took := 0
	for _, s := range fastSeeds {
		pos := Pos{File: "f.conf", Line: 3}
		r, ok := fastRule(s, pos)
		st, sok, err := slowStatement(s, pos, testServices, nil)
		if !ok {
			continue
		}
		took++
		if err != nil || !sok || !reflect.DeepEqual(st, Statement{Kind: StmtRule, Rule: r}) {
			t.Errorf("%q: fast %+v, general %+v %v", s, r, st.Rule, err)
		}
	}
	if took < 5 {
		t.Errorf("the fast path took only %d of the seeds", took)
	}
	// An error is the general parser's, with its position.
	d := NewDocument("moat.conf", []byte("deny from 192.0.2.1\ndeny from 192.0.2.1/33\n"))
	_, err := d.Policy(testServices)
	if err == nil || !strings.Contains(err.Error(), "moat.conf:2:21: bad address '192.0.2.1/33': prefix length '33' is out of range") {
		t.Errorf("error = %v", err)
	}
}

// docEdit is one edit of a document, as commands make them.
type docEdit func(d *Document, arg string, n int)

var docEdits = []docEdit{
	func(d *Document, arg string, n int) { d.AppendLine(arg) },
	func(d *Document, arg string, n int) { _ = d.InsertRule(n, arg) },
	func(d *Document, arg string, n int) { _, _ = d.DeleteRule(n) },
	func(d *Document, arg string, n int) { _, _ = d.ReplaceRule(n, arg) },
	func(d *Document, arg string, n int) { d.SetDefault(Out, Deny) },
	func(d *Document, arg string, n int) { d.SetLogging(LogLevel("medium")) },
	func(d *Document, arg string, n int) {
		if len(d.Lines) > 0 {
			d.Lines[n%len(d.Lines)] = arg
		}
	},
	func(d *Document, arg string, n int) { d.Lines = append(d.Lines, arg) },
	func(d *Document, arg string, n int) {
		if len(d.Lines) > 0 {
			d.Lines = d.Lines[:len(d.Lines)-1]
		}
	},
	func(d *Document, arg string, n int) { d.Name = "other.conf" },
}

var docArgs = []string{"deny from 192.0.2.9", "allow 22/tcp", "allow ssh", "# note", "", "bogus line", "deny from 192.0.2.1/99",
	"default deny incoming", "allow from 2001:db8::/48 to any port 80 proto tcp", "limit ssh comment 'x'", "deny from 192.0.2.1"}

// checkSame compares what a cached document gives with a fresh parse of
// its text.
func checkSame(t *testing.T, d *Document, svc Services, probe []Rule) {
	t.Helper()
	fresh := &Document{Name: d.Name, Lines: append([]string(nil), d.Lines...), Apps: d.Apps}
	if got, want := d.RuleTexts(), fresh.RuleTexts(); !reflect.DeepEqual(got, want) {
		t.Fatalf("RuleTexts %q, fresh %q", got, want)
	}
	for _, r := range probe {
		if got, want := d.FindRule(r, svc), refFindRule(fresh, r, svc); got != want {
			t.Fatalf("FindRule(%s) = %d, fresh %d\n%s", r.Text, got, want, fresh.Bytes())
		}
		gn, gr := d.FindMatch(r, svc)
		wn, wr := refFindMatch(fresh, r, svc)
		if gn != wn || !reflect.DeepEqual(gr, wr) {
			t.Fatalf("FindMatch(%s) = %d %+v, fresh %d %+v", r.Text, gn, gr, wn, wr)
		}
	}
}

// refFindRule and refFindMatch are the searches as they were: every line
// parsed the general way.
// refFindRule also finds, when no rule is equal, the first rule that is
// but for a comment r does not give (ufw's delete).
func refFindRule(d *Document, r Rule, svc Services) int {
	loose := 0
	for n, i := range d.ruleLines() {
		st, ok, err := slowStatement(d.Lines[i], Pos{File: d.Name, Line: i + 1}, svc, d.Apps)
		if err != nil || !ok || st.Kind != StmtRule {
			continue
		}
		if st.Rule.Equal(r) {
			return n + 1
		}
		if c := st.Rule; loose == 0 && r.Comment == "" {
			c.Comment = ""
			if c.Equal(r) {
				loose = n + 1
			}
		}
	}
	return loose
}

func refFindMatch(d *Document, r Rule, svc Services) (int, Rule) {
	for n, i := range d.ruleLines() {
		st, ok, err := slowStatement(d.Lines[i], Pos{File: d.Name, Line: i + 1}, svc, d.Apps)
		if err == nil && ok && st.Kind == StmtRule && st.Rule.MatchKey() == r.MatchKey() && st.Rule.FromApp == r.FromApp && st.Rule.ToApp == r.ToApp {
			return n + 1, st.Rule
		}
	}
	return 0, Rule{}
}

func samePolicy(t *testing.T, d *Document, svc Services) {
	t.Helper()
	fresh := &Document{Name: d.Name, Lines: append([]string(nil), d.Lines...), Apps: d.Apps}
	got, gerr := d.Policy(svc)
	want, werr := fresh.policySlow(svc)
	if fmt.Sprint(gerr) != fmt.Sprint(werr) || !samePolicies(got, want) {
		t.Fatalf("Policy after edits:\n%+v %v\nfresh parse:\n%+v %v\n%s", got, gerr, want, werr, fresh.Bytes())
	}
}

func probeRules(t *testing.T) []Rule {
	var out []Rule
	for _, a := range docArgs {
		st, ok, err := ParseLine(a, Pos{}, testServices)
		if err == nil && ok && st.Kind == StmtRule {
			out = append(out, st.Rule)
		}
	}
	if len(out) < 4 {
		t.Fatal("too few probe rules")
	}
	return out
}

// FuzzDocumentCache: whatever edits a command makes, and however it
// searches in between, the document gives what a fresh parse of its text
// gives.
func FuzzDocumentCache(f *testing.F) {
	f.Add([]byte(sample), []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte("deny from 192.0.2.1\ndeny from 192.0.2.2\nallow 22/tcp\n"), []byte{2, 0, 1, 3, 2, 2, 6})
	f.Add([]byte("# c\n\ndeny from 192.0.2.1/99\nallow ssh\n"), []byte{1, 33, 17, 2, 3, 6, 8, 9})
	f.Fuzz(func(t *testing.T, data, ops []byte) {
		if len(ops) > 40 {
			ops = ops[:40]
		}
		probe := probeRules(t)
		d := NewDocument("fuzz.conf", data)
		for _, op := range ops {
			n := int(op>>4) + 1
			docEdits[int(op)%len(docEdits)](d, docArgs[int(op)%len(docArgs)], n)
			checkSame(t, d, testServices, probe[:2])
		}
		checkSame(t, d, testServices, probe)
		samePolicy(t, d, testServices)
	})
}

// TestDocumentCacheLines: after edits that move lines, every rule names
// its own line (compiled rules and 'status' show it), and the edited line
// is parsed anew.
func TestDocumentCacheLines(t *testing.T) {
	var b strings.Builder
	b.WriteString("# blocklist\ndefault deny incoming\n")
	for i := range 50 {
		fmt.Fprintf(&b, "deny from 192.0.2.%d\n", i)
	}
	b.WriteString("allow 22/tcp\n")
	d := NewDocument("moat.conf", []byte(b.String()))
	probe := probeRules(t)
	if n := d.FindRule(probe[0], testServices); n != 10 {
		t.Fatalf("FindRule(%s) = %d, want 10", probe[0].Text, n)
	}
	if err := d.InsertRule(1, "allow 80/tcp"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.DeleteRule(10); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReplaceRule(20, "deny from 198.51.100.0/24"); err != nil {
		t.Fatal(err)
	}
	d.AppendLine("deny from 203.0.113.9 # late")
	samePolicy(t, d, testServices)
	p, err := NewDocument("moat.conf", d.Bytes()).Policy(testServices)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range p.AllRules() {
		if got := d.Lines[r.Pos.Line-1]; !strings.HasPrefix(got, r.Text) {
			t.Errorf("rule %q says line %d, which is %q", r.Text, r.Pos.Line, got)
		}
	}
	// The policy took the parsed rules over: asking again parses again,
	// and changing the first policy's rules does not reach the second.
	d2 := NewDocument("moat.conf", d.Bytes())
	p1, _ := d2.Policy(testServices)
	for i := range p1.store.texts {
		p1.store.texts[i] = "changed"
	}
	for i := range p1.store.whole {
		p1.store.whole[i].Text = "changed"
	}
	p2, _ := d2.Policy(testServices)
	if p2.Rule(0).Text == "changed" || p2.Rule(1).Text == "changed" || p2.NumRules() < 2 {
		t.Error("a second Policy shares the first one's rules")
	}
}

// BenchmarkDocumentEdit: the search and the parse of a one-rule change
// with 100,000 address rules (each line parsed once), against parsing
// every line the general way in the same run.
func BenchmarkDocumentEdit(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("default deny incoming\n")
	for i := range 50000 {
		fmt.Fprintf(&sb, "deny from 10.%d.%d.%d\ndeny from 2001:db8:%x:%x::/64\n", i>>15&255, i>>7&255, 2*(i&127), i>>7, 2*(i&127))
	}
	sb.WriteString("allow 22/tcp\n")
	data := []byte(sb.String())
	st, _, _ := ParseLine("allow 8080/tcp", Pos{}, testServices)
	var base, cached float64
	for range b.N {
		d := NewDocument("moat.conf", data)
		b.StartTimer()
		start := time.Now()
		for i := range d.Lines {
			_, _, _ = slowStatement(d.Lines[i], Pos{File: d.Name, Line: i + 1}, testServices, nil)
		}
		base += time.Since(start).Seconds()
		start = time.Now()
		if n, _ := d.FindMatch(st.Rule, testServices); n == 0 {
			d.AppendLine("allow 8080/tcp")
		}
		if _, err := d.Policy(testServices); err != nil {
			b.Fatal(err)
		}
		cached += time.Since(start).Seconds()
	}
	b.ReportMetric(base/float64(b.N)*1000, "ms-general-parse")
	b.ReportMetric(cached/float64(b.N)*1000, "ms-edit")
	b.ReportMetric(cached/base, "x-baseline")
}

func TestTextIsBytes(t *testing.T) {
	for _, in := range []string{"", "\n", "a", "a\n", "a\n\nb\n", "# x\r\n  deny from 192.0.2.1\n\n\n"} {
		d := NewDocument("f", []byte(in))
		if d.Text() != string(d.Bytes()) {
			t.Errorf("%q: Text %q, Bytes %q", in, d.Text(), d.Bytes())
		}
	}
}

// TestLargeDocumentCache: a large document, its address rules held
// compact, parses, edits and searches exactly as a fresh parse does.
func TestLargeDocumentCache(t *testing.T) {
	var b strings.Builder
	b.WriteString("default deny incoming\nallow 22/tcp\n")
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&b, "deny from 198.51.%d.%d\ndeny to 2001:db8:%x::/48\n", i>>8&255, i&255, i)
	}
	d := NewDocument("big.conf", []byte(b.String()))
	probe := probeRules(t)
	checkSame(t, d, testServices, probe)
	docEdits[0](d, "allow 8080/tcp", 0)
	if _, err := d.DeleteRule(3); err != nil {
		t.Fatal(err)
	}
	checkSame(t, d, testServices, probe)
	samePolicy(t, d, testServices)
	p, err := d.Policy(testServices)
	if err != nil || p.NumRules() != 20001 || p.Rule(20000).Pos.Line != 20002 || p.Rule(20000).Text != "allow 8080/tcp" ||
		p.Rule(2).Text != "deny from 198.51.0.1" || p.Rule(2).Pos.Line != 4 || p.RuleText(2) != "deny from 198.51.0.1" {
		t.Fatalf("large policy: %v, %d rules, last %+v", err, p.NumRules(), p.Rule(p.NumRules()-1))
	}
}

// TestCacheHoldsItsMaps: the cache knows the profiles and services it
// was parsed with by the maps themselves. When it knew them by address
// only, the replaced maps were freed (nothing kept them) and a new map
// allocated at the same address would pass for the old one, with the old
// ports. The maps must stay alive as long as the cache, and a different
// map with the same profile name must give its own ports.
func TestCacheHoldsItsMaps(t *testing.T) {
	d := NewDocument("moat.conf", []byte("allow WebApp\nallow ssh\n"))
	var freed atomic.Int32
	func() {
		apps := AppsFromPorts(map[string]string{"WebApp": "8080/tcp"})
		svc := ParseServices([]byte("ssh 22/tcp\n"))
		runtime.AddCleanup((*byte)(reflect.ValueOf(apps).UnsafePointer()), func(int) { freed.Add(1) }, 0)
		runtime.AddCleanup((*byte)(reflect.ValueOf(svc).UnsafePointer()), func(int) { freed.Add(1) }, 0)
		d.Apps = apps
		if c := d.index(svc); c.rules.rule(0).ToPort.String() != "8080" || c.rules.rule(1).ToPort.String() != "22" {
			t.Fatalf("parsed to %+v", c.rules)
		}
		d.Apps = nil // only the cache may keep the maps now
	}()
	for range 5 {
		runtime.GC()
	}
	time.Sleep(10 * time.Millisecond) // cleanups run on their own goroutine
	runtime.GC()
	if n := freed.Load(); n != 0 {
		t.Fatalf("%d of the maps the cache was built with were freed: their addresses can be taken by other maps", n)
	}
	d.Apps = AppsFromPorts(map[string]string{"WebApp": "9090/tcp"})
	svc := ParseServices([]byte("ssh 2222/tcp\n"))
	if c := d.index(svc); c.rules.rule(0).ToPort.String() != "9090" || c.rules.rule(1).ToPort.String() != "2222" {
		t.Errorf("the cache gives %s and %s, want 9090 and 2222 (the new maps)", c.rules.rule(0).ToPort, c.rules.rule(1).ToPort)
	}
	p, err := d.Policy(svc)
	if err != nil {
		t.Fatal(err)
	}
	if p.Rule(0).ToPort.String() != "9090" {
		t.Errorf("allow WebApp gives port %s, want 9090 (the new profile)", p.Rule(0).ToPort)
	}
}

// samePolicies: the same policy, whether its rules are held whole or
// compact.
func samePolicies(a, b *Policy) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	if !reflect.DeepEqual(a.AllRules(), b.AllRules()) {
		return false
	}
	x.rules, x.store, y.rules, y.store = nil, nil, nil, nil
	return reflect.DeepEqual(x, y)
}
