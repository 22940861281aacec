package ipt

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// earlyList is one family's early list (jumpEarlyList): its ipset and
// the sets it must hold.
type earlyList struct {
	name    string
	members []string
}

// earlyLists are the early lists rs gates its raw jumps by, one per
// family whose MOAT-PREROUTING allows it (earlyMembers).
func earlyLists(rs *ruleset.Ruleset, names Names) []earlyList {
	var out []earlyList
	for _, f := range families {
		if m, ok := earlyMembers(rs, rs.Chain(ruleset.Prerouting), f.fam, names); ok {
			out = append(out, earlyList{name: names.of(earlyKey(f.fam)), members: m})
		}
	}
	return out
}

// earlyCreate is the create line of an early list.
func earlyCreate(name string) string {
	return fmt.Sprintf("create %s list:set size %d", name, earlySize)
}

// isEarlyList says whether an ipset name is that of an early list, or
// its temporary twin: they refer to other sets, which cannot be
// destroyed before them.
func isEarlyList(name string) bool {
	for _, k := range []string{earlyKey4, earlyKey6} {
		if name == IPSetName(k) || name == tmpSetName(IPSetName(k)) {
			return true
		}
	}
	return strings.HasPrefix(name, checkPrefix) && (strings.HasSuffix(name, "-"+earlyKey4) || strings.HasSuffix(name, "-"+earlyKey6))
}

// writeEarlyAdd writes the ipset restore lines (for `ipset -exist
// restore`) that make each early list exist and hold at least its
// members, keeping those it holds: written before the rules that drop by
// a new member are loaded, so that a moat killed at any point leaves
// each list holding every set the loaded rules drop by (a set missing
// from it would silently drop nothing). A list in existing is not
// created again: one of another header (a list:set made by hand) would
// refuse it; writeEarlyExact swaps in one of moat's.
func writeEarlyAdd(b *strings.Builder, lists []earlyList, existing map[string]bool) {
	for _, l := range lists {
		if !existing[l.name] {
			fmt.Fprintf(b, "%s\n", earlyCreate(l.name))
		}
		for _, m := range l.members {
			fmt.Fprintf(b, "add %s %s\n", l.name, m)
		}
	}
}

// writeEarlyExact writes the ipset restore lines that make each early
// list hold its members alone: filled under its temporary name and
// swapped in whole (no packet sees a list without a member it needs),
// then the old one, with the members no rule drops by any more,
// destroyed, so those sets can be. Written after the rules are loaded.
// It also puts back a member deleted by hand and drops one added by
// hand. made: writeEarlyAdd made the lists before (else each is made
// here if missing).
func writeEarlyExact(b *strings.Builder, lists []earlyList, existing map[string]bool, made bool) {
	for _, l := range lists {
		tmp := tmpSetName(l.name)
		if existing[tmp] {
			fmt.Fprintf(b, "destroy %s\n", tmp)
		}
		fmt.Fprintf(b, "%s\n", earlyCreate(tmp))
		for _, m := range l.members {
			fmt.Fprintf(b, "add %s %s\n", tmp, m)
		}
		if !made && !existing[l.name] {
			fmt.Fprintf(b, "%s\n", earlyCreate(l.name))
		}
		fmt.Fprintf(b, "swap %s %s\ndestroy %s\n", tmp, l.name, tmp)
	}
}

// earlyFirst orders ipset names for destruction: the early lists first
// (a set an early list holds cannot be destroyed before it), then by
// name.
func earlyFirst(names []string) []string {
	names = slices.Clone(names)
	slices.SortFunc(names, func(a, b string) int {
		ea, eb := isEarlyList(a), isEarlyList(b)
		switch {
		case ea && !eb:
			return -1
		case eb && !ea:
			return 1
		}
		return cmp.Compare(a, b)
	})
	return names
}

// earlyUsed marks the early lists of lists used (an Apply destroys the
// sets no rule uses).
func earlyUsed(used map[string]bool, lists []earlyList) {
	for _, l := range lists {
		used[l.name] = true
	}
}

// EarlyListMatch says whether an xt "set" match (revision rev, its info
// bytes as the kernel holds them) is the condition of moat's raw jump
// for family ("ip" or "ip6"): "-m set --match-set moat-early4 src" (or
// moat-early6), nothing more (xt_set.h: struct xt_set_info_match_v4 is
// the set's index, its dimension and flags, then counter tests, all
// zero here). The set is named by its index: the kernel is asked.
func EarlyListMatch(family string, rev uint32, info []byte) bool {
	const dimOne, srcFlag = 1, 1 << 1 // IPSET_DIM_ONE, IPSET_DIM_ONE_SRC
	if rev != 4 || len(info) < 4 || info[2] != dimOne || info[3] != srcFlag {
		return false
	}
	for _, c := range info[4:] {
		if c != 0 {
			return false
		}
	}
	want := map[string]string{"ip": IPSetName(earlyKey4), "ip6": IPSetName(earlyKey6)}[family]
	c, err := dialIpset()
	if err != nil {
		return false
	}
	defer func() { _ = c.Close() }() // read only
	name, err := c.setNameByIndex(context.Background(), binary.NativeEndian.Uint16(info))
	return err == nil && want != "" && name == want
}

// ipsetAttrName is a list:set member's set name in a member's data
// (IPSET_ATTR_NAME, after IPSET_ATTR_ETHER = IPSET_ATTR_CADT_MAX + 1).
const ipsetAttrName = 18

