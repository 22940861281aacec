// Package foreign finds filtering outside moat that also sees the packets
// moat filters, in moat's network namespace: nftables base chains of other
// tables (a drop policy, drop or reject rules reachable from them),
// iptables and ip6tables filter-table rules and DROP policies outside
// moat's chains, and the tools behind them when their chains say so (ufw,
// firewalld, Docker). moat's accept only means "moat does not object": any
// of these can still drop the packet.
package foreign

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/termtext"
)

// Finding is one place outside moat that can drop packets.
type Finding struct {
	// Tool is who owns it: "ufw", "firewalld", "docker", or "" (unknown:
	// another table or chain).
	Tool string `json:"tool,omitempty"`
	// Where names it: "nftables table inet foreign, chain input" or
	// "iptables filter chain INPUT".
	Where string `json:"where"`
	// What it does: "policy drop", "3 drop/reject rules".
	What string `json:"what"`
	// Hooks are the packet paths it sees: input, output, forward,
	// prerouting, postrouting.
	Hooks []string `json:"hooks"`
	// Bypass is set for rules ahead of moat's jump in a built-in chain
	// that holds it (iptables backend): "accept" (an ACCEPT rule: the
	// packets it matches never reach moat) or "may accept" (a jump to a
	// chain that holds an ACCEPT). Such a finding lets packets through
	// that moat would refuse; the others can only drop.
	Bypass string `json:"bypass,omitempty"`
	// Rules are those rules, as iptables-save writes them.
	Rules []string `json:"rules,omitempty"`
	// paths are, for a bypass, each way to an ACCEPT: the rules whose
	// conditions the packet meets on it.
	paths [][]*xrule
}

func (f Finding) String() string {
	s := f.Where + ": " + f.What
	if f.Tool != "" {
		s = f.Tool + ": " + s
	}
	return termtext.Printable(s + " (" + strings.Join(f.Hooks, ", ") + ")")
}

// Sees says whether the finding sees packets of a moat chain ("input",
// "output" or "forward") and can drop them; a bypass (rules that accept
// ahead of moat's jump) drops nothing: Accepts judges those.
func (f Finding) Sees(chain string) bool {
	if f.Bypass != "" {
		return false
	}
	for _, h := range f.Hooks {
		switch {
		case h == chain,
			(h == "prerouting" || h == "ingress") && (chain == "input" || chain == "forward"),
			(h == "postrouting" || h == "egress") && (chain == "output" || chain == "forward"):
			return true
		}
	}
	return false
}

// SeesFamily says whether the finding sees IPv6 packets (v6) or IPv4
// ones (!v6): iptables and nftables ip tables see IPv4 only, ip6tables
// and ip6 tables IPv6 only, the others (inet, ...) both.
func (f Finding) SeesFamily(v6 bool) bool {
	switch {
	case strings.HasPrefix(f.Where, "iptables "), strings.HasPrefix(f.Where, "iptables-legacy "), strings.HasPrefix(f.Where, "nftables table ip "):
		return !v6
	case strings.HasPrefix(f.Where, "ip6tables "), strings.HasPrefix(f.Where, "ip6tables-legacy "), strings.HasPrefix(f.Where, "nftables table ip6 "):
		return v6
	}
	return true
}

// Detect reads the kernel's rulesets with run (execrun.Exec for real).
// A tool that is missing is skipped; one that fails is an error.
func Detect(ctx context.Context, run execrun.Runner, has func(prog string) bool) ([]Finding, error) {
	return DetectWith(ctx, run, has, nil)
}

// DetectWith is Detect with the nftables tables listed by tables (family,
// name; over netlink for real): each is then read with `nft -j list table`
// except moat's own. nft fetches every element of every set it lists, so
// `nft -j list ruleset` cost 10 to 20 s with 200,000 bans in moat's sets;
// a table without them costs milliseconds. With tables nil, the whole
// ruleset is read at once. With tables, iptables and ip6tables are read
// (and `iptables -V` asked) only when their family has iptables-nft's
// tables in nftables or legacy x_tables tables loaded.
func DetectWith(ctx context.Context, run execrun.Runner, has func(prog string) bool, tables func() ([][2]string, error)) ([]Finding, error) {
	return DetectOver(ctx, run, has, tables, nil)
}

