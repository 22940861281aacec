package ipt

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
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
		// The drift check's read whole, then a change of the number of
		// members: the sets' headers come from that read, with their
		// new number of members, and equal a read.
		if _, err := b.Fingerprint(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Apply(ctx, compile(t, head+denyList(303, -1))); err != nil {
			t.Fatal(err)
		}
		if a := b.track.after; a == nil || len(a.heads) < 2 {
			t.Errorf("the Apply kept no header of the drift check's read: %+v", a)
		}
		if fp, err = b.Fingerprint(ctx); err != nil || fp != read() {
			t.Errorf("after a change of the number of members: %q (%v), read whole %q", fp, err, read())
		}
		// A member added by hand after the drift check's read and before
		// the change in place (e2e: TestIpsetHandChangeDuringRefresh):
		// the fingerprint of what was loaded does not vouch for it, the
		// next read finds it.
		if _, err := b.Fingerprint(ctx); err != nil {
			t.Fatal(err)
		}
		v4set := ""
		if out, err := execrun.Exec(ctx, nil, "ipset", "list", "-n"); err == nil {
			for _, n := range strings.Fields(string(out)) {
				if _, err := execrun.Exec(ctx, nil, "ipset", "test", n, "198.18.0.2"); err == nil {
					v4set = n
				}
			}
		}
		if v4set == "" {
			t.Fatal("no policy set holds 198.18.0.2")
		}
		if out, err := execrun.Exec(ctx, nil, "ipset", "add", v4set, "192.0.2.78"); err != nil {
			t.Fatalf("ipset add: %v %s", err, out)
		}
		if err := b.Apply(ctx, compile(t, head+denyList(303, 4))); err != nil {
			t.Fatal(err)
		}
		if fp, err = b.Fingerprint(ctx); err != nil || fp == read() {
			t.Errorf("a member added by hand between the drift check's read and the change: the loaded fingerprint vouches for it (%v)", err)
		}
		if out, err := execrun.Exec(ctx, nil, "ipset", "del", v4set, "192.0.2.78"); err != nil {
			t.Fatalf("ipset del: %v %s", err, out)
		}
		if fp != read() {
			t.Error("the member taken out again: the loaded fingerprint is not the kernel's")
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
	// The record as the lines now say it, as a read would give it.
	if st.gen[v4] != "g2" || st.rules[v4] != "r1" || st.held[v4]["moat-a"] != "ipx" {
		t.Errorf("predicted record: generation %q, rules %q, held %v", st.gen[v4], st.rules[v4], st.held[v4])
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

// The chains recorded in the state directory serve the next command
// (another Backend, as another process) while the nftables generation
// has not moved: its drift check and plan run no iptables-save. A rule
// added by hand moves the generation: they are read again and the rule
// is in the fingerprint. A record of another network namespace (or
// boot) is not read, even at the same generation.
func TestKernelChainCache(t *testing.T) {
	_, ns := kernelBackendNS(t)
	ctx := context.Background()
	dir := t.TempDir()
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here: no generation tracks moat's chains")
		}
		saves := 0
		newBackend := func() *Backend {
			return &Backend{Netlink: true, IpsetNetlink: true, StateDir: dir, KeyDir: dir, Elements: setstore.Dir{Path: dir, Prefix: "ipset."},
				Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
					if strings.HasSuffix(name, "tables-save") {
						saves++
					}
					return execrun.Exec(ctx, stdin, name, args...)
				}}
		}
		head := "default deny incoming\nallow 22/tcp\n"
		b := newBackend()
		if err := b.Apply(ctx, compile(t, head+denyList(50, -1))); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Fingerprint(ctx); err != nil {
			t.Fatal(err)
		}
		// The next command: check, set change, fingerprint.
		saves = 0
		b = newBackend()
		fp, err := b.Fingerprint(ctx)
		if err != nil || fp == "" {
			t.Fatal(fp, err)
		}
		if err := b.Apply(ctx, compile(t, head+denyList(51, 3))); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Fingerprint(ctx); err != nil {
			t.Fatal(err)
		}
		if saves != 0 {
			t.Errorf("a command after a recorded read ran iptables-save %d times", saves)
		}
		// The record made from the restores is what a read gives.
		gen, err := nftGeneration()
		if err != nil {
			t.Fatal(err)
		}
		cached := newBackend().loadChainCache(gen)
		read, err := (&Backend{Run: execrun.Exec}).readChains(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if cached == nil {
			t.Fatal("no record of the chains after a set change")
		}
		sameChains := func(what string, cached, read *state) {
			t.Helper()
			if !cached.noLines {
				t.Errorf("%s: the record of the chains has iptables-save's lines, want them left out (predicted)", what)
			}
			// The raw sections moat's restores wrote are known to the
			// record alone (a read cannot tell them).
			for _, f := range families {
				if cached.raw[f.fam] == "" {
					t.Errorf("%s: the record has no raw section for %s", what, f.fam)
				}
				// And what each chain holds, as moat's script wrote it.
				for name := range cached.has[f.fam] {
					if _, ok := cached.sums[f.fam][name]; !ok && name != GenChain {
						t.Errorf("%s: the record has no sum of %s %s", what, f.fam, name)
					}
				}
			}
			cached = cached.clone()
			cached.readGen, cached.readGenOK, cached.noLines, cached.lines, cached.raw = 0, false, false, read.lines, read.raw
			cached.sums = read.sums
			if !reflect.DeepEqual(cached, read) {
				t.Errorf("%s: the record differs from a read:\n%+v\n%+v", what, cached, read)
			}
		}
		sameChains("after a set change", cached, read)
		// A rule change: nothing read back (the chains are predicted
		// from the restores, the fingerprint read over netlink).
		b = newBackend()
		saves = 0
		if err := b.Apply(ctx, compile(t, head+"allow 80/tcp\n"+denyList(51, 3))); err != nil {
			t.Fatal(err)
		}
		fp, err = b.Fingerprint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if saves != 0 {
			t.Errorf("a rule change ran iptables-save %d times, want none", saves)
		}
		fresh := &Backend{Run: execrun.Exec, Netlink: true, IpsetNetlink: true, KeyDir: dir}
		if want, err := fresh.Fingerprint(ctx); err != nil || want != fp {
			t.Errorf("the fingerprint after a rule change %q, read anew %q (%v)", fp, want, err)
		}
		if gen, err = nftGeneration(); err != nil {
			t.Fatal(err)
		}
		if cached = newBackend().loadChainCache(gen); cached == nil {
			t.Fatal("no record of the chains after a rule change")
		}
		if read, err = (&Backend{Run: execrun.Exec}).readChains(ctx); err != nil {
			t.Fatal(err)
		}
		sameChains("after a rule change", cached, read)
		saves = 0
		if _, err := newBackend().read(ctx); err != nil || saves != 0 {
			t.Errorf("the next command's plan: %v, %d saves, want none", err, saves)
		}
		before := fp
		if out, err := execrun.Exec(ctx, nil, "iptables", "-A", "MOAT-INPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN"); err != nil {
			t.Fatalf("iptables: %v %s", err, out)
		}
		saves = 0
		b = newBackend()
		fp, err = b.Fingerprint(ctx)
		if want, _ := fresh.Fingerprint(ctx); err != nil || fp == before || fp != want || saves != 0 {
			t.Errorf("after a rule added by hand: fingerprint %q (%v, %d saves), before %q, read whole %q", fp, err, saves, before, want)
		}
		// The plan reads the chains anew (the generation moved).
		if _, err := b.read(ctx); err != nil || saves != 2 {
			t.Errorf("the plan after a rule added by hand: %v, %d saves, want 2", err, saves)
		}
		// The record, made for another namespace at this very generation.
		data, err := os.ReadFile(filepath.Join(dir, chainCacheFile))
		if err != nil {
			t.Fatal(err)
		}
		var c chainCache
		if err := json.Unmarshal(data, &c); err != nil {
			t.Fatal(err)
		}
		for name, edit := range map[string]func(*chainCache){
			"namespace": func(c *chainCache) { c.NetNS++ },
			"boot":      func(c *chainCache) { c.Boot = "another boot" },
		} {
			other := c
			edit(&other)
			other.Lines = map[policy.Family][]string{}
			data, _ := json.Marshal(other)
			if err := os.WriteFile(filepath.Join(dir, chainCacheFile), data, 0o600); err != nil {
				t.Fatal(err)
			}
			saves = 0
			b = newBackend()
			if _, err := b.read(ctx); err != nil || saves != 2 {
				t.Errorf("a record of another %s: %v, %d saves, want the chains read (2)", name, err, saves)
			}
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// predictState follows moat's jumps through the restores that change
// their form: an earlier moat's plain jump replaced where it stood, a
// second plain jump deleted, a new jump inserted first; a line it cannot
// follow (a deletion of a jump it does not know of) gives no prediction.
func TestPredictStateJumps(t *testing.T) {
	orig := &state{jumps: map[policy.Family]map[string]Jump{policy.FamilyV4: {
		"INPUT":      {Cond: "", Pos: 2, Extra: []string{""}},
		"PREROUTING": {Cond: "", Pos: 1},
	}}, has: map[policy.Family]map[string]bool{policy.FamilyV4: {"MOAT-INPUT": true}},
		gen: map[policy.Family]string{}, rules: map[policy.Family]string{}, held: map[policy.Family]contents{}, lines: map[policy.Family][]string{}}
	script := "*raw\n:MOAT-PREROUTING - [0:0]\n-D PREROUTING -j MOAT-PREROUTING\n-I PREROUTING 1 ! -i lo -j MOAT-PREROUTING\nCOMMIT\n" +
		"*filter\n:MOAT-INPUT - [0:0]\n:MOAT-OUTPUT - [0:0]\n" +
		"-D INPUT -j MOAT-INPUT\n-D INPUT -j MOAT-INPUT\n-I INPUT 2 -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n" +
		"-I OUTPUT 1 -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-OUTPUT\nCOMMIT\n"
	st := predictState(orig, map[policy.Family][]string{policy.FamilyV4: {script}})
	if st == nil {
		t.Fatal("no prediction")
	}
	want := map[string]Jump{
		"INPUT":      {Cond: jumpNotEstablished, Pos: 2},
		"OUTPUT":     {Cond: jumpNotEstablished, Pos: 1},
		"PREROUTING": {Cond: jumpNotLoopback, Pos: 1},
	}
	if !reflect.DeepEqual(st.jumps[policy.FamilyV4], want) {
		t.Errorf("predicted %+v, want %+v", st.jumps[policy.FamilyV4], want)
	}
	if len(orig.jumps[policy.FamilyV4]["INPUT"].Extra) != 1 {
		t.Error("the prediction changed the state it started from")
	}
	bad := "*filter\n-D INPUT ! -i lo -j MOAT-INPUT\nCOMMIT\n"
	if predictState(orig, map[policy.Family][]string{policy.FamilyV4: {bad}}) != nil {
		t.Error("a deletion of a jump that is not there was predicted")
	}
}