// earlyHeld reads over netlink which sets an early list holds, in its
// order; missing when there is no such set.
func earlyHeld(ctx context.Context, name string) (members []string, missing bool, err error) {
	missing, err = dumpSet(ctx, name, 0, func(attrs []byte) error {
		return walkAttrs(attrs, func(typ uint16, v []byte) {
			if typ != ipsetAttrADT {
				return
			}
			_ = walkAttrs(v, func(typ uint16, v []byte) {
				if typ != ipsetAttrData {
					return
				}
				found := false
				_ = walkAttrs(v, func(typ uint16, v []byte) {
					if typ == ipsetAttrName && !found {
						members, found = append(members, cString(v)), true
					}
				})
				if !found {
					members = append(members, "") // not a set name: never what moat wants
				}
			})
		})
	})
	return members, missing, err
}

// earlyNeeds says which steps the early lists need (writeEarlyAdd
// before the rules, writeEarlyExact after): those that hold them already
// (read over netlink) need neither; when the lists cannot be read, both.
func (b *Backend) earlyNeeds(ctx context.Context, lists []earlyList) (add, exact bool) {
	if len(lists) == 0 {
		return false, false
	}
	if !b.IpsetNetlink {
		return true, true
	}
	for _, l := range lists {
		held, missing, err := earlyHeld(ctx, l.name)
		if err != nil || missing {
			return true, true
		}
		if !slices.Equal(held, l.members) {
			exact = true
		}
		for _, m := range l.members {
			if !slices.Contains(held, m) {
				add = true
			}
		}
	}
	return add, exact
}

// earlyDigest is the hash of an early list as the fingerprint sees it:
// the sets it holds that moat's rules use (sr.earlyKeep), in the order
// of their names. A set the rules drop by missing from it (a blocklist
// switched off) changes it, and so does another set of moat's added; a
// member no rule uses changes no verdict and is left out, so that a moat
// killed between the early list's steps and the rules' restore (the list
// holds the old rules' sets and the new ones') leaves the fingerprint of
// the old or the new ruleset, as a kill anywhere else does.
func (sr *setReader) earlyDigest(ctx context.Context, name string) []byte {
	h := sha256.New()
	held, missing, err := sr.b.readEarly(ctx, name, sr.mh != nil)
	if missing || err != nil {
		fmt.Fprintf(h, "set %s missing\n", name)
		return h.Sum(nil)
	}
	held = slices.DeleteFunc(held, func(m string) bool { return !sr.earlyKeep[m] })
	slices.Sort(held)
	fmt.Fprintf(h, "early list %s holds %q\n", name, held)
	return h.Sum(nil)
}

// replaceForeignEarly destroys each early list of lists that is there
// but is no list:set (made by hand under its name): the create that
// makes it exist, and any add of a set name to it, are refused, and
// every apply failed. The jumps that refer to it (moat's, put back by
// hand) are made plain first, where they stood (every source then goes
// through MOAT-PREROUTING, whose drops each carry their own exemptions:
// the same verdicts), recorded in wrote; the list is then made anew by
// writeEarlyAdd and the gated jump put back by the rules' restore. A
// list:set of another header is swapped away by writeEarlyExact.
func (b *Backend) replaceForeignEarly(ctx context.Context, st *state, lists []earlyList, wrote map[policy.Family][]string) error {
	for _, l := range lists {
		if !st.sets[l.name] {
			continue
		}
		typ, _ := b.setKind(ctx, l.name)
		if typ == "" || typ == "list:set" {
			continue
		}
		gated := jumpEarlyList(l.name)
		for _, f := range families {
			have, there := st.jumps[f.fam][builtinChain[ruleset.Prerouting]]
			if !there || have.Cond != gated && !slices.Contains(have.Extra, gated) {
				continue
			}
			var s strings.Builder
			s.WriteString("*raw\n")
			writeJump(&s, builtinChain[ruleset.Prerouting], "", have, true)
			s.WriteString("COMMIT\n")
			if _, err := b.Run(ctx, []byte(s.String()), f.restore, "-w", "5", "--noflush"); err != nil {
				return fmt.Errorf("ipset %s is no early list (%s): %s jump: %w", l.name, typ, f.fam, err)
			}
			wrote[f.fam] = append(wrote[f.fam], s.String())
			jumps := maps.Clone(st.jumps[f.fam])
			jumps[builtinChain[ruleset.Prerouting]] = Jump{Pos: have.Pos}
			st.jumps[f.fam] = jumps
		}
		if _, err := b.runIpset(ctx, nil, "destroy", l.name); err != nil {
			return fmt.Errorf("ipset %s is no early list (%s) and cannot be destroyed (remove what uses it by hand): %w", l.name, typ, err)
		}
		delete(st.sets, l.name)
	}
	return nil
}

// snapshotEarlyLists are the early lists a snapshot's ipset lines
// make (their names: what replaceForeignEarly needs).
func snapshotEarlyLists(lines []string) []earlyList {
	var out []earlyList
	for _, l := range lines {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "create" && strings.HasPrefix(f[1], SetPrefix) && isEarlyList(f[1]) {
			out = append(out, earlyList{name: f[1]})
		}
	}
	return out
}

// readEarly reads which sets the early list name holds: over netlink
// when netlink (earlyHeld), else, or when that fails, from `ipset list`
// (a list that cannot be listed is missing).
func (b *Backend) readEarly(ctx context.Context, name string, netlink bool) (held []string, missing bool, err error) {
	if netlink {
		if held, missing, err = earlyHeld(ctx, name); err == nil {
			return held, missing, nil
		}
	}
	out, err := b.runIpset(ctx, nil, "list", name)
	if err != nil {
		return nil, true, nil
	}
	_, members, _ := strings.Cut(string(out), "Members:\n")
	return strings.Fields(members), false, nil
}