// DetectOver is DetectWith where onlyMoat (XtablesOnlyMoat for real; nil:
// never) may prove over netlink that a family's iptables-nft tables are
// moat's filter and raw tables alone, holding nothing outside moat's
// chains: that family's iptables-save (and `iptables -V`, when no family
// needs it) is not started, nor its tables read with nft. The iptables backend's own
// chains made every command start three processes for this.
func DetectOver(ctx context.Context, run execrun.Runner, has func(prog string) bool, tables func() ([][2]string, error), onlyMoat func(family string) (bool, error)) ([]Finding, error) {
	var out []Finding
	var list [][2]string
	listed := false
	if has("nft") && tables != nil {
		var err error
		if list, err = tables(); err != nil {
			return nil, fmt.Errorf("list the nftables tables: %w", err)
		}
		listed = true
	}
	// Which iptables families hold tables: with the tables listed, only
	// those with iptables-nft's tables in nftables or legacy x_tables
	// tables loaded (no process is started for a host without iptables
	// rules); otherwise both.
	xt := map[string]bool{"ip": !listed, "ip6": !listed}
	legacy := map[string]bool{}     // family → legacy x_tables tables are loaded
	moatFilter := map[string]bool{} // family → its filter table is moat's alone
	if listed {
		for _, t := range list {
			if (t[0] == "ip" || t[0] == "ip6") && slices.Contains(xtablesNames, t[1]) {
				xt[t[0]] = true
			}
		}
		for fam, f := range legacyTableNames {
			if data, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(data)) != "" {
				xt[fam] = true
				legacy[fam] = true
			}
		}
		// A family whose only iptables tables are iptables-nft's filter
		// and raw tables, holding moat's chains and jumps alone, has
		// nothing to find.
		for _, fam := range []string{"ip", "ip6"} {
			if !xt[fam] || legacy[fam] || onlyMoat == nil || !onlyMoatTables(list, fam) {
				continue
			}
			if ok, err := onlyMoat(fam); err == nil && ok {
				xt[fam] = false
				moatFilter[fam] = true
			}
		}
	}
	nftXtables := false // iptables-nft: its tables show in nft too; read them as iptables
	if has("iptables") && (xt["ip"] || xt["ip6"]) {
		if v, err := run(ctx, nil, "iptables", "-V"); err == nil && strings.Contains(string(v), "nf_tables") {
			nftXtables = true
		}
	}
	if has("nft") {
		if !listed {
			data, err := run(ctx, nil, "nft", "-j", "list", "ruleset")
			if err != nil {
				return nil, fmt.Errorf("read the nftables ruleset: %w", err)
			}
			f, err := FromNftJSON(data, nftXtables)
			if err != nil {
				return nil, err
			}
			out = append(out, f...)
		} else {
			for _, t := range list {
				if t[0] == "inet" && t[1] == "moat" {
					continue
				}
				if nftXtables && (t[0] == "ip" || t[0] == "ip6") && slices.Contains(xtablesNames, t[1]) {
					continue // read below with iptables' names
				}
				if _, moats := moatTables[t[1]]; moatFilter[t[0]] && moats {
					continue // moat's chains and jumps alone
				}
				data, err := run(ctx, nil, "nft", "-j", "list", "table", t[0], t[1])
				if err != nil {
					return nil, fmt.Errorf("read the nftables table %s %s: %w", t[0], t[1], err)
				}
				f, err := FromNftJSON(data, nftXtables)
				if err != nil {
					return nil, err
				}
				out = append(out, f...)
			}
		}
	}
	for _, p := range []struct{ fam, prog string }{{"ip", "iptables-save"}, {"ip6", "ip6tables-save"}} {
		if !has(p.prog) || !xt[p.fam] {
			continue
		}
		data, err := run(ctx, nil, p.prog)
		if err != nil {
			return nil, fmt.Errorf("read the %s tables: %w", strings.TrimSuffix(p.prog, "-save"), err)
		}
		out = append(out, FromIptablesSave(strings.TrimSuffix(p.prog, "-save"), data)...)
		if nftXtables && has("nft") {
			f, err := incompatibleChains(ctx, run, data, p.fam)
			if err != nil {
				return nil, err
			}
			out = append(out, f...)
		}
	}
	// Legacy x_tables tables beside iptables-nft's: the nf_tables kind of
	// iptables-save does not show them, iptables-legacy-save does.
	for _, p := range []struct{ fam, prog string }{{"ip", "iptables-legacy-save"}, {"ip6", "ip6tables-legacy-save"}} {
		if !nftXtables || !legacy[p.fam] || !has(p.prog) {
			continue
		}
		data, err := run(ctx, nil, p.prog)
		if err != nil {
			return nil, fmt.Errorf("read the %s tables: %w", strings.TrimSuffix(p.prog, "-save"), err)
		}
		out = append(out, FromIptablesSave(strings.TrimSuffix(p.prog, "-save"), data)...)
	}
	return group(out), nil
}

