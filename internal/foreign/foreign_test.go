package foreign

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/termtext"
)

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// The fixtures are a namespace with moat (iptables backend) applied and,
// outside moat: table inet foreign (input: policy drop, a drop rule, a
// jump to a chain with a reject rule), iptables FORWARD policy DROP, a
// ufw-user-input chain with a DROP rule, DOCKER-USER with a DROP rule, and
// an ip6tables REJECT rule in OUTPUT.
func TestDetect(t *testing.T) {
	files := map[string]string{"nft": "ruleset.json", "iptables-save": "iptables.save", "ip6tables-save": "ip6tables.save"}
	run := func(_ context.Context, _ []byte, name string, args ...string) ([]byte, error) {
		if name == "iptables" {
			return []byte("iptables v1.8.9 (nf_tables)\n"), nil
		}
		if f, ok := files[name]; ok {
			return fixture(t, f), nil
		}
		return nil, errors.New("unexpected " + name)
	}
	got, err := Detect(context.Background(), run, func(string) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, f := range got {
		lines = append(lines, f.String())
	}
	want := []string{
		"nftables table inet foreign, chain input (hook input, priority 10): policy drop, 2 drop/reject rules (input)",
		"ufw: iptables filter chain ufw-user-input: 1 DROP/REJECT rule (input)",
		"ufw: iptables filter chain FORWARD: policy DROP (forward)",
		"docker: iptables filter chain DOCKER-USER: 1 DROP/REJECT rule (forward)",
		"ip6tables filter chain OUTPUT: 1 DROP/REJECT rule (output)",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	for _, f := range got {
		if strings.Contains(f.Where, "MOAT") || strings.Contains(f.Where, "moat") {
			t.Errorf("moat's own rules reported: %s", f)
		}
	}
	if !got[0].Sees("input") || got[0].Sees("output") || !got[2].Sees("forward") || got[4].Sees("input") {
		t.Errorf("Sees is wrong: %+v", got)
	}
	// Without iptables-nft, the xtables tables of nft are nft's to report.
	f, err := FromNftJSON(fixture(t, "ruleset.json"), false)
	if err != nil || len(f) < 2 {
		t.Errorf("nft view with xtables tables: %v %v", f, err)
	}
}

func TestPreroutingSeesInputAndForward(t *testing.T) {
	f := Finding{Hooks: []string{"prerouting"}}
	if !f.Sees("input") || !f.Sees("forward") || f.Sees("output") {
		t.Errorf("%+v", f)
	}
}

func FuzzFromIptablesSave(f *testing.F) {
	if data, err := os.ReadFile("testdata/iptables.save"); err == nil {
		f.Add(data)
	}
	f.Add([]byte(":INPUT DROP [0:0]\n-A INPUT -j X\n-A X -j X\n-A X -g Y\n-A Y -j DROP\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		found := FromIptablesSave("iptables", data)
		more, _ := FromNftJSON(data, true)
		// A finding is shown on the admin's terminal: the names in it are
		// the other tools' (or an attacker's) to choose.
		for _, f := range append(found, more...) {
			if s := f.String(); s != termtext.Printable(s) {
				t.Fatalf("finding %q carries control characters", s)
			}
		}
	})
}

func TestHostileNamesArePrinted(t *testing.T) {
	f := FromIptablesSave("iptables", []byte(":INPUT ACCEPT [0:0]\n:\x1b]0;pwned\x07X - [0:0]\n-A INPUT -j \x1b]0;pwned\x07X\n-A \x1b]0;pwned\x07X -j DROP\n"))
	if len(f) != 1 || strings.ContainsAny(f[0].String(), "\x1b\x07") {
		t.Errorf("%q", f)
	}
}

// With a table lister, moat's own table is never listed (nft would fetch
// every ban in it), and the others give the same findings.
func TestDetectWithTables(t *testing.T) {
	files := map[string]string{"iptables-save": "iptables.save", "ip6tables-save": "ip6tables.save"}
	var listed []string
	run := func(_ context.Context, _ []byte, name string, args ...string) ([]byte, error) {
		if name == "iptables" {
			return []byte("iptables v1.8.9 (nf_tables)\n"), nil
		}
		if name == "nft" {
			listed = append(listed, strings.Join(args, " "))
			if strings.Join(args, " ") != "-j list table inet foreign" {
				return nil, errors.New("unexpected nft " + strings.Join(args, " "))
			}
			return fixture(t, "ruleset.json"), nil
		}
		if f, ok := files[name]; ok {
			return fixture(t, f), nil
		}
		return nil, errors.New("unexpected " + name)
	}
	noLegacy(t)
	tables := func() ([][2]string, error) {
		return [][2]string{{"inet", "moat"}, {"inet", "foreign"}, {"ip", "filter"}, {"ip6", "filter"}}, nil
	}
	got, err := DetectWith(context.Background(), run, func(string) bool { return true }, tables)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Detect(context.Background(), func(ctx context.Context, in []byte, name string, args ...string) ([]byte, error) {
		if name == "nft" {
			return fixture(t, "ruleset.json"), nil
		}
		return run(ctx, in, name, args...)
	}, func(string) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 || len(got) != len(want) {
		t.Fatalf("listed %q; got %v, want %v", listed, got, want)
	}
	for i := range got {
		if got[i].String() != want[i].String() {
			t.Errorf("%d: %s, want %s", i, got[i], want[i])
		}
	}
}

func TestRawAndMangleTables(t *testing.T) {
	save := "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -p tcp --dport 6003 -j DROP\nCOMMIT\n" +
		"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j DROP\nCOMMIT\n" +
		"*mangle\n:PREROUTING ACCEPT [0:0]\n:FORWARD DROP [0:0]\nCOMMIT\n" +
		"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j MOAT-INPUT\n:MOAT-INPUT - [0:0]\n-A MOAT-INPUT -j DROP\nCOMMIT\n"
	var got []string
	for _, f := range FromIptablesSave("iptables", []byte(save)) {
		got = append(got, f.String())
	}
	want := "iptables raw chain PREROUTING: 1 DROP/REJECT rule (prerouting)\niptables mangle chain FORWARD: policy DROP (forward)"
	if strings.Join(got, "\n") != want {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), want)
	}
}

// ufw's ip6tables chains are named ufw6-*: a DROP policy beside them is
// ufw's too (it was reported without an owner).
func TestUFW6PolicyOwner(t *testing.T) {
	save := "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:ufw6-before-input - [0:0]\n" +
		"-A INPUT -j ufw6-before-input\n-A ufw6-before-input -m rt --rt-type 0 -j DROP\nCOMMIT\n"
	got := FromIptablesSave("ip6tables", []byte(save))
	if len(got) == 0 {
		t.Fatal("no findings")
	}
	for _, f := range got {
		if f.Tool != "ufw" {
			t.Errorf("not ufw's: %s", f)
		}
	}
}

func TestSeesFamily(t *testing.T) {
	for where, want := range map[string][2]bool{ // v4, v6
		"iptables filter chain INPUT":                                        {true, false},
		"ip6tables filter chain INPUT":                                       {false, true},
		"nftables table ip filter, chain INPUT (hook input, priority 0)":     {true, false},
		"nftables table ip6 filter, chain INPUT (hook input, priority 0)":    {false, true},
		"nftables table inet foreign, chain input (hook input, priority 10)": {true, true},
		"nftables table ip6x weird, chain c (hook input, priority 0)":        {true, true},
	} {
		f := Finding{Where: where}
		if f.SeesFamily(false) != want[0] || f.SeesFamily(true) != want[1] {
			t.Errorf("%s: SeesFamily(v4, v6) = %v, %v; want %v", where, f.SeesFamily(false), f.SeesFamily(true), want)
		}
	}
}

// noLegacy makes the legacy x_tables modules look unloaded.
func noLegacy(t *testing.T) {
	saved := legacyTableNames
	t.Cleanup(func() { legacyTableNames = saved })
	legacyTableNames = map[string]string{"ip": "/nonexistent/ip_tables_names", "ip6": "/nonexistent/ip6_tables_names"}
}

// With only moat's table in nftables and no legacy x_tables table loaded,
// there is nothing to read: no process is started (iptables -V and the
// two iptables-save cost more than the rest of a command).
func TestDetectStartsNothingWithoutOtherTables(t *testing.T) {
	noLegacy(t)
	var ran []string
	run := func(_ context.Context, _ []byte, name string, args ...string) ([]byte, error) {
		ran = append(ran, name)
		return nil, errors.New("unexpected " + name)
	}
	tables := func() ([][2]string, error) { return [][2]string{{"inet", "moat"}}, nil }
	got, err := DetectWith(context.Background(), run, func(string) bool { return true }, tables)
	if err != nil || len(got) != 0 || len(ran) != 0 {
		t.Fatalf("got %v, %v; ran %q", got, err, ran)
	}
	// A legacy table loaded for IPv4 only: iptables is read, not ip6tables.
	dir := t.TempDir()
	legacyTableNames = map[string]string{"ip": filepath.Join(dir, "v4"), "ip6": filepath.Join(dir, "v6")}
	if err := os.WriteFile(legacyTableNames["ip"], []byte("filter\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run = func(_ context.Context, _ []byte, name string, args ...string) ([]byte, error) {
		ran = append(ran, name)
		if name == "iptables" {
			return []byte("iptables v1.8.9 (legacy)\n"), nil
		}
		return []byte("*filter\n:INPUT DROP [0:0]\nCOMMIT\n"), nil
	}
	got, err = DetectWith(context.Background(), run, func(string) bool { return true }, tables)
	if err != nil || len(got) != 1 || strings.Join(ran, " ") != "iptables iptables-save" {
		t.Fatalf("got %v, %v; ran %q", got, err, ran)
	}
}

// Legacy x_tables tables beside iptables-nft's are read with
// iptables-legacy-save: the nf_tables kind of iptables-save does not show
// them, and a DROP there went unnamed.
func TestDetectLegacyBesideNft(t *testing.T) {
	dir := t.TempDir()
	saved := legacyTableNames
	t.Cleanup(func() { legacyTableNames = saved })
	legacyTableNames = map[string]string{"ip": filepath.Join(dir, "v4"), "ip6": filepath.Join(dir, "v6")}
	if err := os.WriteFile(legacyTableNames["ip"], []byte("filter\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(_ context.Context, _ []byte, name string, args ...string) ([]byte, error) {
		switch name {
		case "iptables":
			return []byte("iptables v1.8.9 (nf_tables)\n"), nil
		case "iptables-legacy-save":
			return []byte("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 6007 -j DROP\nCOMMIT\n"), nil
		}
		return []byte("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"), nil
	}
	tables := func() ([][2]string, error) { return [][2]string{{"inet", "moat"}}, nil }
	got, err := DetectWith(context.Background(), run, func(string) bool { return true }, tables)
	if err != nil || len(got) != 1 || !strings.HasPrefix(got[0].Where, "iptables-legacy filter chain INPUT") || got[0].SeesFamily(true) || !got[0].SeesFamily(false) {
		t.Fatalf("got %+v, %v", got, err)
	}
}

// A chain on the ingress hook (netdev, or inet since Linux 5.10) drops
// packets before moat's input chain sees them: it is other filtering that
// can cut SSH, as prerouting is.
func TestFromNftJSONIngress(t *testing.T) {
	data := `{"nftables": [{"table": {"family": "netdev", "name": "evil", "handle": 1}}, {"chain": {"family": "netdev", "table": "evil", "name": "ing", "handle": 1, "type": "filter", "hook": "ingress", "prio": 0, "policy": "drop"}}, {"table": {"family": "inet", "name": "evil2", "handle": 2}}, {"chain": {"family": "inet", "table": "evil2", "name": "ing", "handle": 1, "type": "filter", "hook": "ingress", "prio": 0, "policy": "accept"}}, {"rule": {"family": "inet", "table": "evil2", "chain": "ing", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "192.0.2.9"}}, {"drop": null}]}}]}`
	got, err := FromNftJSON([]byte(data), false)
	if err != nil || len(got) != 2 {
		t.Fatalf("%+v, %v", got, err)
	}
	for _, f := range got {
		if !f.Sees("input") || !f.Sees("forward") || f.Sees("output") {
			t.Errorf("%s: sees input %v, forward %v, output %v", f, f.Sees("input"), f.Sees("forward"), f.Sees("output"))
		}
	}
	if findings(got) != "nftables table netdev evil, chain ing (hook ingress, priority 0): policy drop (ingress)\nnftables table inet evil2, chain ing (hook ingress, priority 0): 1 drop/reject rule (ingress)" {
		t.Errorf("%s", findings(got))
	}
}
