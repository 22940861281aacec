package ipt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// cachedState is a state as a command leaves it in chainCacheFile: the
// head policy written whole (predictState from render's scripts), with
// every chain's sum, at generation gen.
func cachedState(t testing.TB, gen uint32) (*state, map[policy.Family]string, *ruleset.Ruleset) {
	t.Helper()
	rs := compile(t, "default deny incoming\nallow 22/tcp\ndeny out 25/tcp\ndeny from 198.51.100.0/24\ndeny from 2001:db8:5::/48\n")
	names := SetNames(rs)
	c := contentsOf(rs, names)
	g := generation(rs, names, c)
	st := &state{jumps: map[policy.Family]map[string]Jump{}, has: map[policy.Family]map[string]bool{},
		gen: map[policy.Family]string{}, held: map[policy.Family]contents{}, rules: map[policy.Family]string{},
		sets: map[string]bool{}, lines: map[policy.Family][]string{}}
	wrote, scripts := map[policy.Family][]string{}, map[policy.Family]string{}
	for _, f := range families {
		st.jumps[f.fam], st.has[f.fam] = map[string]Jump{}, map[string]bool{}
		scripts[f.fam] = renderTables(rs, f.fam, nil, names, g, c, tables)
		wrote[f.fam] = []string{scripts[f.fam]}
	}
	next := predictState(st, wrote)
	if next == nil {
		t.Fatal("no prediction")
	}
	// The record is read without the netlink fingerprint here (no
	// kernel): as lines known.
	next.noLines, next.readGen, next.readGenOK = false, gen, true
	return next, scripts, rs
}

// dropped are the chains render's script declares that onlyChanged left
// out of it.
func dropped(script, short string) []string {
	var out []string
	for _, l := range strings.Split(script, "\n") {
		if strings.HasPrefix(l, ":MOAT-") && !strings.Contains(short, l+"\n") {
			out = append(out, l)
		}
	}
	return out
}