// incompatibleChains reads, as nftables, the base chains of family's
// iptables-nft tables that iptables-save (its output save) says it cannot
// show ("# Table `filter' contains incompatible base-chains": made with
// nft, such as a chain on the input hook with policy drop); the built-in
// chains are iptables-save's.
func incompatibleChains(ctx context.Context, run execrun.Runner, save []byte, family string) ([]Finding, error) {
	var out []Finding
	for _, line := range strings.Split(string(save), "\n") {
		rest, ok := strings.CutPrefix(line, "# Table `")
		if !ok || !strings.HasSuffix(line, "' contains incompatible base-chains, use 'nft' tool to list them.") {
			continue
		}
		table, _, _ := strings.Cut(rest, "'")
		if !slices.Contains(xtablesNames, table) {
			continue
		}
		data, err := run(ctx, nil, "nft", "-j", "list", "table", family, table)
		if err != nil {
			return nil, fmt.Errorf("read the nftables table %s %s: %w", family, table, err)
		}
		f, err := FromNftJSON(data, false)
		if err != nil {
			return nil, err
		}
		for _, x := range f {
			builtin := false
			for name := range builtinHook {
				builtin = builtin || strings.Contains(x.Where, ", chain "+name+" (")
			}
			if !builtin {
				out = append(out, x)
			}
		}
	}
	return out, nil
}

// onlyMoatTables says whether family's iptables-nft tables in list are
// among those moat's iptables backend uses (filter, raw), and there is
// one.
func onlyMoatTables(list [][2]string, family string) bool {
	found := false
	for _, t := range list {
		if t[0] == family && slices.Contains(xtablesNames, t[1]) {
			if _, ok := moatTables[t[1]]; !ok {
				return false
			}
			found = true
		}
	}
	return found
}

// legacyTableNames are where the legacy x_tables modules list the tables
// they hold, by nftables family name.
var legacyTableNames = map[string]string{"ip": "/proc/net/ip_tables_names", "ip6": "/proc/net/ip6_tables_names"}

// xtablesNames are the tables iptables-nft makes.
var xtablesNames = []string{"filter", "raw", "mangle", "nat", "security"}

var hooks = []string{"prerouting", "input", "forward", "output", "postrouting"}

