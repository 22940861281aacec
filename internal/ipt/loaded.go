package ipt

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/moat-fw/moat/internal/policy"
)

// afterApply is what moat's chains and sets are after an Apply, as its
// own restores made them: the fingerprint afterwards is taken from it
// instead of reading them back (iptables-save twice and every policy
// set's members: with 100,000 networks a dump of 1.8 MB).
//
// It stands only at generation gen, the generation the Apply started
// at plus its own commits: a rule changed by anyone else since moved the
// generation once more. ipset changes move no generation: a member
// added by hand during the command is not in the record, and the next
// command, which reads the policy sets' members whole to check the
// record (their changes move no generation), finds it.
type afterApply struct {
	gen uint32
	// st is moat's chains as read for the Apply, with MOAT-GEN as the
	// Apply's restores of it alone made it; nil when a restore rewrote
	// the chains (they are then read back).
	st *state
	// sets are the policy sets (the protected ones included), whose
	// members are networks(name).
	sets     map[string]bool
	networks func(string) []netip.Prefix
}

// afterApply records what the Apply that read orig left: genOnly has,
// for each family whose MOAT-GEN alone was restored, the last such
// script; whole says some restore rewrote the chains.
func (b *Backend) afterApply(orig *state, genOnly map[policy.Family]string, whole bool, c contents, networks func(string) []netip.Prefix) *afterApply {
	t := b.track
	if !t.known || !b.InNftables() {
		return nil
	}
	a := &afterApply{gen: t.before + t.commits, sets: map[string]bool{}, networks: networks}
	for n := range c {
		a.sets[n] = true
	}
	// The chains were read at the generation the Apply started at: what
	// they hold now is that and the Apply's own restores.
	if !whole && orig.readGenOK && orig.readGen == t.before {
		a.st = predictChains(orig, genOnly)
	}
	return a
}

// predictChains is orig with each family's MOAT-GEN rules replaced by
// those of its script (a restore of MOAT-GEN alone), as iptables-save
// prints them: moat writes them in that form, which is checked on the
// rules orig read (they must be what moat would have written for the
// record they hold). nil when they are not.
func predictChains(orig *state, genOnly map[policy.Family]string) *state {
	st := orig.clone()
	for fam, script := range genOnly {
		lines := st.lines[fam]
		first, last := -1, -1
		for i, l := range lines {
			if strings.HasPrefix(l, "-A "+GenChain+" ") {
				if first < 0 {
					first = i
				} else if last != i-1 {
					return nil // not one run
				}
				last = i
			}
		}
		if first < 0 || !slices.Contains(lines[:first], ":"+GenChain) {
			return nil
		}
		wrote := genRuleLines(genChainRules(orig.gen[fam], orig.rules[fam], orig.held[fam]))
		if !slices.Equal(lines[first:last+1], wrote) {
			return nil
		}
		st.lines[fam] = slices.Concat(lines[:first], genRuleLines(script), lines[last+1:])
		// And the record MOAT-GEN now holds, read from those lines as
		// from iptables-save (the state serves the next read too).
		sv := parseSave([]byte(strings.Join(st.lines[fam], "\n")))
		st.gen[fam], st.held[fam], st.rules[fam] = sv.gen, sv.held, sv.rules
	}
	return st
}

// genRuleLines are the MOAT-GEN rules of a script.
func genRuleLines(script string) []string {
	var out []string
	for _, l := range strings.Split(script, "\n") {
		if strings.HasPrefix(l, "-A "+GenChain+" ") {
			out = append(out, l)
		}
	}
	return out
}

// takeAfter is the record of the last Apply when the generation says it
// still stands, once (nil: read the kernel).
func (b *Backend) takeAfter() *afterApply {
	a := b.track.after
	b.track.after = nil
	if a == nil || !b.InNftables() {
		return nil
	}
	if g, err := nftGeneration(); err != nil || g != a.gen {
		return nil
	}
	return a
}
