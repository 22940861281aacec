package ipt

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	pol "github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// tableKernel emulates what moat's Apply needs of iptables-restore,
// iptables-save and ipset: each table section of a restore commits on
// its own at its COMMIT, and a moat killed after commit number killAt
// (counted over every restore) commits nothing more. An ipset a
// committed rule still matches cannot be destroyed, as in the kernel.
type tableKernel struct {
	// tables: "iptables"/"ip6tables" → table → chain → rules ("-A" specs).
	tables  map[string]map[string]map[string][]string
	sets    map[string]bool
	commits int
	killAt  int // 0: never
}

var errKilled = errors.New("killed")

func newTableKernel() *tableKernel {
	k := &tableKernel{tables: map[string]map[string]map[string][]string{}, sets: map[string]bool{}}
	for _, p := range []string{"iptables", "ip6tables"} {
		k.tables[p] = map[string]map[string][]string{
			"raw":    {"PREROUTING": nil},
			"filter": {"INPUT": nil, "FORWARD": nil, "OUTPUT": nil},
		}
	}
	return k
}

func (k *tableKernel) clone() *tableKernel {
	c := &tableKernel{tables: map[string]map[string]map[string][]string{}, sets: maps.Clone(k.sets), commits: k.commits}
	for p, ts := range k.tables {
		c.tables[p] = map[string]map[string][]string{}
		for t, chains := range ts {
			c.tables[p][t] = map[string][]string{}
			for ch, rules := range chains {
				c.tables[p][t][ch] = slices.Clone(rules)
			}
		}
	}
	return c
}

