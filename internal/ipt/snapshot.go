package ipt

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// A snapshot is moat's part of the host in three sections: its ipsets as
// `ipset save` writes them (the ban sets: their definitions only, no
// member), and its chains, rules and jumps per family as iptables-save
// writes them.
//
// It is restored in one of two ways:
//   - keeping the ban sets (RestoreKeepingBans, the rollback of a change
//     that kept the backend): when both ban sets exist with the
//     snapshot's definitions (hash size and seed aside), they are left
//     as they are (the bans made and lifted meanwhile stay so) and the
//     rest is restored;
//   - refilling them (Restore, and when the first cannot): the ban sets
//     come back as the snapshot defines them, empty, and the rollback
//     then puts back the bans in force (engine: pending.bans). An older
//     snapshot holding members restores them.
const (
	secSets = "# moat snapshot: ipset"
	secV4   = "# moat snapshot: ip"
	secV6   = "# moat snapshot: ip6"
)

// Snapshot returns what moat owns, or nil when it owns nothing.
func (b *Backend) Snapshot(ctx context.Context) ([]byte, error) {
	st, err := b.read(ctx)
	if err != nil {
		return nil, err
	}
	if len(st.has[policy.FamilyV4]) == 0 && len(st.has[policy.FamilyV6]) == 0 && len(st.sets) == 0 {
		return nil, nil
	}
	var out bytes.Buffer
	out.WriteString(secSets + "\n")
	// The early lists last: they refer to the others (swapSetsScript
	// fills them once those are in place).
	for _, name := range slices.Concat(slices.DeleteFunc(sortedKeys(st.sets), isEarlyList), slices.DeleteFunc(sortedKeys(st.sets), func(n string) bool { return !isEarlyList(n) })) {
		if !strings.HasPrefix(name, SetPrefix) {
			continue
		}
		if isBanSet(name) {
			// Its definition only: the rollback leaves the bans in force
			// (`ipset save` of 200,000 bans took half a second, and their
			// restore seconds).
			line, err := b.setCreateLine(ctx, name)
			if err != nil {
				return nil, fmt.Errorf("snapshot ipset %s: %w", name, err)
			}
			out.WriteString(line + "\n")
			continue
		}
		data, err := b.runIpset(ctx, nil, "save", name)
		if err != nil {
			return nil, fmt.Errorf("snapshot ipset %s: %w", name, err)
		}
		out.Write(data)
	}
	// The read above removed them, or took a read of a generation
	// without them: one made since would write lines into the text.
	if _, err := b.checkOddChains(true); err != nil {
		return nil, err
	}
	for _, f := range families {
		data, err := b.Run(ctx, nil, f.save)
		if err == nil {
			err = CheckSave(f.save, data)
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot %s rules: %w", f.fam, err)
		}
		if f.fam == policy.FamilyV4 {
			out.WriteString(secV4 + "\n")
		} else {
			out.WriteString(secV6 + "\n")
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		table := tableFilter
		for sc.Scan() {
			line := sc.Text()
			if t, ok := strings.CutPrefix(line, "*"); ok {
				table = t
				continue
			}
			// moat's chains are in raw and filter (Restore puts each line
			// back in the table of its chain): a MOAT-* chain of mangle
			// is not moat's, nor restored into raw.
			if !slices.Contains(tables, table) {
				continue
			}
			if strings.HasPrefix(line, ":MOAT-") || strings.HasPrefix(line, "-A MOAT-") || isJump(line) {
				out.WriteString(line + "\n")
			}
		}
	}
	return out.Bytes(), nil
}

func isJump(line string) bool {
	_, _, ok := parseJump(line)
	return ok
}

// isBanSet says whether an ipset is one of the ban sets.
func isBanSet(name string) bool {
	return name == IPSetName(ruleset.BanSet4) || name == IPSetName(ruleset.BanSet6)
}

// setCreateLine is the `create` line `ipset save` writes for a set, from
// its header alone (`ipset -t list`: no member is read).
func (b *Backend) setCreateLine(ctx context.Context, name string) (string, error) {
	typ, header, err := b.ipsetHeader(ctx, name)
	if err != nil {
		return "", err
	}
	if typ == "" || header == "" || strings.ContainsAny(typ+header, "\r") {
		return "", fmt.Errorf("unexpected `ipset -t list %s` output", name)
	}
	return "create " + name + " " + typ + " " + header, nil
}

// setDefinition is a `create` line without what the kernel sets by
// itself (the hash size grows with the members, the seed is random).
func setDefinition(line string) string {
	f := strings.Fields(line)
	var out []string
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case "hashsize", "bucketsize", "initval":
			i++
			continue
		}
		out = append(out, f[i])
	}
	return strings.Join(out, " ")
}

