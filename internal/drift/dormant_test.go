package drift

import (
	"strings"
	"testing"
)

// A dormant table is drift: Compare names it and the fingerprint differs,
// while a table that is not dormant keeps the fingerprint it had before the
// flag was read (no false drift after an upgrade).
func TestDormantTable(t *testing.T) {
	want := ParseNftScript("table inet moat {\n\tchain input {\n\t\ttype filter hook input priority 0; policy drop;\n\t\tct state established,related accept\n\t}\n}\n")
	got := ParseNftScript("table inet moat {\n\tchain input {\n\t\ttype filter hook input priority 0; policy drop;\n\t\tct state established,related accept\n\t}\n}\n")
	if d := Compare(want, got); len(d) != 0 {
		t.Fatalf("same layouts differ: %v", d)
	}
	before, err := Fingerprint(got)
	if err != nil {
		t.Fatal(err)
	}
	got.Dormant = true
	d := Compare(want, got)
	if len(d) == 0 || !strings.Contains(d[0], "dormant") {
		t.Errorf("Compare of a dormant table: %v", d)
	}
	after, err := Fingerprint(got)
	if err != nil || after == before {
		t.Errorf("the fingerprint does not change with the dormant flag: %s %v", after, err)
	}
	for _, js := range []string{`"flags": "dormant"`, `"flags": ["dormant", "owner"]`} {
		l, err := ParseNftJSON([]byte(`{"nftables": [{"table": {"family": "inet", "name": "moat", ` + js + `}}]}`))
		if err != nil || !l.Dormant {
			t.Errorf("ParseNftJSON %s: dormant %v, %v", js, l != nil && l.Dormant, err)
		}
	}
	l, err := ParseNftJSON([]byte(`{"nftables": [{"table": {"family": "inet", "name": "moat", "handle": 1}}]}`))
	if err != nil || l.Dormant {
		t.Errorf("ParseNftJSON without flags: dormant %v, %v", l != nil && l.Dormant, err)
	}
}
