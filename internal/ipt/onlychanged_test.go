package ipt

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
)

// declaredChains are the chains a script declares (and so flushes).
func declaredChains(script string) []string {
	var out []string
	for _, l := range strings.Split(script, "\n") {
		if rest, ok := strings.CutPrefix(l, ":"); ok {
			name, _, _ := strings.Cut(rest, " ")
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// A run of edits, each written as onlyChanged leaves render's script:
// only the chains whose rules changed (and MOAT-GEN) are declared, and
// the state predicted from the shortened scripts is the state predicted
// from the whole ones (the same chains, jumps, record and sums), so
// nothing a chain should hold is left out. It fails when onlyChanged
// keeps every chain (the edits declare more) or drops one that changed
// (the predictions differ).
func TestOnlyChanged(t *testing.T) {
	head := "default deny incoming\nallow 22/tcp\ndeny from 198.51.100.0/24\ndeny from 2001:db8:5::/48\n"
	in, out := []string{"MOAT-GEN", "MOAT-INPUT"}, []string{"MOAT-GEN", "MOAT-OUTPUT"}
	edits := []struct {
		text         string
		want4, want6 []string // chains declared in each family
	}{
		{head + "allow 8080/tcp\n", in, in},
		{head, in, in},
		{head + "deny out 25/tcp\n", out, out},
		{head + "deny out 25/tcp\nallow 8080/tcp\n", in, in},
		// One family's rules alone: the other's record is written.
		{head + "deny out 25/tcp\nallow 8080/tcp\nallow from 2001:db8:7::/48\n", []string{"MOAT-GEN"}, in},
		{head + "default deny outgoing\nallow 8080/tcp\n", []string{"MOAT-GEN", "MOAT-OUTPUT"}, []string{"MOAT-GEN", "MOAT-INPUT", "MOAT-OUTPUT"}},
		{"default allow incoming\n", []string{"MOAT-GEN", "MOAT-INPUT", "MOAT-OUTPUT"}, []string{"MOAT-GEN", "MOAT-INPUT", "MOAT-OUTPUT"}},
		// MOAT-PREROUTING and MOAT-OUTPUT hold what they held before.
		{head, in, in},
	}
	st := &state{jumps: map[policy.Family]map[string]Jump{}, has: map[policy.Family]map[string]bool{},
		gen: map[policy.Family]string{}, held: map[policy.Family]contents{}, rules: map[policy.Family]string{}}
	for _, f := range families {
		st.jumps[f.fam], st.has[f.fam] = map[string]Jump{}, map[string]bool{}
	}
	write := func(st *state, text string, short bool) (*state, map[policy.Family]string) {
		rs := compileText(t, text)
		names := SetNames(rs)
		c := contentsOf(rs, names)
		gen := generation(rs, names, c)
		wrote, scripts := map[policy.Family][]string{}, map[policy.Family]string{}
		for _, f := range families {
			script := renderTables(rs, f.fam, st.jumps[f.fam], names, gen, c, tables)
			if short {
				script = onlyChanged(script, st.sums[f.fam], st.has[f.fam])
			}
			wrote[f.fam], scripts[f.fam] = []string{script}, script
		}
		next := predictState(st, wrote)
		if next == nil {
			t.Fatalf("%q: no prediction", text)
		}
		return next, scripts
	}
	st, first := write(st, head, true)
	for _, f := range families {
		// Nothing known yet: everything written.
		if got := declaredChains(first[f.fam]); !slices.Contains(got, "MOAT-PREROUTING") || !slices.Contains(got, "MOAT-INPUT") {
			t.Fatalf("first write declares %q", got)
		}
		if len(st.sums[f.fam]) == 0 {
			t.Fatalf("%s: no sums after a whole write", f.fam)
		}
	}
	for i, e := range edits {
		short, scripts := write(st, e.text, true)
		whole, _ := write(st, e.text, false)
		for _, f := range families {
			want := e.want4
			if f.fam == policy.FamilyV6 {
				want = e.want6
			}
			if got := declaredChains(scripts[f.fam]); !slices.Equal(got, want) {
				t.Errorf("edit %d %s: declares %q, want %q\n%s", i, f.fam, got, want, scripts[f.fam])
			}
			if !maps.Equal(short.sums[f.fam], whole.sums[f.fam]) || !maps.Equal(short.has[f.fam], whole.has[f.fam]) ||
				!jumpsEqual(short.jumps[f.fam], whole.jumps[f.fam]) ||
				short.gen[f.fam] != whole.gen[f.fam] || short.rules[f.fam] != whole.rules[f.fam] {
				t.Errorf("edit %d %s: the shortened script predicts\n%v %v %v\nthe whole one\n%v %v %v", i, f.fam,
					short.sums[f.fam], short.has[f.fam], short.gen[f.fam], whole.sums[f.fam], whole.has[f.fam], whole.gen[f.fam])
			}
		}
		st = short
	}
}

func jumpsEqual(a, b map[string]Jump) bool {
	return maps.EqualFunc(a, b, func(x, y Jump) bool { return x.Cond == y.Cond && x.Pos == y.Pos && slices.Equal(x.Extra, y.Extra) })
}

// A chain is written whole when its sum is not known, when it is not
// there, or when it is MOAT-GEN; jumps inserted stay; a table with
// nothing left is left out.
func TestOnlyChangedKeeps(t *testing.T) {
	rules := []string{"-A MOAT-INPUT -j ACCEPT"}
	script := "*raw\n:MOAT-PREROUTING - [0:0]\n-A MOAT-PREROUTING -j RETURN\nCOMMIT\n" +
		"*filter\n:MOAT-INPUT - [0:0]\n:MOAT-GEN - [0:0]\n-A MOAT-GEN -m comment --comment \"g\" -j RETURN\n" + rules[0] + "\n-I INPUT 1 -j MOAT-INPUT\nCOMMIT\n"
	sums := map[string]string{"MOAT-INPUT": chainSum(rules), "MOAT-PREROUTING": chainSum([]string{"-A MOAT-PREROUTING -j RETURN"}), GenChain: chainSum(nil)}
	has := map[string]bool{"MOAT-INPUT": true, "MOAT-PREROUTING": true, GenChain: true}
	want := "*filter\n:MOAT-GEN - [0:0]\n-A MOAT-GEN -m comment --comment \"g\" -j RETURN\n-I INPUT 1 -j MOAT-INPUT\nCOMMIT\n"
	if got := onlyChanged(script, sums, has); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	for name, tc := range map[string]struct {
		sums map[string]string
		has  map[string]bool
	}{
		"unknown":   {map[string]string{"MOAT-PREROUTING": sums["MOAT-PREROUTING"]}, has},
		"not there": {sums, map[string]bool{"MOAT-PREROUTING": true, GenChain: true}},
		"changed":   {map[string]string{"MOAT-INPUT": chainSum(nil), "MOAT-PREROUTING": sums["MOAT-PREROUTING"]}, has},
	} {
		got := onlyChanged(script, tc.sums, tc.has)
		if !strings.Contains(got, ":MOAT-INPUT - [0:0]\n") || !strings.Contains(got, rules[0]+"\n") || strings.Contains(got, "*raw") {
			t.Errorf("%s: got\n%s", name, got)
		}
	}
	if got := onlyChanged(script, nil, has); got != script {
		t.Errorf("no sums: got\n%s", got)
	}
}

// Apply renders each family's script with the rules' hash it computed
// once (renderTablesRH, generationOf): the same text and generation as
// renderTables and generation compute themselves.
func TestRenderTablesRH(t *testing.T) {
	rs := goldenRuleset(t)
	names := SetNames(rs)
	c := contentsOf(rs, names)
	rh := rulesHash(rs, names)
	gen := generation(rs, names, c)
	if got := generationOf(rh, c); got != gen {
		t.Errorf("generationOf %s, generation %s", got, gen)
	}
	for _, f := range families {
		for _, ts := range [][]string{tables, {tableFilter}} {
			if got, want := renderTablesRH(rs, f.fam, nil, names, gen, rh, c, ts), renderTables(rs, f.fam, nil, names, gen, c, ts); got != want {
				t.Errorf("%s %v:\n%s\nwant\n%s", f.fam, ts, got, want)
			}
		}
	}
}
