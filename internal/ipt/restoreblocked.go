package ipt

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/policy"
)

// A rollback must put moat's chains back even while a table holds a rule
// iptables cannot print (an nftables expression added with nft: 'nft add
// rule ip filter INPUT ct state new fib daddr type local accept').
// iptables-save then prints that table as one comment line (CheckSave),
// so the read a restore starts from fails, and so did every fallback of
// the rollback after it (the previous policy, the ruleset saved for
// boot): the watchdog loaded the fail-closed ruleset in nftables and left
// the unconfirmed iptables rules in force, retrying, an admin whose SSH
// the change cut locked out. iptables-restore --noflush still writes
// moat's own chains of that table (it refuses only a change to the chain
// holding the foreign rule), so a restore reads the tables iptables-save
// cannot print over netlink instead: moat's chains by name, and which
// built-in chains jump into them. The jumps' conditions are not known
// there: they are left as they are, and the restore says so
// (RestoreNote).

// blockedTables are, per family, the tables iptables-save could not
// print, with what it could not print there.
type blockedTables map[policy.Family]map[string][]string

// readAroundIncompatible reads moat's chains and ipsets as read does,
// but takes the tables iptables-save cannot print (of raw and filter)
// from netlink: their MOAT- chains, and the built-in chains' jumps into
// them (Jump without a condition: unknown). The record of MOAT-GEN there
// is not read.
func (b *Backend) readAroundIncompatible(ctx context.Context) (*state, blockedTables, error) {
	if !b.InNftables() {
		return nil, nil, errors.New("the tables are not iptables-nft's: cannot read them over netlink")
	}
	if _, err := b.checkOddChains(true); err != nil {
		return nil, nil, err
	}
	st := &state{jumps: map[policy.Family]map[string]Jump{}, has: map[policy.Family]map[string]bool{},
		gen: map[policy.Family]string{}, sets: map[string]bool{}, lines: map[policy.Family][]string{},
		held: map[policy.Family]contents{}, rules: map[policy.Family]string{}}
	blocked := blockedTables{}
	c, err := dialNetfilter()
	if err != nil {
		return nil, nil, fmt.Errorf("read moat's chains over netlink: %w", err)
	}
	defer func() { _ = c.Close() }() // read only
	for _, f := range families {
		out, err := b.Run(ctx, nil, f.save)
		if err != nil {
			return nil, nil, fmt.Errorf("read %s rules: %w", f.fam, err)
		}
		sv := parseSave(out)
		st.jumps[f.fam], st.has[f.fam], st.gen[f.fam], st.lines[f.fam] = sv.jumps, sv.chains, sv.gen, sv.lines
		st.held[f.fam], st.rules[f.fam] = sv.held, sv.rules
		bad := incompatibleTables(out)
		if len(bad) == 0 {
			continue
		}
		proto := uint8(unix.NFPROTO_IPV4)
		if f.fam == policy.FamilyV6 {
			proto = unix.NFPROTO_IPV6
		}
		chains, err := moatChains(ctx, c, proto)
		if err != nil {
			return nil, nil, err
		}
		blocked[f.fam] = map[string][]string{}
		for _, t := range bad {
			parts, _ := findIncompatible(proto, t)
			blocked[f.fam][t] = parts
			for _, n := range chains[t] {
				if strings.HasPrefix(n, "MOAT-") && !oddChainName(n) {
					st.has[f.fam][n] = true
				}
			}
			rules, err := dumpRules(ctx, c, proto, t)
			if err != nil {
				return nil, nil, fmt.Errorf("read %s %s rules over netlink: %w", f.fam, t, err)
			}
			for _, r := range rules {
				if r.isJumpToMoat() {
					j, seen := st.jumps[f.fam][r.chain]
					if seen {
						j.Extra = append(j.Extra, "")
					}
					st.jumps[f.fam][r.chain] = j
				}
			}
		}
	}
	names, err := b.setNames(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("list ipsets: %w", err)
	}
	for _, name := range names {
		if ownSet(name) {
			st.sets[name] = true
		}
	}
	return st, blocked, nil
}

// incompatibleTables lists the tables moat writes (raw, filter) that
// iptables-save's output prints as incompatible (CheckSave).
func incompatibleTables(out []byte) []string {
	var bad []string
	for _, table := range incompatibleNamed(out) {
		if slices.Contains(tables, table) {
			bad = append(bad, table)
		}
	}
	return bad
}

// note says what a restore around unprintable tables left as it was.
func (bt blockedTables) note(left []string) string {
	var what, blockers []string
	for _, f := range families {
		for _, t := range sortedKeys(bt[f.fam]) {
			fam := "ip"
			if f.fam == policy.FamilyV6 {
				fam = "ip6"
			}
			parts := bt[f.fam][t]
			if len(parts) == 0 {
				parts = []string{"a rule iptables cannot read"}
			}
			for _, p := range parts {
				if m := inChain.FindStringSubmatch(p); m != nil && !slices.Contains(blockers, m[1]) {
					blockers = append(blockers, m[1])
				}
			}
			what = append(what, fmt.Sprintf("table %s %s holds %s", fam, t, strings.Join(parts, "; ")))
		}
	}
	msg := fmt.Sprintf("%s, which iptables cannot print: moat's chains there were read over netlink and restored", strings.Join(what, ", "))
	if len(left) > 0 {
		by := "the rule blocks reading the table"
		if len(blockers) > 0 {
			by = "the rule blocks reading " + strings.Join(blockers, ", ")
		}
		msg += fmt.Sprintf(", but %s: the jumps into moat's chains from %s were left as they were", by, strings.Join(left, ", "))
	}
	return msg + "; delete the rule (see 'nft -a list table ip filter') and run 'moat reload'"
}

// inChain finds the chain of a rule incompatibleParts names (its name
// quoted, made printable).
var inChain = regexp.MustCompile(`^rule handle [0-9]+ in chain ("(?:[^"\\]|\\.)*")`)
