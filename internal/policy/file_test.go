package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `# moat policy
backend nftables

default deny incoming   # drop by default
allow 22/tcp comment 'admins'

# web
allow 80,443/tcp
deny from 203.0.113.0/24
`

func TestDocumentPolicy(t *testing.T) {
	d := NewDocument("moat.conf", []byte(sample))
	p, err := d.Policy(testServices)
	if err != nil {
		t.Fatal(err)
	}
	if p.Backend != BackendNftables || p.Defaults[In] != Deny || p.Defaults[Out] != Allow {
		t.Fatalf("settings: %+v", p)
	}
	if len(p.Rules) != 3 {
		t.Fatalf("rules: %d", len(p.Rules))
	}
	if r := p.Rules[0]; r.Pos.Line != 5 || r.Text != "allow 22/tcp comment 'admins'" {
		t.Fatalf("rule 1 at %+v text %q", r.Pos, r.Text)
	}
	if p.DefaultPos[In].Line != 4 {
		t.Fatalf("default position %+v", p.DefaultPos[In])
	}
}

func TestDocumentErrorsNameEveryLine(t *testing.T) {
	d := NewDocument("/etc/moat/moat.conf", []byte("allow 22/tcp\nallow 99999\n\ndeny from nowhere\nfrobnicate\n"))
	_, err := d.Policy(testServices)
	if err == nil {
		t.Fatal("invalid file accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		"/etc/moat/moat.conf:2:7: bad port '99999'",
		"/etc/moat/moat.conf:4:11: bad address 'nowhere'",
		"/etc/moat/moat.conf:5:1: unknown statement 'frobnicate'",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
}

func TestDocumentEdits(t *testing.T) {
	d := NewDocument("moat.conf", []byte(sample))
	d.AppendLine("allow 53")
	if err := d.InsertRule(1, "deny from 198.51.100.7"); err != nil {
		t.Fatal(err)
	}
	if err := d.InsertRule(9, "allow 1/tcp"); err == nil {
		t.Fatal("insert past the end accepted")
	}
	d.SetDefault(In, Reject)
	d.SetDefault(Out, Deny)
	line, err := d.DeleteRule(3)
	if err != nil || line != "allow 80,443/tcp" {
		t.Fatalf("delete 3: %q %v", line, err)
	}
	want := `# moat policy
backend nftables

default reject incoming
default deny outgoing
deny from 198.51.100.7
allow 22/tcp comment 'admins'

# web
deny from 203.0.113.0/24
allow 53
`
	if got := string(d.Bytes()); got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	r, _ := parseLine("allow 53/tcp")
	if n := d.FindRule(r.Rule, testServices); n != 0 {
		t.Fatalf("found %d for a rule not there", n)
	}
	r, _ = parseLine("allow domain")
	if n := d.FindRule(r.Rule, testServices); n != 4 {
		t.Fatalf("allow domain is rule %d, want 4", n)
	}
}

func TestDocumentWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "sub", "moat.conf")
	d, err := ReadDocument(name)
	if err != nil || len(d.Lines) != 0 {
		t.Fatalf("missing file: %v %v", d, err)
	}
	d.AppendLine("allow 22/tcp")
	if err := d.Write(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(name)
	if err != nil || string(data) != "allow 22/tcp\n" {
		t.Fatalf("%q %v", data, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(name))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

func TestQuoteArgsRoundTrip(t *testing.T) {
	args := []string{"allow", "22/tcp", "comment", "ssh for admins"}
	line := QuoteArgs(args)
	toks, err := Lex(line)
	if err != nil || len(toks) != 4 || toks[3].Text != "ssh for admins" {
		t.Fatalf("%q -> %+v %v", line, toks, err)
	}
}
