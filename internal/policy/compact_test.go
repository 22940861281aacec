package policy

import (
	"reflect"
	"testing"
)

// compactCheck: a rule fastRule read from line is held compact, and the
// rule built from the compact form is exactly the one read, as are what
// CompactAddrRule, RuleText and mayEqual say of it.
func compactCheck(t *testing.T, line string) {
	t.Helper()
	pos := Pos{File: "f.conf", Line: 3}
	r, ok := fastRule(line, pos)
	if !ok {
		return
	}
	s := &ruleStore{name: "f.conf", texts: []string{"# one", "", line}}
	s.add(r, true)
	if s.ents[0].flags&entWhole != 0 {
		t.Fatalf("%q: held whole, want compact", line)
	}
	p := &Policy{store: s}
	if got := p.Rule(0); !reflect.DeepEqual(got, r) {
		t.Fatalf("%q:\ncompact %+v\nread    %+v", line, got, r)
	}
	a, ok := p.CompactAddrRule(0)
	want := AddrRule{Action: r.Action, Prefix: r.From, Line: 3}
	if !r.From.IsValid() {
		want.Prefix, want.To = r.To, true
	}
	if !ok || a != want {
		t.Fatalf("%q: CompactAddrRule %+v %v, want %+v", line, a, ok, want)
	}
	if p.RuleText(0) != r.Text {
		t.Fatalf("%q: RuleText %q, want %q", line, p.RuleText(0), r.Text)
	}
	for _, probe := range []Rule{r, {Direction: In, Proto: "any", From: r.To, To: r.From}} {
		if s.mayEqual(0, &probe) != mayEqual(&r, &probe) {
			t.Fatalf("%q: mayEqual(%+v) differs", line, probe)
		}
	}
	// The document's parse takes the same line to the same rule.
	d := &Document{Name: "f.conf", Lines: []string{"# one", "", line}}
	if c := d.index(nil); c.rules.len() != 1 || c.rules.ents[0].flags&entWhole != 0 || !reflect.DeepEqual(c.rules.rule(0), r) {
		t.Fatalf("%q: the document's parse gives %d rules, want the one fastRule reads", line, c.rules.len())
	}
	s.setLine(0, 2)
	if s.texts[1] = line; s.rule(0).Pos.Line != 2 {
		t.Fatalf("%q: moved to line 2, says %d", line, s.rule(0).Pos.Line)
	}
}

func TestCompactSameAsFastRule(t *testing.T) {
	took := 0
	for _, line := range append(fastSeeds, "deny from 192.0.2.1", "  reject to 2001:db8::/32\r", "\tallow from ::ffff:192.0.2.1",
		"allow from ::ffff:192.0.2.0/120", "deny from 0.0.0.0/0", "deny to ::/0", "deny from 192.0.2.1/24") {
		if _, ok := fastRule(line, Pos{}); ok {
			took++
		}
		compactCheck(t, line)
	}
	if took < 6 {
		t.Fatalf("only %d seeds take the fast path", took)
	}
}

// FuzzCompactRule: the compact form gives back exactly the rule fastRule
// read (FuzzFastRule checks that rule against the general parser).
func FuzzCompactRule(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add(s)
	}
	f.Add("deny from ::ffff:192.0.2.1")
	f.Fuzz(compactCheck)
}

// A policy read from a document holds its rules in store, not in rules:
// a reader of a rules field would see none. No exported field of Policy
// may hold rules, so that every reader outside this package goes through
// the accessors that see both forms (fails if Rules is exported again).
func TestPolicyRulesOnlyThroughAccessors(t *testing.T) {
	ruleType := reflect.TypeFor[Rule]()
	typ := reflect.TypeFor[Policy]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		ft := f.Type
		for ft.Kind() == reflect.Slice || ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Array {
			ft = ft.Elem()
		}
		if f.IsExported() && ft == ruleType {
			t.Errorf("Policy.%s (%s) is exported: a policy read from a document leaves it empty; read rules with NumRules, Rule, RuleSeq", f.Name, f.Type)
		}
	}
	// Both forms answer the accessors alike.
	d := NewDocument("f.conf", []byte("deny from 192.0.2.1\nallow 22/tcp\n"))
	p, err := d.Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	var q Policy
	q.SetRules(p.AllRules())
	if p.NumRules() != 2 || q.NumRules() != 2 || !reflect.DeepEqual(p.Rule(0), q.Rule(0)) || !reflect.DeepEqual(p.Rule(1), q.Rule(1)) {
		t.Fatalf("document policy %d rules, SetRules policy %d rules: %+v / %+v", p.NumRules(), q.NumRules(), p.AllRules(), q.AllRules())
	}
}
