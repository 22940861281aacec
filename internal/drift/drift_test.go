package drift

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/termtext"
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
	iptKernel, err := Read(context.Background(), "iptables", fakeKernel(t, nil), ParseScript("iptables", read(t, "iptables.script")))
	if err != nil {
		t.Fatal(err)
	}
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
	if len(nftKernel.Sets) != 2 || len(iptKernel.Sets) != 2 {
		t.Errorf("policy sets read: nft %d, ipt %d; want 2 each", len(nftKernel.Sets), len(iptKernel.Sets))
	}
}

// fakeKernel answers like the kernel of the fixtures; edit changes a
// tool's output first.
func fakeKernel(t *testing.T, edit func(name string, args []string, out string) string) func(context.Context, []byte, string, ...string) ([]byte, error) {
	return func(_ context.Context, _ []byte, name string, args ...string) ([]byte, error) {
		var out string
		switch {
		case name == "iptables-save":
			out = read(t, "iptables.save4")
		case name == "ip6tables-save":
			out = read(t, "iptables.save6")
		case name == "nft":
			out = read(t, "nftables.json")
		case name == "ipset" && len(args) == 2 && args[0] == "list":
			data, err := os.ReadFile("testdata/ipset." + args[1])
			if err != nil {
				return nil, errors.New("ipset v7.17: The set with the given name does not exist")
			}
			out = string(data)
		default:
			return nil, errors.New("unexpected " + name)
		}
		if edit != nil {
			out = edit(name, args, out)
		}
		return []byte(out), nil
	}
}

// An address added to (or taken from) one of moat's policy sets by hand
// shows, on both backends; the kernel merging what moat wrote does not.
func TestSetContents(t *testing.T) {
	ctx := context.Background()
	for _, b := range []string{"nftables", "iptables"} {
		script := read(t, b+".script")
		diff, _, err := Against(ctx, b, script, fakeKernel(t, nil))
		if err != nil || diff != nil {
			t.Errorf("%s: unchanged kernel: %q %v", b, diff, err)
		}
	}
	added := func(name string, args []string, out string) string {
		switch name {
		case "nft":
			return strings.Replace(out, `{"prefix": {"addr": "198.51.100.0", "len": 24}}`, `{"prefix": {"addr": "198.51.100.0", "len": 24}}, "203.0.113.9"`, 1)
		case "ipset":
			if strings.Contains(out, "198.51.100.0/24") {
				return out + "203.0.113.9\n"
			}
		}
		return out
	}
	for _, b := range []string{"nftables", "iptables"} {
		diff, _, err := Against(ctx, b, read(t, b+".script"), fakeKernel(t, added))
		if err != nil || len(diff) != 1 || !strings.Contains(diff[0], "holds other addresses than moat loaded: +203.0.113.9/32") {
			t.Errorf("%s: an address added by hand: %q %v", b, diff, err)
		}
	}
	removed := func(name string, args []string, out string) string {
		if name == "ipset" {
			return strings.Replace(out, "198.51.100.0/24\n", "", 1)
		}
		return out
	}
	diff, _, err := Against(ctx, "iptables", read(t, "iptables.script"), fakeKernel(t, removed))
	if err != nil || len(diff) != 1 || !strings.Contains(diff[0], "-198.51.100.0/24") {
		t.Errorf("an address removed by hand: %q %v", diff, err)
	}
	gone := func(name string, args []string, out string) string {
		if name == "ipset" && strings.Contains(out, "2001:db8") {
			return ""
		}
		return out
	}
	if diff, _, _ := Against(ctx, "iptables", read(t, "iptables.script"), fakeKernel(t, gone)); len(diff) != 1 || !strings.Contains(diff[0], "-2001:db8::/63") {
		t.Errorf("a set emptied by hand: %q", diff)
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
		{"jump given moat's condition by hand", strings.Replace(v4, "-A INPUT -j MOAT-INPUT\n", "-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n", 1), v6,
			[]string{`iptables chain INPUT jumps to MOAT-INPUT only where "-m conntrack ! --ctstate RELATED,ESTABLISHED", moat loaded for every packet`}},
		{"jump given another condition", strings.Replace(v4, "-A INPUT -j MOAT-INPUT\n", "-A INPUT -s 192.0.2.9/32 -j MOAT-INPUT\n", 1), v6,
			[]string{`iptables chain INPUT jumps to MOAT-INPUT only where "-s 192.0.2.9/32", moat loaded for every packet`}},
		{"a second jump", strings.Replace(v4, "-A INPUT -j MOAT-INPUT\n", "-A INPUT -j MOAT-INPUT\n-A INPUT ! -i lo -j MOAT-INPUT\n", 1), v6,
			[]string{"iptables chain INPUT jumps to MOAT-INPUT 2 times, moat loaded one jump"}},
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
		var out []string
		if l, err := ParseNftJSON(data); err == nil {
			out = append(out, Compare(l, newLayout())...)
			out = append(out, Compare(newLayout(), l)...)
		}
		l := ParseIptSave(data, data)
		out = append(out, Compare(ParseIptScript(string(data)), l)...)
		_ = ParseNftScript(string(data))
		// What drift reports goes to the admin's terminal: names and
		// comments read from the kernel never carry control characters.
		for _, line := range out {
			if line != termtext.Printable(line) {
				t.Fatalf("drift report %q carries control characters", line)
			}
		}
	})
}

