package ipt

import (
	"encoding/json"

	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/statedir"
)

// chainCacheFile keeps, in the state directory, moat's chains as last
// read (or as its own restores made them, checked by the generations),
// with the nftables ruleset generation they were at. Every command read
// them with iptables-save and ip6tables-save to plan; while the
// generation has not moved, nothing changed any chain (iptables-nft:
// every change is an nf_tables transaction) and the record stands for
// them. The generation counts from boot in each network namespace: the
// record names the boot and the namespace (its cookie, never reused
// while the machine runs), and any other is not read.
const chainCacheFile = "ipt-chains.json"

// StateFiles are the files the backend writes in the state directory
// (through a temporary file beside each).
func StateFiles() []string { return []string{chainCacheFile, digestKeyFile} }

type chainCache struct {
	Boot  string                            `json:"boot_id"`
	NetNS uint64                            `json:"netns_cookie"`
	Gen   uint32                            `json:"nft_generation"`
	Jumps map[policy.Family]map[string]Jump `json:"jumps"` // a record of jumps without their forms (true) is not read
	Has   map[policy.Family]map[string]bool `json:"chains"`
	Gens  map[policy.Family]string          `json:"generations"`
	Lines map[policy.Family][]string        `json:"lines"`
	Held  map[policy.Family]contents        `json:"held"`
	Rules map[policy.Family]string          `json:"rules"`
	// NoLines: Lines are not known (predicted by predictState).
	NoLines bool `json:"no_lines,omitempty"`
	// Raw: the state's raw (the rawSum of the raw section moat's own
	// restore wrote), per family; absent: unknown.
	Raw map[policy.Family]string `json:"raw,omitempty"`
	// Sums: the state's sums (each chain's chainSum as moat's script
	// wrote it), per family; absent: unknown.
	Sums map[policy.Family]map[string]string `json:"sums,omitempty"`
}

// hostIdentity is the boot and the network namespace this process runs
// in; ok is false when either cannot be told (then nothing is cached).
func hostIdentity() (boot string, netns uint64, ok bool) { return nft.GenerationScope() }

// loadChainCache is the cached chains when they are at generation gen
// in this boot and namespace, else nil.
func (b *Backend) loadChainCache(gen uint32) *state {
	if b.StateDir == "" {
		return nil
	}
	data, err := statedir.ReadFile(b.StateDir, chainCacheFile)
	if err != nil {
		return nil
	}
	var c chainCache
	if json.Unmarshal(data, &c) != nil || c.Gen != gen || c.NoLines && !b.nlPrint() {
		return nil
	}
	boot, netns, ok := hostIdentity()
	if !ok || c.Boot != boot || c.NetNS != netns {
		return nil
	}
	st := &state{jumps: map[policy.Family]map[string]Jump{}, has: map[policy.Family]map[string]bool{},
		gen: map[policy.Family]string{}, sets: map[string]bool{}, lines: map[policy.Family][]string{},
		held: map[policy.Family]contents{}, rules: map[policy.Family]string{}, readGen: gen, readGenOK: true,
		noLines: c.NoLines, raw: c.Raw, sums: map[policy.Family]map[string]string{}}
	for _, f := range families {
		st.jumps[f.fam] = orEmpty(c.Jumps[f.fam])
		st.has[f.fam] = orEmpty(c.Has[f.fam])
		st.gen[f.fam], st.lines[f.fam], st.rules[f.fam] = c.Gens[f.fam], c.Lines[f.fam], c.Rules[f.fam]
		st.held[f.fam] = contents(orEmpty(c.Held[f.fam]))
		if c.Sums[f.fam] != nil {
			st.sums[f.fam] = c.Sums[f.fam]
		}
	}
	return st
}

func orEmpty[V any](m map[string]V) map[string]V {
	if m == nil {
		return map[string]V{}
	}
	return m
}

// saveChainCache records st, read (or made by moat's own restores) at
// generation st.readGen; a record that cannot be written is removed.
func (b *Backend) saveChainCache(st *state) {
	if b.StateDir == "" || !st.readGenOK {
		return
	}
	boot, netns, ok := hostIdentity()
	if !ok {
		_ = statedir.Remove(b.StateDir, chainCacheFile)
		return
	}
	c := chainCache{Boot: boot, NetNS: netns, Gen: st.readGen, Jumps: st.jumps, Has: st.has, Gens: st.gen,
		Lines: st.lines, Held: st.held, Rules: st.rules, NoLines: st.noLines, Raw: st.raw, Sums: st.sums}
	data, err := json.Marshal(c)
	if err == nil {
		err = statedir.WriteCache(b.StateDir, chainCacheFile, data)
	}
	if err != nil {
		_ = statedir.Remove(b.StateDir, chainCacheFile)
	}
}
