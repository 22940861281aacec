package ipt

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
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
	// sums are the sums of their networks' hashes (sumOf), where the
	// Apply knew them: the others are hashed from networks.
	sums map[string]memberSum
	// heads are the header lines of the sets the Apply changed in place
	// or left as they were, as the drift check read them before it
	// (withElements gives them their new number of members): those sets'
	// headers are not read again. Only moat's own changes made since,
	// which change nothing in a header but that number; the others' are
	// read.
	heads map[string][]string
	// fresh: the Apply found none of moat's chains in either family
	// (so no rule jumping to one either: iptables refuses a jump to a
	// chain that does not exist) and its restores wrote them whole
	// (LastApplyFresh).
	fresh bool
}

// noChains says whether st holds none of moat's chains and no jump to
// one, in either family.
func noChains(st *state) bool {
	for _, f := range families {
		if len(st.has[f.fam]) > 0 || len(st.jumps[f.fam]) > 0 {
			return false
		}
	}
	return true
}

// LastApplyFresh says whether the last Apply wrote moat's chains into a
// kernel that had none of them (a first enable, an enable after
// 'moat disable' or a reboot), every policy set loaded whole, and the
// nftables ruleset generation has moved since by its own restores only
// (before+commits of LastApply, checked here and by the caller again).
// Then moat's chains and sets are what its restores wrote, whatever else
// the kernel held: nothing of moat's was left to survive them, and no
// other program committed in between, so the fingerprint taken from
// what was loaded (FingerprintKernel) stands for the whole of them
// without the full comparison with the applied policy. ipset changes
// move no generation: a member added by hand meanwhile is found by the
// next command, which reads the policy sets' members to check the record.
func (b *Backend) LastApplyFresh() bool {
	a := b.track.after
	if a == nil || !a.fresh || !b.InNftables() {
		return false
	}
	g, err := nftGeneration()
	return err == nil && g == a.gen
}

// afterApply records what the Apply that read orig left: genOnly has,
// for each family whose MOAT-GEN alone was restored, the last such
// script; whole says some restore rewrote the chains.
//
// With the fingerprint taken over netlink (nlPrint), which needs no
// iptables-save text, the chains are predicted from every script the
// Apply restored (wrote), whole rewrites included: the next command then
// plans from them without iptables-save.
func (b *Backend) afterApply(orig *state, genOnly map[policy.Family]string, wrote map[policy.Family][]string, whole bool, c contents, networks func(string) []netip.Prefix, sums map[string]memberSum) *afterApply {
	t := b.track
	if !t.known || !b.InNftables() {
		return nil
	}
	a := &afterApply{gen: t.before + t.commits, sets: map[string]bool{}, networks: networks, sums: sums}
	for n := range c {
		a.sets[n] = true
	}
	// The chains were read at the generation the Apply started at: what
	// they hold now is that and the Apply's own restores.
	switch {
	case !orig.readGenOK || orig.readGen != t.before:
	case b.nlPrint():
		a.st = predictState(orig, wrote)
	case !whole:
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

// predictState is orig with every script of wrote restored into its
// family (iptables-restore --noflush), as the chains' state moat plans
// from: which moat chains exist, which built-in chains jump to them, and
// MOAT-GEN's record. A declared chain is emptied, then gets the script's
// rules; the others keep theirs. Its lines (iptables-save's text) are not
// known (noLines): only the netlink fingerprint may use it. nil when a
// script holds a line moat's Apply does not write.
func predictState(orig *state, wrote map[policy.Family][]string) *state {
	st := orig.clone()
	for fam, scripts := range wrote {
		has, jumps := st.has[fam], st.jumps[fam]
		if has == nil || jumps == nil {
			return nil
		}
		if st.held[fam] == nil {
			st.held[fam] = contents{}
		}
		if st.sums == nil {
			st.sums = map[policy.Family]map[string]string{}
		}
		sums := st.sums[fam]
		if sums == nil {
			sums = map[string]string{}
			st.sums[fam] = sums
		}
		for _, script := range scripts {
			// The rules each chain the script declares (so empties) gets
			// after it: the chain's sum once the script is in. A rule
			// appended to a chain not declared leaves its sum unknown.
			declared, appended, unknown := map[string]bool{}, map[string][]string{}, map[string]bool{}
			table := ""
			for _, l := range strings.Split(script, "\n") {
				switch {
				case l == "" || l == "COMMIT":
				case strings.HasPrefix(l, "*"):
					table = l[1:]
					if !slices.Contains(tables, table) {
						return nil
					}
				case table == "":
					return nil
				case strings.HasPrefix(l, ":MOAT-"):
					name, _, _ := strings.Cut(l[1:], " ")
					has[name] = true
					if name == GenChain {
						// Declared under --noflush: emptied.
						st.gen[fam], st.rules[fam], st.held[fam] = "", "", contents{}
					} else {
						declared[name], appended[name] = true, nil
					}
				case strings.HasPrefix(l, "-A "+GenChain+" "):
					g, r := st.gen[fam], st.rules[fam]
					readGenRule(l, &g, &r, st.held[fam])
					st.gen[fam], st.rules[fam] = g, r
				case strings.HasPrefix(l, "-A MOAT-"):
					name, _, _ := strings.Cut(l[3:], " ")
					if declared[name] {
						appended[name] = append(appended[name], l)
					} else {
						unknown[name] = true
					}
				case strings.HasPrefix(l, "-I "):
					// A jump inserted (render: "-I CHAIN N COND -j
					// MOAT-CHAIN", after the deletion of every jump
					// there: writeJump).
					f := strings.Fields(l)
					if len(f) < 5 {
						return nil
					}
					n, err := strconv.Atoi(f[2])
					builtin, cond, ok := parseJump("-A " + f[1] + " " + strings.Join(f[3:], " "))
					if err != nil || n < 1 || !ok || !KnownJump(cond) {
						return nil
					}
					j := Jump{Cond: cond, Pos: n}
					if old, there := jumps[builtin]; there {
						if n > old.Pos {
							return nil // which comes first is not known
						}
						j.Extra = append([]string{old.Cond}, old.Extra...)
					}
					jumps[builtin] = j
				case strings.HasPrefix(l, "-D "):
					// A jump deleted: the further ones, the last first,
					// then the first (writeJump). The kernel deletes the
					// first that matches: the same jumps are left.
					builtin, cond, ok := parseJump("-A " + strings.TrimPrefix(l, "-D "))
					if !ok {
						return nil
					}
					j, there := jumps[builtin]
					switch i := slices.Index(j.Extra, cond); {
					case !there:
						return nil
					case i >= 0:
						j.Extra = slices.Delete(slices.Clone(j.Extra), i, i+1)
						if len(j.Extra) == 0 {
							j.Extra = nil
						}
						jumps[builtin] = j
					case j.Cond == cond && len(j.Extra) == 0:
						delete(jumps, builtin)
					default:
						return nil
					}
				default:
					return nil
				}
			}
			for name := range unknown {
				delete(sums, name)
			}
			for name := range declared {
				sums[name] = chainSum(appended[name])
			}
		}
		st.lines[fam] = nil
	}
	st.noLines = true
	return st
}

// chainSum is a hash of the rule lines ("-A CHAIN ...", as render wrote
// them) of one of moat's chains, in order.
func chainSum(lines []string) string {
	h := sha256.New()
	for _, l := range lines {
		h.Write([]byte(l))
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))
}