// Restore makes moat's part of the host exactly a snapshot: sets are
// refilled and swapped in, each family's chains are replaced in one
// restore, and what the snapshot lacks is removed. An empty snapshot
// removes everything moat owns. The ban sets come back as the snapshot
// holds them: since this version, defined and empty (the rollback puts
// back the bans in force).
func (b *Backend) Restore(ctx context.Context, snap []byte) error {
	b.track = commitTrack{} // its commits are no Apply's
	if len(bytes.TrimSpace(snap)) == 0 {
		return b.Remove(ctx)
	}
	_, err := b.restore(ctx, snap, false)
	return err
}

// RestoreKeepingBans restores a snapshot leaving the ban sets as they
// are, when both exist with the snapshot's definitions: the bans made and
// lifted since stay so, and none is read or loaded again (seconds with
// 200,000 bans). kept is false (nothing done) when it cannot; Restore
// then restores them empty.
func (b *Backend) RestoreKeepingBans(ctx context.Context, snap []byte) (kept bool, err error) {
	if len(bytes.TrimSpace(snap)) == 0 {
		return false, nil
	}
	b.track = commitTrack{}
	return b.restore(ctx, snap, true)
}

// restore is Restore; with keepBans it first checks that the ban sets can
// be kept (kept false: nothing done) and then leaves them out.
func (b *Backend) restore(ctx context.Context, snap []byte, keepBans bool) (kept bool, err error) {
	b.readHeads = nil // the sets may be made anew
	sections := map[string][]string{}
	sec := ""
	for _, line := range strings.Split(string(snap), "\n") {
		switch line {
		case secSets, secV4, secV6:
			sec = line
			continue
		}
		if sec == "" && strings.TrimSpace(line) != "" {
			return false, fmt.Errorf("iptables restore: not a moat snapshot")
		}
		if line != "" {
			sections[sec] = append(sections[sec], line)
		}
	}
	b.restoreNote = ""
	st, err := b.read(ctx)
	var blocked blockedTables
	var left []string // built-in chains whose jumps were left as they were
	if err != nil {
		var ie *IncompatibleError
		if !errors.As(err, &ie) {
			return false, err
		}
		var rerr error
		if st, blocked, rerr = b.readAroundIncompatible(ctx); rerr != nil {
			return false, errors.Join(err, rerr)
		}
	}
	keepSets := map[string]bool{}
	if keepBans {
		want := map[string]string{}
		var rest []string
		for _, l := range sections[secSets] {
			f := strings.Fields(l)
			if len(f) >= 2 && isBanSet(f[1]) {
				if f[0] == "create" {
					want[f[1]] = setDefinition(l)
				}
				continue
			}
			rest = append(rest, l)
		}
		if len(want) != 2 {
			return false, nil
		}
		for name, def := range want {
			if !st.sets[name] {
				return false, nil
			}
			line, err := b.setCreateLine(ctx, name)
			if err != nil {
				return false, fmt.Errorf("iptables restore: %w", err)
			}
			if setDefinition(line) != def {
				return false, nil // redefined: made again, refilled
			}
			keepSets[name] = true
		}
		sections[secSets] = rest
	}
	// An early list made anew by hand as another type would refuse the
	// swap of the snapshot's list (and the rollback fall back to an
	// apply, or fail): replaced as apply replaces it.
	if err := b.replaceForeignEarly(ctx, st, snapshotEarlyLists(sections[secSets]), map[policy.Family][]string{}); err != nil {
		return false, fmt.Errorf("iptables restore: %w", err)
	}
	setScript, exact := "", ""
	if len(sections[secSets]) > 0 {
		script, names, after, err := swapSetsScript(sections[secSets], st.sets, b.earlyHeldNow(ctx, st.sets))
		setScript, exact = script, after
		if err != nil {
			return false, err
		}
		if _, err := b.runIpset(ctx, []byte(script), "restore"); err != nil {
			return false, fmt.Errorf("restore ipsets: %w", err)
		}
		for name := range names {
			keepSets[name] = true
		}
	}
	for _, f := range families {
		lines := sections[secV4]
		if f.fam == policy.FamilyV6 {
			lines = sections[secV6]
		}
		var s strings.Builder
		for _, t := range tables {
			// lineTable: the table of a snapshot line, from its chain;
			// "" for a line moat does not restore (the file may be
			// damaged: a line of one word is no chain).
			lineTable := func(l string) string {
				if strings.HasPrefix(l, ":") {
					name, _, _ := strings.Cut(l[1:], " ")
					return tableOf(name)
				}
				if f := strings.Fields(l); len(f) >= 2 && (strings.HasPrefix(l, "-A MOAT-") || isJump(l)) {
					return tableOf(f[1])
				}
				return ""
			}
			var tl []string
			for _, l := range lines {
				if lineTable(l) == t {
					tl = append(tl, l)
				}
			}
			var stale []string
			declared := map[string]bool{}
			for _, l := range tl {
				if strings.HasPrefix(l, ":MOAT-") {
					name, _, _ := strings.Cut(l[1:], " ")
					declared[name] = true
				}
			}
			for _, name := range sortedKeys(st.has[f.fam]) {
				if !declared[name] && tableOf(name) == t {
					stale = append(stale, name)
				}
			}
			if len(tl) == 0 && len(stale) == 0 {
				continue
			}
			fmt.Fprintf(&s, "*%s\n", t)
			for _, l := range tl {
				if strings.HasPrefix(l, ":MOAT-") {
					name, _, _ := strings.Cut(l[1:], " ")
					fmt.Fprintf(&s, ":%s - [0:0]\n", name)
				}
			}
			for _, name := range stale {
				fmt.Fprintf(&s, ":%s - [0:0]\n", name) // empty it, then delete below
			}
			for _, l := range tl {
				if strings.HasPrefix(l, "-A MOAT-") {
					s.WriteString(l + "\n")
				}
			}
			restored := map[string]bool{}
			for _, l := range tl {
				// The first jump of moat's forms from each chain: one
				// made by hand, or a second one, is not moat's to put
				// back (the kernel's are deleted).
				builtin, cond, ok := parseJump(l)
				if !ok || !KnownJump(cond) || restored[builtin] {
					continue
				}
				restored[builtin] = true
				have, there := st.jumps[f.fam][builtin]
				if blocked[f.fam][t] != nil && there {
					// Read over netlink: its condition is not known.
					left = append(left, builtin)
					continue
				}
				writeJump(&s, builtin, cond, have, there)
			}
			for _, name := range stale {
				builtin := strings.TrimPrefix(name, "MOAT-")
				if _, ok := st.jumps[f.fam][builtin]; ok && blocked[f.fam][t] != nil {
					left = append(left, builtin) // emptied above, jumped to still
					continue
				}
				if j, ok := st.jumps[f.fam][builtin]; ok {
					for _, cond := range append([]string{j.Cond}, j.Extra...) {
						fmt.Fprintf(&s, "-D %s %s\n", builtin, jumpSpec(builtin, cond))
					}
				}
				fmt.Fprintf(&s, "-X %s\n", name)
			}
			s.WriteString("COMMIT\n")
		}
		if s.Len() == 0 {
			continue
		}
		script := s.String()
		if st.has[f.fam][GenChain] && strings.HasPrefix(script, "*"+tableRaw+"\n") && strings.Contains(script, "\n*"+tableFilter+"\n") {
			// raw commits before filter, which holds MOAT-GEN: marked
			// first, a kill between the two is reported (markRewriting).
			script = "*filter\n" + genChainRules(rewriting, "", nil) + "COMMIT\n" + script
		}
		if _, err := b.Run(ctx, []byte(script), f.restore, "-w", "5", "--noflush"); err != nil {
			return false, fmt.Errorf("restore %s rules: %w", f.fam, err)
		}
	}
	var stale []string
	for _, name := range sortedKeys(st.sets) {
		// A temporary set left by a moat killed while it filled it is
		// destroyed and made again by the set restore above, which
		// swaps it away: destroying it once more failed the restore.
		if keepSets[name] || strings.HasPrefix(setScript, "destroy "+name+"\n") || strings.Contains(setScript, "\ndestroy "+name+"\n") {
			continue
		}
		stale = append(stale, name)
	}
	if err := b.destroySetsAfter(ctx, exact, stale); err != nil {
		return keepBans, err
	}
	if len(blocked) > 0 {
		slices.Sort(left)
		b.restoreNote = blocked.note(slices.Compact(left))
	}
	return keepBans, nil
}