// FromNftJSON reads `nft -j list ruleset`. moat's own table is skipped, and
// so are iptables-nft's tables when skipXtables (iptables-save reports
// them, with iptables' names).
func FromNftJSON(data []byte, skipXtables bool) ([]Finding, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("read nft -j output: %w", err)
	}
	type chainKey struct{ family, table, name string }
	type chainInfo struct {
		hook, policy string
		prio         json.Number
		drops        int
		targets      []string
	}
	chains := map[chainKey]*chainInfo{}
	var order []chainKey
	get := func(k chainKey) *chainInfo {
		c, ok := chains[k]
		if !ok {
			c = &chainInfo{}
			chains[k] = c
			order = append(order, k)
		}
		return c
	}
	skip := func(family, table string) bool {
		if family == "inet" && table == "moat" {
			return true
		}
		return skipXtables && (family == "ip" || family == "ip6") && slices.Contains(xtablesNames, table)
	}
	for _, obj := range doc.Nftables {
		if raw, ok := obj["chain"]; ok {
			var c struct {
				Family, Table, Name, Hook, Policy string
				Prio                              json.Number `json:"prio"`
			}
			if err := json.Unmarshal(raw, &c); err != nil {
				return nil, fmt.Errorf("read nft chain: %w", err)
			}
			if skip(c.Family, c.Table) {
				continue
			}
			ci := get(chainKey{c.Family, c.Table, c.Name})
			ci.hook, ci.policy, ci.prio = c.Hook, c.Policy, c.Prio
		}
		if raw, ok := obj["rule"]; ok {
			var r struct {
				Family, Table, Chain string
				Expr                 json.RawMessage `json:"expr"`
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				return nil, fmt.Errorf("read nft rule: %w", err)
			}
			if skip(r.Family, r.Table) {
				continue
			}
			ci := get(chainKey{r.Family, r.Table, r.Chain})
			var expr any
			if err := json.Unmarshal(r.Expr, &expr); err != nil {
				return nil, fmt.Errorf("read nft rule: %w", err)
			}
			if hasKey(expr, "drop") || hasKey(expr, "reject") {
				ci.drops++
			}
			ci.targets = append(ci.targets, targets(expr)...)
		}
	}
	var out []Finding
	for _, k := range order {
		base := chains[k]
		// The ingress hook (netdev, inet) sees packets before prerouting,
		// netdev's egress after postrouting.
		devHook := base.hook == "ingress" && (k.family == "netdev" || k.family == "inet") || base.hook == "egress" && k.family == "netdev"
		if !devHook && (!slices.Contains(hooks, base.hook) || k.family == "bridge" || k.family == "netdev" || k.family == "arp") {
			continue
		}
		// Drops in the base chain and every chain it jumps to.
		drops, seen := 0, map[string]bool{}
		var walk func(name string)
		walk = func(name string) {
			if seen[name] {
				return
			}
			seen[name] = true
			c := chains[chainKey{k.family, k.table, name}]
			if c == nil {
				return
			}
			drops += c.drops
			for _, t := range c.targets {
				walk(t)
			}
		}
		walk(k.name)
		where := fmt.Sprintf("nftables table %s %s, chain %s (hook %s, priority %s)", k.family, k.table, k.name, base.hook, base.prio)
		tool := ""
		if k.table == "firewalld" {
			tool = "firewalld"
		}
		if base.policy == "drop" {
			out = append(out, Finding{Tool: tool, Where: where, What: "policy drop", Hooks: []string{base.hook}})
		}
		if drops > 0 {
			out = append(out, Finding{Tool: tool, Where: where, What: count(drops, "drop/reject rule"), Hooks: []string{base.hook}})
		}
	}
	return out, nil
}

// hasKey says whether a JSON value holds key at any depth.
func hasKey(v any, key string) bool {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if k == key || hasKey(e, key) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if hasKey(e, key) {
				return true
			}
		}
	}
	return false
}

// targets are the chains a rule jumps or goes to.
func targets(v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if k == "jump" || k == "goto" {
				if m, ok := e.(map[string]any); ok {
					if t, ok := m["target"].(string); ok {
						out = append(out, t)
					}
				}
			}
			out = append(out, targets(e)...)
		}
	case []any:
		for _, e := range x {
			out = append(out, targets(e)...)
		}
	}
	return out
}

// filteringTables are the iptables tables whose rules can drop packets
// (nat cannot).
var filteringTables = []string{"raw", "mangle", "filter", "security"}

// FromIptablesSave reads `iptables-save` (tool "iptables") or
// ip6tables-save's: in the filter, raw, mangle and security tables, DROP
// policies of the built-in chains, and DROP or REJECT rules reachable from
// them, outside moat's chains (moatChain: a MOAT-* chain of another table
// is not moat's). Input without table lines is read as
// the filter table.
func FromIptablesSave(tool string, data []byte) []Finding {
	tables := map[string][]string{}
	table := "filter"
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "*") {
			table = strings.TrimPrefix(line, "*")
			continue
		}
		tables[table] = append(tables[table], line)
	}
	var out []Finding
	for _, t := range filteringTables {
		out = append(out, fromTable(tool, t, tables[t])...)
	}
	return out
}

var builtinHook = map[string]string{"PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward", "OUTPUT": "output", "POSTROUTING": "postrouting"}

