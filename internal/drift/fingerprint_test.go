package drift

import "testing"

func layoutOf(body, elems string) *Layout {
	l := newLayout()
	c := l.chain("input")
	c.Head = "hook input priority 0 policy drop"
	c.Rules = []Rule{{Tag: "L1", Verdict: "accept", Body: body}}
	l.set("s4").addText(elems)
	l.Jumps["ip INPUT"] = true
	return l
}

func TestFingerprint(t *testing.T) {
	fp := func(l *Layout) string {
		t.Helper()
		s, err := Fingerprint(l)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	base := fp(layoutOf("tcp dport 22", "192.0.2.0/24, 198.51.100.7"))
	if got := fp(layoutOf("tcp dport 22", "198.51.100.7, 192.0.2.0/25, 192.0.2.128/25")); got != base {
		t.Error("the same addresses written otherwise changed the fingerprint")
	}
	for name, l := range map[string]*Layout{
		"rule body changed in place": layoutOf("tcp dport 8080", "192.0.2.0/24, 198.51.100.7"),
		"set element added":          layoutOf("tcp dport 22", "192.0.2.0/24, 198.51.100.7, 203.0.113.1"),
		"set element removed":        layoutOf("tcp dport 22", "192.0.2.0/24"),
	} {
		if fp(l) == base {
			t.Errorf("%s: fingerprint unchanged", name)
		}
	}
	l := layoutOf("tcp dport 22", "192.0.2.0/24, 198.51.100.7")
	l.Chains["input"].Head = "hook input priority 0 policy accept"
	if fp(l) == base {
		t.Error("chain policy changed: fingerprint unchanged")
	}
	l = layoutOf("tcp dport 22", "192.0.2.0/24, 198.51.100.7")
	delete(l.Jumps, "ip INPUT")
	if fp(l) == base {
		t.Error("jump removed: fingerprint unchanged")
	}
	l = layoutOf("tcp dport 22", "192.0.2.0/24, 198.51.100.7")
	l.JumpConds["ip INPUT"] = "! -i lo"
	if fp(l) == base {
		t.Error("jump's condition changed: fingerprint unchanged")
	}
	l = layoutOf("tcp dport 22", "192.0.2.0/24, 198.51.100.7")
	l.JumpsMore["ip INPUT"] = 1
	if fp(l) == base {
		t.Error("a second jump: fingerprint unchanged")
	}
}