// RestoreNote says what the last Restore could not read or put back
// (the tables iptables-save cannot print, and the jumps it left as they
// were), "" when nothing: the rollback tells the admin.
func (b *Backend) RestoreNote() string { return b.restoreNote }

// earlyHeldNow are the members of the early lists among sets (the sets
// there now) that are moat's sets (no early list, no temporary set), by
// list: those the rules in the kernel may drop by.
func (b *Backend) earlyHeldNow(ctx context.Context, sets map[string]bool) map[string][]string {
	out := map[string][]string{}
	for name := range sets {
		if !strings.HasPrefix(name, SetPrefix) || !isEarlyList(name) {
			continue
		}
		held, missing, err := b.readEarly(ctx, name, b.IpsetNetlink)
		if err != nil || missing {
			continue
		}
		out[name] = slices.DeleteFunc(held, func(m string) bool {
			return !strings.HasPrefix(m, SetPrefix) || isEarlyList(m) || !ownSet(m)
		})
	}
	return out
}

// swapSetsScript turns `ipset save` output into a restore that fills each
// set under a temporary name and swaps it in (or renames it, for a set
// that does not exist now). An early list also keeps the sets of held
// (the members it has now: the sets the rules in the kernel drop by,
// until the snapshot's rules replace them); exact, run after the rules,
// then makes each such list hold the snapshot's members alone.
func swapSetsScript(lines []string, existing map[string]bool, held map[string][]string) (script string, names map[string]bool, exact string, err error) {
	// The early lists (list:set) are made after the others are in
	// place: their members are those sets' names.
	var s, early, after strings.Builder
	names = map[string]bool{}
	var order []string
	creates := map[string]string{}   // an early list's create arguments
	members := map[string][]string{} // its members in the snapshot
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 2 || !strings.HasPrefix(f[1], SetPrefix) {
			return "", nil, "", fmt.Errorf("iptables restore: unexpected ipset line %q", l)
		}
		name := f[1]
		tmp := tmpSetName(name)
		w := &s
		if isEarlyList(name) {
			w = &early
		}
		switch f[0] {
		case "create":
			if existing[tmp] {
				fmt.Fprintf(w, "destroy %s\n", tmp)
			}
			fmt.Fprintf(w, "create %s %s\n", tmp, strings.Join(f[2:], " "))
			names[name] = true
			order = append(order, name)
			creates[name] = strings.Join(f[2:], " ")
		case "add":
			fmt.Fprintf(w, "add %s %s\n", tmp, strings.Join(f[2:], " "))
			if isEarlyList(name) && len(f) == 3 {
				members[name] = append(members[name], f[2])
			}
		default:
			return "", nil, "", fmt.Errorf("iptables restore: unexpected ipset command %q", f[0])
		}
	}
	for _, name := range order {
		if !isEarlyList(name) {
			continue
		}
		var extra []string
		for _, m := range held[name] {
			if !slices.Contains(members[name], m) && !slices.Contains(extra, m) {
				extra = append(extra, m)
			}
		}
		if len(extra) == 0 {
			continue
		}
		tmp := tmpSetName(name)
		for _, m := range extra {
			fmt.Fprintf(&early, "add %s %s\n", tmp, m)
		}
		fmt.Fprintf(&after, "create %s %s\n", tmp, creates[name])
		for _, m := range members[name] {
			fmt.Fprintf(&after, "add %s %s\n", tmp, m)
		}
		fmt.Fprintf(&after, "swap %s %s\ndestroy %s\n", tmp, name, tmp)
	}
	for _, last := range []bool{false, true} {
		if last {
			s.WriteString(early.String())
		}
		for _, name := range order {
			if isEarlyList(name) != last {
				continue
			}
			tmp := tmpSetName(name)
			if existing[name] {
				fmt.Fprintf(&s, "swap %s %s\ndestroy %s\n", tmp, name, tmp)
			} else {
				fmt.Fprintf(&s, "rename %s %s\n", tmp, name)
			}
		}
	}
	return s.String(), names, after.String(), nil
}