// fromTable reads one table of iptables-save output.
func fromTable(tool, table string, lines []string) []Finding {
	policies := map[string]string{}
	rules := map[string][][]string{} // chain -> rules' words
	parsed := map[string][]*xrule{}  // chain -> rules read
	var order []string
	for _, line := range lines {
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, ":") && len(f) >= 2:
			name := strings.TrimPrefix(f[0], ":")
			policies[name] = f[1]
			order = append(order, name)
			if parsed[name] == nil {
				parsed[name] = []*xrule{}
			}
		case len(f) >= 2 && f[0] == "-A":
			rules[f[1]] = append(rules[f[1]], f)
			// moat's own chains (100,000 rules) are not read: no bypass
			// starts there.
			if _, ok := moatJumps[table]; ok && !moatChain(table, f[1]) {
				text := strings.TrimSpace(line)
				text = strings.TrimSpace(strings.TrimPrefix(text, "-A "+f[1]))
				parsed[f[1]] = append(parsed[f[1]], parseRule(splitRule(line), text))
			}
		}
	}
	out := bypasses(tool, table, parsed)
	for _, builtin := range []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"} {
		hook := builtinHook[builtin]
		if _, ok := policies[builtin]; !ok {
			continue
		}
		if policies[builtin] == "DROP" {
			tool2 := ""
			switch {
			case hasPrefixChain(order, "ufw-") || hasPrefixChain(order, "ufw6-"): // ip6tables: ufw6-before-input, ...
				tool2 = "ufw"
			case hasPrefixChain(order, "IN_") || hasPrefixChain(order, "INPUT_direct"):
				tool2 = "firewalld"
			case builtin == "FORWARD" && hasPrefixChain(order, "DOCKER"):
				tool2 = "docker"
			}
			out = append(out, Finding{Tool: tool2, Where: fmt.Sprintf("%s %s chain %s", tool, table, builtin), What: "policy DROP", Hooks: []string{hook}})
		}
		// Drops per owner, in the chains reachable from the built-in one.
		byOwner := map[string]int{}
		chainsOf := map[string][]string{}
		seen := map[string]bool{}
		var walk func(chain string)
		walk = func(chain string) {
			if seen[chain] || moatChain(table, chain) {
				return
			}
			seen[chain] = true
			for _, r := range rules[chain] {
				target := ""
				for i := 2; i+1 < len(r); i++ {
					if r[i] == "-j" || r[i] == "-g" {
						target = r[i+1]
					}
				}
				switch target {
				case "DROP", "REJECT":
					o := owner(chain)
					byOwner[o]++
					if !slices.Contains(chainsOf[o], chain) {
						chainsOf[o] = append(chainsOf[o], chain)
					}
				case "", "ACCEPT", "RETURN", "LOG", "NFLOG", "MARK", "CONNMARK", "CT", "TCPMSS", "NOTRACK", "AUDIT":
				default:
					walk(target)
				}
			}
		}
		walk(builtin)
		for _, o := range []string{"", "ufw", "docker", "firewalld"} {
			if n := byOwner[o]; n > 0 {
				out = append(out, Finding{Tool: o, Where: fmt.Sprintf("%s %s chain %s", tool, table, strings.Join(chainsOf[o], ", ")),
					What: count(n, "DROP/REJECT rule"), Hooks: []string{hook}})
			}
		}
	}
	return out
}

func hasPrefixChain(chains []string, prefix string) bool {
	for _, c := range chains {
		if strings.HasPrefix(c, prefix) {
			return true
		}
	}
	return false
}

// owner guesses the tool behind a chain by its name.
func owner(chain string) string {
	switch {
	case strings.HasPrefix(chain, "ufw-"), strings.HasPrefix(chain, "ufw6-"):
		return "ufw"
	case strings.HasPrefix(chain, "DOCKER"):
		return "docker"
	case strings.HasPrefix(chain, "IN_"), strings.HasPrefix(chain, "FWDI_"), strings.HasPrefix(chain, "FWDO_"),
		strings.HasSuffix(chain, "_direct"), strings.HasSuffix(chain, "_ZONES"), strings.HasSuffix(chain, "_ZONES_SOURCE"):
		return "firewalld"
	}
	return ""
}

// group merges findings that say the same (policy and rules of one place).
func group(in []Finding) []Finding {
	var out []Finding
	for _, f := range in {
		merged := false
		for i := range out {
			if out[i].Bypass == "" && f.Bypass == "" && out[i].Where == f.Where && out[i].Tool == f.Tool && slices.Equal(out[i].Hooks, f.Hooks) {
				out[i].What += ", " + f.What
				merged = true
				break
			}
		}
		if !merged {
			out = append(out, f)
		}
	}
	return out
}

func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