// Two kernels whose bookkeeping chains (moat_sync, MOAT-GEN) differ only
// in their hashes (the protected sets hold the sessions logged in at the
// apply, which a scratch kernel cannot know) are the same filter; a rule
// of a filtering chain changed in place still shows.
func TestCompareSkipsBookkeepingBodies(t *testing.T) {
	layout := func(sync, gen, input string) *Layout {
		l := newLayout()
		l.chain("moat_sync").Rules = []Rule{{Tag: "set", Verdict: "return", Body: sync}}
		l.chain("ip MOAT-GEN").Rules = []Rule{{Tag: "moat:gen", Verdict: "return", Body: gen}}
		l.chain("input").Rules = []Rule{{Tag: "L2", Verdict: "accept", Body: input}}
		return l
	}
	if d := Compare(layout("set protect4 a b", "moat:gen 1", "tcp dport 22 accept"), layout("set protect4 a c", "moat:gen 2", "tcp dport 22 accept")); d != nil {
		t.Errorf("bookkeeping hashes count as drift: %q", d)
	}
	if d := Compare(layout("s", "g", "tcp dport 22 accept"), layout("s", "g", "tcp dport 23 accept")); d == nil {
		t.Error("a rule changed in place went unseen")
	}
}

// An early list (iptables' list:set of the sets the raw jump sends to
// moat's drops) is compared as a set of set names: another order is no
// difference, a member missing or added is named.
func TestEarlyListCompared(t *testing.T) {
	want := ParseIptScript("# ipset restore\ncreate moatnew-early4 list:set size 64\nadd moatnew-early4 moat-ban4\nadd moatnew-early4 moat-bl4_a\nrename moatnew-early4 moat-early4\n")
	for _, c := range []struct {
		members, want string
	}{
		{"moat-ban4\nmoat-bl4_a\n", ""},
		{"moat-bl4_a\nmoat-ban4\n", ""},
		{"moat-ban4\n", "set moat-early4 holds other sets than moat loaded: -moat-bl4_a (its sources are no longer dropped)"},
		{"moat-ban4\nmoat-bl4_a\nmoat-protect4\n", "set moat-early4 holds other sets than moat loaded: +moat-protect4"},
	} {
		got := newLayout()
		ParseIpsetList(got, "moat-early4", []byte("Name: moat-early4\nType: list:set\nMembers:\n"+c.members))
		d := Compare(want, got)
		if strings.Join(d, "\n") != c.want {
			t.Errorf("members %q: %q, want %q", c.members, d, c.want)
		}
	}
}