// ipt-chains.json stale, corrupted, truncated or hostile: a record of
// another generation, boot or network namespace, or one that does not
// decode, is not read (the chains are read anew: no sums, every chain
// written); a record read whose sums do not match what render writes
// into a chain (a sum given to another chain, to the other family, of
// another content) never makes onlyChanged leave that chain out; and
// nothing panics. It fails when loadChainCache takes a record of another
// generation, or when onlyChanged trusts a sum not computed from the
// chain's own lines.
func TestChainCacheHostile(t *testing.T) {
	dir := t.TempDir()
	b := &Backend{StateDir: dir}
	const gen = 4242
	st, scripts, _ := cachedState(t, gen)
	b.saveChainCache(st)
	good, err := os.ReadFile(filepath.Join(dir, chainCacheFile))
	if err != nil {
		t.Skip("no record written here (boot or namespace not told):", err)
	}
	load := func(data []byte) *state {
		if err := os.WriteFile(filepath.Join(dir, chainCacheFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		return b.loadChainCache(gen)
	}
	// The record as written is read, and it leaves out every chain but
	// MOAT-GEN: the sums are there and stand for render's lines.
	got := load(good)
	if got == nil {
		t.Fatal("the record written is not read")
	}
	for _, f := range families {
		if d := dropped(scripts[f.fam], onlyChanged(scripts[f.fam], got.sums[f.fam], got.has[f.fam])); len(d) != 4 {
			t.Fatalf("%s: the record as written leaves out %q, want every chain but MOAT-GEN", f.fam, d)
		}
	}
	var c map[string]json.RawMessage
	if err := json.Unmarshal(good, &c); err != nil {
		t.Fatal(err)
	}
	with := func(key, value string) []byte {
		m := map[string]json.RawMessage{}
		for k, v := range c {
			m[k] = v
		}
		m[key] = json.RawMessage(value)
		data, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	for name, data := range map[string][]byte{
		"generation before":   with("nft_generation", fmt.Sprint(gen-1)),
		"generation after":    with("nft_generation", fmt.Sprint(gen+1)),
		"generation huge":     with("nft_generation", "1e300"),
		"generation wraps":    with("nft_generation", fmt.Sprint(uint64(gen)+1<<32)),
		"generation negative": with("nft_generation", fmt.Sprint(-gen)),
		"generation text":     with("nft_generation", `"4242"`),
		"boot":                with("boot_id", `"00000000-0000-0000-0000-000000000000"`),
		"boot missing":        with("boot_id", `null`),
		"namespace":           with("netns_cookie", "1"),
		"namespace huge":      with("netns_cookie", "184467440737095516160"),
		"sums not a map":      with("sums", `["MOAT-INPUT"]`),
		"sum not text":        with("sums", `{"ipv4":{"MOAT-INPUT":1}}`),
		"not json":            []byte("\x00\xff{"),
		"empty":               {},
	} {
		if st := load(data); st != nil {
			t.Errorf("%s: read", name)
		}
	}
	for n := 0; n < len(good); n++ {
		if st := load(good[:n]); st != nil {
			t.Fatalf("truncated to %d bytes: read", n)
		}
	}
	// Read (its generation, boot and namespace are this one's), with
	// sums that are not the chains' own: every chain is written.
	var sums map[policy.Family]map[string]string
	if err := json.Unmarshal(c["sums"], &sums); err != nil {
		t.Fatal(err)
	}
	v4, v6 := sums[policy.FamilyV4], sums[policy.FamilyV6]
	swapped := map[string]string{}
	names := []string{"MOAT-PREROUTING", "MOAT-INPUT", "MOAT-OUTPUT", "MOAT-FORWARD"}
	for i, n := range names {
		swapped[n] = v4[names[(i+1)%len(names)]]
	}
	for name, s := range map[string]map[policy.Family]map[string]string{
		"another chain's": {policy.FamilyV4: swapped, policy.FamilyV6: swapped},
		"other family's":  {policy.FamilyV4: v6, policy.FamilyV6: v4},
		"empty chain's":   {policy.FamilyV4: {"MOAT-INPUT": chainSum(nil), "MOAT-OUTPUT": chainSum(nil), "MOAT-FORWARD": chainSum(nil), "MOAT-PREROUTING": chainSum(nil)}},
		"upper case":      {policy.FamilyV4: upper(v4), policy.FamilyV6: upper(v6)},
		"not hex":         {policy.FamilyV4: {"MOAT-INPUT": "x"}},
		"null":            {policy.FamilyV4: nil, policy.FamilyV6: nil},
	} {
		data, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		st := load(with("sums", string(data)))
		if st == nil {
			t.Fatalf("%s: not read", name)
		}
		for _, f := range families {
			short := onlyChanged(scripts[f.fam], st.sums[f.fam], st.has[f.fam])
			d := dropped(scripts[f.fam], short)
			// A chain left out must have its own lines' sum (MOAT-FORWARD's
			// rules may read alike in IPv4 and IPv6: the other family's
			// sum is its own then).
			var wrong []string
			for _, l := range d {
				n := strings.TrimPrefix(strings.Fields(l)[0], ":")
				if chainSum(chainLines(scripts[f.fam], n)) != st.sums[f.fam][n] {
					wrong = append(wrong, n)
				}
			}
			if len(wrong) > 0 {
				t.Errorf("%s %s: left out %q, whose sum is not its own", name, f.fam, wrong)
			}
		}
	}
}

func upper(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = strings.ToUpper(v)
	}
	return out
}

// chainLines are a script's rules of chain name.
func chainLines(script, name string) []string {
	var out []string
	for _, l := range strings.Split(script, "\n") {
		if strings.HasPrefix(l, "-A "+name+" ") {
			out = append(out, l)
		}
	}
	return out
}

// Any record: loadChainCache and onlyChanged do not panic, and a chain
// onlyChanged leaves out is there (has) with a sum that is its own
// lines' chainSum.
func FuzzChainCache(f *testing.F) {
	st, scripts, rs := cachedState(f, 7)
	dir := f.TempDir()
	b := &Backend{StateDir: dir}
	b.saveChainCache(st)
	good, err := os.ReadFile(filepath.Join(dir, chainCacheFile))
	if err != nil {
		f.Skip("no record written here:", err)
	}
	f.Add(good)
	f.Add(bytes.Replace(good, []byte(`"sums":{`), []byte(`"sums":{"ipv4":null,`), 1))
	f.Add([]byte(`{"sums":{"ipv4":{"MOAT-INPUT":""}},"chains":{"ipv4":{"MOAT-INPUT":true}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		b := &Backend{StateDir: dir}
		if err := os.WriteFile(filepath.Join(dir, chainCacheFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		var c chainCache
		if json.Unmarshal(data, &c) != nil {
			return
		}
		st := b.loadChainCache(c.Gen)
		if st == nil {
			return
		}
		for _, fam := range families {
			short := onlyChanged(scripts[fam.fam], st.sums[fam.fam], st.has[fam.fam])
			for _, l := range dropped(scripts[fam.fam], short) {
				n := strings.TrimPrefix(strings.Fields(l)[0], ":")
				if !st.has[fam.fam][n] || st.sums[fam.fam][n] != chainSum(chainLines(scripts[fam.fam], n)) || n == GenChain {
					t.Fatalf("%s: %s left out", fam.fam, n)
				}
			}
			_ = predictState(st, map[policy.Family][]string{fam.fam: {short}})
			_ = restoredForm(st, fam.fam, rs)
		}
	})
}

// restoredForm counts the chains moat renders: one of them without a
// sum (iptables-restore wrote it) has the family rewritten; a MOAT-*
// chain made by hand, which no script of moat's gives a sum, does not
// (before, it had every apply, 'moat reload' with nothing changed
// included, rewrite the family's MOAT-GEN for ever).
func TestRestoredFormRenderedChains(t *testing.T) {
	st, _, rs := cachedState(t, 7)
	for _, f := range families {
		if restoredForm(st, f.fam, rs) {
			t.Fatalf("%s: every chain written by moat's script, in restored form", f.fam)
		}
	}
	st.has[policy.FamilyV4]["MOAT-EXTRA"] = true
	if restoredForm(st, policy.FamilyV4, rs) {
		t.Errorf("a MOAT-* chain made by hand: in restored form")
	}
	forgetRestored(st, policy.FamilyV6, []string{"*filter\n:MOAT-OUTPUT - [0:0]\nCOMMIT\n"})
	if !restoredForm(st, policy.FamilyV6, rs) || restoredForm(st, policy.FamilyV4, rs) {
		t.Errorf("MOAT-OUTPUT restored in IPv6: %v %v", restoredForm(st, policy.FamilyV6, rs), restoredForm(st, policy.FamilyV4, rs))
	}
}
