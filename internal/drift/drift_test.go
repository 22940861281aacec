package drift

import (
	"os"
	"strings"
	"testing"
)

func read(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// The fixtures are one policy (testdata/policy.conf) as 'moat show'
// rendered it and as the kernel listed it after 'moat enable'.
func TestScriptMatchesKernel(t *testing.T) {
	nftKernel, err := ParseNftJSON([]byte(read(t, "nftables.json")))
	if err != nil {
		t.Fatal(err)
	}
	iptKernel := ParseIptSave([]byte(read(t, "iptables.save4")), []byte(read(t, "iptables.save6")))
	for _, c := range []struct {
		name         string
		script, kern *Layout
	}{
		{"nftables", ParseScript("nftables", read(t, "nftables.script")), nftKernel},
		{"iptables", ParseScript("iptables", read(t, "iptables.script")), iptKernel},
	} {
		if c.script.Empty() || len(c.script.Chains) < 3 {
			t.Fatalf("%s: script layout has %d chains", c.name, len(c.script.Chains))
		}
		if diff := Compare(c.script, c.kern); diff != nil {
			t.Errorf("%s: kernel and script differ: %q", c.name, diff)
		}
	}
	if !iptKernel.Jumps["ip INPUT"] || !iptKernel.Jumps["ip6 FORWARD"] {
		t.Errorf("jumps not read: %v", iptKernel.Jumps)
	}
	if h := nftKernel.Chains["input"].Head; h != "hook input priority 0 policy drop" {
		t.Errorf("nft input chain head %q", h)
	}
}

func TestCompareSaysWhatChanged(t *testing.T) {
	script := read(t, "iptables.script")
	want := ParseScript("iptables", script)
	v4, v6 := read(t, "iptables.save4"), read(t, "iptables.save6")
	cases := []struct {
		name     string
		v4, v6   string
		contains []string
	}{
		{"rule added", strings.Replace(v4, "-A MOAT-INPUT ", "-A MOAT-INPUT -p tcp --dport 6000 -j RETURN\n-A MOAT-INPUT ", 1), v6,
			[]string{"chain ip MOAT-INPUT has 1 rule moat did not load: a rule without moat's tag (return)"}},
		{"rule removed", dropLine(v4, `--comment L3`), v6, []string{"chain ip MOAT-INPUT lacks 1 rule moat loaded: L3 (reject)"}},
		{"verdict changed", strings.Replace(v6, `--comment "L2 admins" -j RETURN`, `--comment "L2 admins" -j DROP`, 1), "",
			[]string{"chain ip6 MOAT-INPUT has 1 rule moat did not load: L2 (drop)", "lacks 1 rule moat loaded: L2 (return)"}},
		{"jump lost", dropLine(v4, "-A INPUT -j MOAT-INPUT"), v6, []string{"iptables chain INPUT no longer jumps to MOAT-INPUT"}},
		{"chain gone", dropAll(v4, "MOAT-OUTPUT"), v6, []string{"chain ip MOAT-OUTPUT is missing"}},
	}
	for _, c := range cases {
		if c.v6 == "" {
			c.v4, c.v6 = v4, c.v4
		}
		diff := strings.Join(Compare(want, ParseIptSave([]byte(c.v4), []byte(c.v6))), "\n")
		for _, s := range c.contains {
			if !strings.Contains(diff, s) {
				t.Errorf("%s: %q lacks %q", c.name, diff, s)
			}
		}
	}
	// Reordered rules.
	kern := ParseNftScript(read(t, "nftables.script"))
	rules := kern.Chains["input"].Rules
	rules[0], rules[1] = rules[1], rules[0]
	if diff := Compare(ParseNftScript(read(t, "nftables.script")), kern); len(diff) != 1 || !strings.Contains(diff[0], "another order") {
		t.Errorf("reordered: %q", diff)
	}
	// A chain policy changed by hand.
	kern = ParseNftScript(strings.Replace(read(t, "nftables.script"), "hook input priority 0 ; policy drop", "hook input priority 0 ; policy accept", 1))
	if diff := Compare(ParseNftScript(read(t, "nftables.script")), kern); len(diff) != 1 || !strings.Contains(diff[0], "policy accept, moat loaded hook input priority 0 policy drop") {
		t.Errorf("policy: %q", diff)
	}
	if m := Missing(want, ParseIptSave([]byte(dropLine(v4, `--comment L3`)), []byte(v6))); !m["L3"] || len(m) != 1 {
		t.Errorf("Missing: %v", m)
	}
}

func dropLine(s, sub string) string {
	var out []string
	done := false
	for _, l := range strings.Split(s, "\n") {
		if !done && strings.Contains(l, sub) {
			done = true
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

func dropAll(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"nftables":[{"rule":{"chain":"input","comment":"L1","expr":[{"accept":null}]}}]}`))
	f.Add([]byte("-A MOAT-INPUT -m comment --comment \"L1 x\" -j RETURN\n-A INPUT -j MOAT-INPUT\n:MOAT-X - [0:0]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if l, err := ParseNftJSON(data); err == nil {
			_ = Compare(l, newLayout())
		}
		l := ParseIptSave(data, data)
		_ = Compare(ParseIptScript(string(data)), l)
		_ = ParseNftScript(string(data))
	})
}