// wholeOrSplit checks what a kill (what names it) left in k: the old
// rules, the new ones, or a split that Split reports.
func (k *tableKernel) wholeOrSplit(t *testing.T, ctx context.Context, what, oldSave, newSave string) {
	t.Helper()
	k.killAt = 0
	now := k.save("iptables") + k.save("ip6tables")
	split, err := (&Backend{Run: k.run}).Split(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if now != oldSave && now != newSave && split == "" {
		t.Fatalf("%s: neither the old nor the new rules, and no split reported:\n%s", what, now)
	}
}

// repairThenChange applies oldRS over what a kill left in k (the
// engine's repair), then newRS (the change again), and checks that each
// loads its rules whole.
func (k *tableKernel) repairThenChange(t *testing.T, ctx context.Context, what string, oldRS, newRS *ruleset.Ruleset, oldSave, newSave string) {
	t.Helper()
	if err := (&Backend{Run: k.run}).Apply(ctx, oldRS); err != nil {
		t.Fatalf("%s: repair: %v", what, err)
	}
	if got := k.save("iptables") + k.save("ip6tables"); got != oldSave {
		t.Errorf("%s: the repair did not load the old rules:\n%s\nwant:\n%s", what, got, oldSave)
	}
	if err := (&Backend{Run: k.run}).Apply(ctx, newRS); err != nil {
		t.Fatalf("%s: the change after the repair: %v", what, err)
	}
	if got := k.save("iptables") + k.save("ip6tables"); got != newSave {
		t.Errorf("%s: the change after the repair did not load the new rules", what)
	}
}

func (k *tableKernel) save(prog string) string {
	var b strings.Builder
	for _, t := range []string{"raw", "filter"} {
		chains := k.tables[prog][t]
		fmt.Fprintf(&b, "*%s\n", t)
		for _, ch := range sortedKeys(chains) {
			if strings.HasPrefix(ch, "MOAT-") {
				fmt.Fprintf(&b, ":%s - [0:0]\n", ch)
			} else {
				fmt.Fprintf(&b, ":%s ACCEPT [0:0]\n", ch)
			}
		}
		for _, ch := range sortedKeys(chains) {
			for _, r := range chains[ch] {
				fmt.Fprintf(&b, "-A %s %s\n", ch, r)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func (k *tableKernel) inUse(set string) bool {
	for _, ts := range k.tables {
		for _, chains := range ts {
			for _, rules := range chains {
				for _, r := range rules {
					if strings.Contains(r, "--match-set "+set+" ") {
						return true
					}
				}
			}
		}
	}
	return false
}

func (k *tableKernel) restore(prog, script string) error {
	var table string
	var work map[string][]string
	for _, l := range strings.Split(script, "\n") {
		switch {
		case l == "":
		case strings.HasPrefix(l, "*"):
			table = l[1:]
			work = map[string][]string{}
			for ch, rules := range k.tables[prog][table] {
				work[ch] = slices.Clone(rules)
			}
		case l == "COMMIT":
			if k.killAt > 0 && k.commits >= k.killAt {
				return errKilled
			}
			k.tables[prog][table] = work
			k.commits++
		case strings.HasPrefix(l, ":"):
			name, _, _ := strings.Cut(l[1:], " ")
			work[name] = nil // declared under --noflush: emptied
		case strings.HasPrefix(l, "-A "):
			ch, rest, _ := strings.Cut(l[3:], " ")
			work[ch] = append(work[ch], rest)
		case strings.HasPrefix(l, "-I "):
			f := strings.SplitN(l[3:], " ", 3)
			n, err := strconv.Atoi(f[1])
			if err != nil || n < 1 || n > len(work[f[0]])+1 {
				return fmt.Errorf("bad insert %q", l)
			}
			work[f[0]] = slices.Insert(work[f[0]], n-1, f[2])
		case strings.HasPrefix(l, "-D "):
			ch, rest, _ := strings.Cut(l[3:], " ")
			i := slices.Index(work[ch], rest)
			if i < 0 {
				return fmt.Errorf("delete of a missing rule %q", l)
			}
			work[ch] = slices.Delete(work[ch], i, i+1)
		default:
			return fmt.Errorf("unexpected line %q", l)
		}
	}
	return nil
}

func (k *tableKernel) ipset(args []string, stdin string) ([]byte, error) {
	if len(args) > 0 && args[0] == "list" {
		return []byte(strings.Join(sortedKeys(k.sets), "\n") + "\n"), nil
	}
	for _, l := range strings.Split(stdin, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "create":
			k.sets[f[1]] = true
		case "destroy":
			if k.inUse(f[1]) {
				return nil, fmt.Errorf("ipset: %s: Set cannot be destroyed: it is in use by a kernel component", f[1])
			}
			delete(k.sets, f[1])
		case "rename":
			delete(k.sets, f[1])
			k.sets[f[2]] = true
		case "add", "flush", "swap":
		default:
			return nil, fmt.Errorf("ipset: unexpected line %q", l)
		}
	}
	return nil, nil
}

func (k *tableKernel) run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	switch name {
	case "iptables-save", "ip6tables-save":
		return []byte(k.save(strings.TrimSuffix(name, "-save"))), nil
	case "iptables-restore", "ip6tables-restore":
		if slices.Contains(args, "--test") {
			return nil, nil
		}
		return nil, k.restore(strings.TrimSuffix(name, "-restore"), string(stdin))
	case "ipset":
		return k.ipset(args, string(stdin))
	}
	return nil, nil
}

// TestKillBetweenRawAndFilter kills an Apply that swaps one blocklist for
// another after each commit of its restores, the ones between a family's
// raw and filter tables included (iptables-restore commits each table on
// its own, raw first, and MOAT-GEN is in filter). After each kill, the
// kernel holds the old rules or the new, or Split reports the split; and
// the repair (an apply of the old ruleset, as the engine's undo does)
// then the change both succeed and leave each one whole. Fails before
// the "rewriting" mark: killed between IPv4's raw and filter commits,
// MOAT-GEN still named the old rules, Split saw nothing, and the repair
// trusted it, left raw on the new blocklist's sets and failed to
// destroy them ("in use").
func TestKillBetweenRawAndFilter(t *testing.T) {
	policy := func(name string, port int) string {
		return fmt.Sprintf("default deny incoming\nallow 22/tcp\nallow %d/tcp\nblocklist %s file /nonexistent\n", port, name)
	}
	oldRS, newRS := compileText(t, policy("a", 80)), compileText(t, policy("b", 443))
	base := newTableKernel()
	for _, n := range []string{"moat-ban4", "moat-ban6", "moat-login4", "moat-login6", "moat-protect4", "moat-protect6"} {
		base.sets[n] = true
	}
	if err := (&Backend{Run: base.run}).Apply(context.Background(), oldRS); err != nil {
		t.Fatal(err)
	}
	oldSave := base.save("iptables") + base.save("ip6tables")
	full := base.clone()
	if err := (&Backend{Run: full.run}).Apply(context.Background(), newRS); err != nil {
		t.Fatal(err)
	}
	newSave := full.save("iptables") + full.save("ip6tables")
	if oldSave == newSave {
		t.Fatal("the two rulesets load the same rules")
	}
	total := full.commits - base.commits
	for kill := 1; kill < total; kill++ {
		k := base.clone()
		k.killAt = base.commits + kill
		if err := (&Backend{Run: k.run}).Apply(context.Background(), newRS); !errors.Is(err, errKilled) {
			t.Fatalf("kill after commit %d: %v", kill, err)
		}
		what := fmt.Sprintf("kill after commit %d", kill)
		k.wholeOrSplit(t, context.Background(), what, oldSave, newSave)
		k.repairThenChange(t, context.Background(), what, oldRS, newRS, oldSave, newSave)
	}

	if !legacyTables() {
		killRawKnown(t, base, oldRS, newRS, policy)
	}

	// A rollback's restore of the old rules' snapshot commits raw before
	// filter too: killed between, Split reports it, and the restore run
	// again (the engine's repair finishes the rollback) loads it whole.
	var snap strings.Builder
	snap.WriteString(secSets + "\n")
	for _, n := range sortedKeys(base.sets) {
		fmt.Fprintf(&snap, "create %s hash:net family inet hashsize 1024 maxelem 65536\n", n)
	}
	for _, f := range []struct{ sec, prog string }{{secV4, "iptables"}, {secV6, "ip6tables"}} {
		snap.WriteString(f.sec + "\n")
		for _, l := range strings.Split(base.save(f.prog), "\n") {
			if strings.HasPrefix(l, ":MOAT-") || strings.HasPrefix(l, "-A MOAT-") || isJump(l) {
				snap.WriteString(l + "\n")
			}
		}
	}
	for kill := 1; ; kill++ {
		k := full.clone()
		k.killAt = full.commits + kill
		err := (&Backend{Run: k.run}).Restore(context.Background(), []byte(snap.String()))
		if err == nil {
			if kill < 3 {
				t.Fatalf("the snapshot's restore made %d commits", kill-1)
			}
			break
		}
		if !errors.Is(err, errKilled) {
			t.Fatalf("restore killed after commit %d: %v", kill, err)
		}
		k.wholeOrSplit(t, context.Background(), fmt.Sprintf("restore killed after commit %d", kill), oldSave, newSave)
		if err := (&Backend{Run: k.run}).Restore(context.Background(), []byte(snap.String())); err != nil {
			t.Fatalf("restore killed after commit %d: the restore again: %v", kill, err)
		}
		if got := k.save("iptables") + k.save("ip6tables"); got != oldSave {
			t.Errorf("restore killed after commit %d: the restore again did not load the old rules:\n%s\nwant:\n%s", kill, got, oldSave)
		}
	}
}

// killRawKnown is TestKillBetweenRawAndFilter with moat's state known
// from its own restore of oldRS (as the chain cache gives it while the
// nftables generation has not moved: here the fake kernel's count of
// commits), raw sections included. A change in filter alone (a port
// rule) restores the filter section alone, one commit per family and no
// "rewriting" mark, and every kill still leaves the old rules, the new
// or a split reported; a change of raw (the blocklist swapped) is still
// marked. Fails if the mark is kept for the first (raw then rewritten
// too) or dropped for the second (its raw would be left as it was, or
// unmarked), or if the condition is inverted.
func killRawKnown(t *testing.T, base *tableKernel, oldRS *ruleset.Ruleset, newRS *ruleset.Ruleset, policy func(string, int) string) {
	old := nftGeneration
	t.Cleanup(func() { nftGeneration = old })
	var cur *tableKernel
	nftGeneration = func() (uint32, error) { return uint32(cur.commits), nil }
	// known is a Backend on k whose next read is k's chains with the raw
	// sections of oldRS known; scripts gets every restore it runs.
	known := func(k *tableKernel, scripts *[]string) *Backend {
		t.Helper()
		cur = k
		run := func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
			if strings.HasSuffix(name, "-restore") && !slices.Contains(args, "--test") {
				*scripts = append(*scripts, string(stdin))
			}
			return k.run(ctx, stdin, name, args...)
		}
		b := &Backend{Run: run, Netlink: true}
		if _, err := b.read(context.Background()); err != nil || b.lastRead == nil {
			t.Fatalf("read: %v (kept: %v)", err, b.lastRead != nil)
		}
		names := SetNames(oldRS)
		b.lastRead.raw = map[pol.Family]string{}
		for _, f := range families {
			b.lastRead.raw[f.fam] = rawSum(oldRS, f.fam, names)
		}
		return b
	}
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		to      *ruleset.Ruleset
		rawSame bool
	}{
		{"a port rule changed (raw the same)", compileText(t, policy("a", 443)), true},
		{"the blocklist swapped (raw changed)", newRS, false},
	} {
		// The rules to reach, from a Backend that knows nothing.
		want := base.clone()
		if err := (&Backend{Run: want.run}).Apply(ctx, c.to); err != nil {
			t.Fatal(err)
		}
		wantSave := want.save("iptables") + want.save("ip6tables")
		oldSave := base.save("iptables") + base.save("ip6tables")
		full := base.clone()
		var scripts []string
		if err := known(full, &scripts).Apply(ctx, c.to); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := full.save("iptables") + full.save("ip6tables"); got != wantSave {
			t.Fatalf("%s: the rules loaded:\n%s\nwant:\n%s", c.name, got, wantSave)
		}
		all := strings.Join(scripts, "")
		marked, raw := strings.Contains(all, rewriting), strings.Contains(all, "*"+tableRaw+"\n")
		if c.rawSame && (marked || raw || full.commits-base.commits != 2) {
			t.Fatalf("%s: %d commits, marked %v, raw restored %v:\n%s", c.name, full.commits-base.commits, marked, raw, all)
		}
		if !c.rawSame && (!marked || !raw) {
			t.Fatalf("%s: marked %v, raw restored %v:\n%s", c.name, marked, raw, all)
		}
		for kill := 1; kill < full.commits-base.commits; kill++ {
			k := base.clone()
			k.killAt = base.commits + kill
			if err := known(k, new([]string)).Apply(ctx, c.to); !errors.Is(err, errKilled) {
				t.Fatalf("%s: kill after commit %d: %v", c.name, kill, err)
			}
			what := fmt.Sprintf("%s: kill after commit %d", c.name, kill)
			k.wholeOrSplit(t, ctx, what, oldSave, wantSave)
			k.repairThenChange(t, ctx, what, oldRS, c.to, oldSave, wantSave)
		}
	}
}
