package ipt

import (
	"context"
	"strings"
	"testing"
)

func TestCommitsOf(t *testing.T) {
	for _, c := range []struct {
		script string
		n      uint32
		sure   bool
	}{
		{"", 0, true},
		{"*filter\n:MOAT-GEN - [0:0]\n-A MOAT-GEN -j RETURN\nCOMMIT\n", 1, true},
		{"*raw\n:MOAT-PREROUTING - [0:0]\n-I PREROUTING 1 -j MOAT-PREROUTING\nCOMMIT\n*filter\n:MOAT-INPUT - [0:0]\n-A MOAT-INPUT -j DROP\nCOMMIT\n", 2, true},
		// An empty chain declared again changes nothing: no transaction.
		{"*raw\n:MOAT-PREROUTING - [0:0]\nCOMMIT\n*filter\n-A MOAT-INPUT -j DROP\nCOMMIT\n", 2, false},
		{"*filter\n:MOAT-INPUT - [0:0]\n-D INPUT -j MOAT-INPUT\n-X MOAT-INPUT\nCOMMIT\n", 1, true},
	} {
		n, sure := commitsOf(c.script)
		if n != c.n || sure != c.sure {
			t.Errorf("commitsOf(%q) = %d, %v; want %d, %v", c.script, n, sure, c.n, c.sure)
		}
	}
}

// genHost is a fake host whose nftables generation moves by one for each
// table section an iptables-restore commits (each changes something
// here), and once more for a rule inserted by hand during the IPv6
// restore when hand is set.
type genHost struct {
	fakeHost
	gen  uint32
	hand bool
}

func (g *genHost) run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	if strings.HasSuffix(name, "tables-restore") && !strings.Contains(strings.Join(args, " "), "--test") {
		if name == "ip6tables-restore" && g.hand {
			g.gen++
		}
		g.gen += uint32(strings.Count(string(stdin), "COMMIT\n"))
	}
	return g.fakeHost.run(ctx, stdin, name, args...)
}

// LastApply's count of transactions is what the restores committed: the
// generation after is before+commits, and a hand change during the
// command makes it one more, which the caller then does not vouch for.
func TestLastApplyCountsCommits(t *testing.T) {
	if legacyTables() {
		t.Skip("legacy x_tables loaded here: no generation tracks moat's chains")
	}
	for _, hand := range []bool{false, true} {
		host := &genHost{fakeHost: fakeHost{save: map[string]string{
			"iptables-save":  "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n",
			"ip6tables-save": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n",
		}}, gen: 40, hand: hand}
		old := nftGeneration
		nftGeneration = func() (uint32, error) { return host.gen, nil }
		t.Cleanup(func() { nftGeneration = old })
		b := &Backend{Run: host.run, Netlink: true}
		if _, _, applied, _ := b.LastApply(); applied {
			t.Fatal("LastApply says applied before any Apply")
		}
		if err := b.Apply(context.Background(), goldenRuleset(t)); err != nil {
			t.Fatal(err)
		}
		before, commits, applied, known := b.LastApply()
		if !applied || !known || before != 40 || commits < 2 {
			t.Fatalf("LastApply = %d, %d, %v, %v", before, commits, applied, known)
		}
		if got := before+commits == host.gen; got == hand {
			t.Errorf("hand change %v: before %d + commits %d vs generation %d", hand, before, commits, host.gen)
		}
		// A restore that is no Apply's (a snapshot, Remove) forgets it.
		if err := b.Remove(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, _, applied, known := b.LastApply(); applied || known {
			t.Errorf("LastApply after Remove: applied %v, known %v", applied, known)
		}
	}
}

// The chains taken again from the last read (same generation) come
// without the ipsets that read found: those are listed anew. An Apply's
// own state, with sets it then destroyed, serves the fingerprint after
// it; a second Apply in the same command (the undo of a killed command,
// then the change) must not destroy them again (ipset: "The set with the
// given name does not exist", the command failed).
func TestReadListsSetsAnew(t *testing.T) {
	if legacyTables() {
		t.Skip("legacy x_tables loaded here: no generation tracks moat's chains")
	}
	host := &fakeHost{save: map[string]string{
		"iptables-save":  "*filter\n:INPUT ACCEPT [0:0]\n:MOAT-INPUT - [0:0]\n-A INPUT -j MOAT-INPUT\nCOMMIT\n",
		"ip6tables-save": "*filter\n:INPUT ACCEPT [0:0]\n:MOAT-INPUT - [0:0]\n-A INPUT -j MOAT-INPUT\nCOMMIT\n",
	}, sets: "moat-a\nmoat-gone\n"}
	old := nftGeneration
	nftGeneration = func() (uint32, error) { return 7, nil }
	t.Cleanup(func() { nftGeneration = old })
	b := &Backend{Run: host.run, Netlink: true}
	st, err := b.read(context.Background())
	if err != nil || !st.sets["moat-gone"] {
		t.Fatalf("first read: %v %v", st, err)
	}
	// The fingerprint after an Apply that destroyed moat-gone, from
	// the Apply's own state.
	b.track = commitTrack{known: true, before: 7, after: &afterApply{gen: 7, st: st, sets: map[string]bool{}}}
	if _, err := b.FingerprintKernel(context.Background()); err != nil {
		t.Fatal(err)
	}
	host.sets = "moat-a\n"
	saves := len(host.calls)
	st, err = b.read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.sets["moat-gone"] || !st.sets["moat-a"] {
		t.Errorf("sets after a read from the last one: %v, want moat-a alone", st.sets)
	}
	for _, c := range host.calls[saves:] {
		if strings.HasSuffix(strings.Fields(c.args)[0], "tables-save") {
			t.Errorf("the chains were read again at the same generation: %s", c.args)
		}
	}
}
