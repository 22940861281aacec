package ipt

import (
	"slices"

	"context"
	"github.com/moat-fw/moat/internal/policy"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/setstore"
)

// After an Apply, the fingerprint comes from what the Apply loaded (no
// iptables-save for a change of sets alone, no members read back) and
// equals the fingerprint read from the kernel whole, for a set change
// and for a rule change; the chains' read for the drift check serves the
// plan (no second iptables-save). A member swapped by hand (count kept)
// or a rule added by hand makes the two differ: the loaded record then
// never vouches for the hand change, and the next read finds it.
func TestKernelFingerprintFromLoaded(t *testing.T) {
	_, ns := kernelBackendNS(t)
	ctx := context.Background()
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here: no generation tracks moat's chains")
		}
		saves := 0
		b := &Backend{Netlink: true, IpsetNetlink: true, Elements: setstore.Dir{Path: t.TempDir(), Prefix: "ipt-set."},
			Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
				if strings.HasSuffix(name, "tables-save") {
					saves++
				}
				return execrun.Exec(ctx, stdin, name, args...)
			}}
		read := func() string {
			t.Helper()
			fresh := &Backend{Run: execrun.Exec, Netlink: true, IpsetNetlink: true}
			fp, err := fresh.Fingerprint(ctx)
			if err != nil || fp == "" {
				t.Fatalf("fingerprint read whole: %q %v", fp, err)
			}
			return fp
		}
		head := "default deny incoming\nallow 22/tcp\n"
		if err := b.Apply(ctx, compile(t, head+denyList(300, -1))); err != nil {
			t.Fatal(err)
		}
		fp, err := b.Fingerprint(ctx)
		if err != nil || fp != read() {
			t.Fatalf("after the first apply: %q (%v), read whole %q", fp, err, read())
		}
		// The drift check's read, then a change of one address: the
		// plan reads no chains, nor does the fingerprint.
		if _, err := b.Fingerprint(ctx); err != nil {
			t.Fatal(err)
		}
		saves = 0
		if err := b.Apply(ctx, compile(t, head+denyList(301, 7))); err != nil {
			t.Fatal(err)
		}
		fp, err = b.Fingerprint(ctx)
		if err != nil || fp != read() {
			t.Errorf("after a set change: %q (%v), read whole %q", fp, err, read())
		}
		if saves != 0 {
			t.Errorf("a set change after the drift check's read ran iptables-save %d times", saves)
		}
		// A rule change: the chains are read back, the sets are not.
		if err := b.Apply(ctx, compile(t, head+"allow 80/tcp\n"+denyList(301, 7))); err != nil {
			t.Fatal(err)
		}
		if fp, err = b.Fingerprint(ctx); err != nil || fp != read() {
			t.Errorf("after a rule change: %q (%v), read whole %q", fp, err, read())
		}
		// A member swapped by hand during the command (after the load).
		if err := b.Apply(ctx, compile(t, head+"allow 80/tcp\n"+denyList(302, 9))); err != nil {
			t.Fatal(err)
		}
		out, err := execrun.Exec(ctx, nil, "ipset", "list", "-n")
		if err != nil {
			t.Fatal(err)
		}
		var v4 string
		for _, n := range strings.Fields(string(out)) {
			if _, err := execrun.Exec(ctx, nil, "ipset", "test", n, "198.18.0.0"); err == nil {
				v4 = n
			}
		}
		if v4 == "" {
			t.Fatal("no policy set holds 198.18.0.0")
		}
		for _, args := range [][]string{{"add", v4, "192.0.2.77"}, {"del", v4, "198.18.0.0"}} {
			if out, err := execrun.Exec(ctx, nil, "ipset", args...); err != nil {
				t.Fatalf("ipset %v: %v %s", args, err, out)
			}
		}
		fp, err = b.Fingerprint(ctx)
		if err != nil || fp == read() {
			t.Errorf("a member swapped by hand after the load: the loaded fingerprint equals the kernel's (%v)", err)
		}
		// A rule added by hand after the apply moves the generation: the
		// chains are read, the rule is in the fingerprint.
		if err := b.Apply(ctx, compile(t, head+"allow 80/tcp\n"+denyList(302, 11))); err != nil {
			t.Fatal(err)
		}
		before := read()
		if out, err := execrun.Exec(ctx, nil, "iptables", "-A", "MOAT-GEN", "-j", "RETURN"); err != nil {
			t.Fatalf("iptables: %v %s", err, out)
		}
		if fp, err = b.Fingerprint(ctx); err != nil || fp == before || fp != read() {
			t.Errorf("a rule added by hand after the apply: fingerprint %q (%v), before %q, read whole %q", fp, err, before, read())
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// predictChains replaces MOAT-GEN's rules only where they are exactly
// what moat writes for the record they hold: a rule added to MOAT-GEN,
// or MOAT-GEN's rules not in one run, make it give up (the chains are
// then read back).
func TestPredictChainsRefusesOtherGenRules(t *testing.T) {
	v4 := families[0].fam
	c := contents{"moat-a": "ipx"}
	gen := genRuleLines(genChainRules("g1", "r1", c))
	base := func(lines []string) *state {
		return &state{lines: map[policy.Family][]string{v4: lines}, gen: map[policy.Family]string{v4: "g1"},
			rules: map[policy.Family]string{v4: "r1"}, held: map[policy.Family]contents{v4: c}}
	}
	script := "*filter\n" + genChainRules("g2", "r1", c) + "COMMIT\n"
	ok := slices.Concat([]string{":MOAT-GEN", ":MOAT-INPUT"}, gen, []string{"-A MOAT-INPUT -j DROP"})
	st := predictChains(base(ok), map[policy.Family]string{v4: script})
	want := slices.Concat([]string{":MOAT-GEN", ":MOAT-INPUT"}, genRuleLines(script), []string{"-A MOAT-INPUT -j DROP"})
	if st == nil || !slices.Equal(st.lines[v4], want) {
		t.Fatalf("predicted %v, want %v", st, want)
	}
	for name, lines := range map[string][]string{
		"rule added":  slices.Concat([]string{":MOAT-GEN"}, gen, []string{"-A MOAT-GEN -j ACCEPT"}),
		"not one run": slices.Concat([]string{":MOAT-GEN"}, gen[:1], []string{"-A MOAT-INPUT -j DROP"}, gen[1:]),
		"no chain":    slices.Clone(gen),
		"other gen":   slices.Concat([]string{":MOAT-GEN"}, genRuleLines(genChainRules("g0", "r1", c))),
	} {
		if st := predictChains(base(lines), map[policy.Family]string{v4: script}); st != nil {
			t.Errorf("%s: predicted %v", name, st.lines[v4])
		}
	}
}
