package nft

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/knftables"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/setstore"
)

// SyncChain is a chain of moat's table that records what moat last
// loaded: one rule per chain and set, its comment a hash of what was sent.
// Nothing jumps to it, so no packet ever sees it. It lives and dies with
// the table (a snapshot restores it with the contents it describes), so
// the next apply can send only the difference. A chain rather than a set:
// writing set elements makes nft fetch every element of every set first
// (0.7 s with 100k entries), writing rules does not.
const SyncChain = "moat_sync"

// syncVersion changes whenever the hashes below are computed differently.
const syncVersion = "moat-sync-v2"

type setKind int

const (
	policySet setKind = iota // filled from the policy, replaced on apply
	banSet                   // timeouts, filled by the guard; never flushed
	limitSet                 // dynamic, filled by the kernel
)

// wantChain is one base chain as moat wants it.
type wantChain struct {
	chain *knftables.Chain
	rules []*knftables.Rule
	hash  string
}

// wantSet is one named set as moat wants it.
type wantSet struct {
	set    *knftables.Set
	kind   setKind
	src    *ruleset.Set // policy sets: where the elements come from
	merged []netip.Prefix
	def    string // hash of the definition
	data   string // hash of the elements
}

// desired is moat's whole table for a ruleset, object by object, in the
// order objects are written.
type desired struct {
	comment string // the table's
	chains  []*wantChain
	sets    []*wantSet
}

func hash(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// entriesHash identifies a policy set's entries cheaply and whatever their
// order (setstore.EntriesHash), so a set whose entries did not change
// sends nothing.
func entriesHash(s *ruleset.Set) string { return setstore.EntriesHash(s.Entries) }

// elems are a policy set's networks, merged and sorted, as the kernel
// gets them (computed when the set is sent).
func (w *wantSet) elems() []netip.Prefix {
	if w.merged == nil && w.src != nil {
		ps := make([]netip.Prefix, len(w.src.Entries))
		for i, e := range w.src.Entries {
			ps[i] = e.Prefix
		}
		w.merged = setstore.Merge(ps)
	}
	return w.merged
}

// setDef is the nftables set that holds a ruleset set.
func setDef(s *ruleset.Set) (*knftables.Set, setKind) {
	typ := "ipv4_addr"
	if s.Family == policy.FamilyV6 {
		typ = "ipv6_addr"
	}
	if s.Bans {
		// Never flushed: bans outlive a re-apply. Dynamic, so the port
		// scan trap can add to it from the packet path (nft makes a set it
		// sees so used dynamic, and a set's flags never change), with an
		// explicit size (a dynamic set's default is 65535).
		comment := "bans: 'moat bans' lists them"
		if s.Name == ruleset.LoginSet4 || s.Name == ruleset.LoginSet6 {
			comment = "port scan trap: addresses the guard saw log in over SSH"
		}
		return &knftables.Set{Name: s.Name, Type: typ, Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
			Size: knftables.PtrTo[uint64](MaxBans), Comment: knftables.PtrTo(comment)}, banSet
	}
	comment := "policy addresses: 'moat status' names their lines"
	if s.Protect {
		comment = "allowlist and SSH sessions at apply: never dropped before conntrack nor trapped"
	}
	return &knftables.Set{Name: s.Name, Type: typ, Flags: []knftables.SetFlag{knftables.IntervalFlag},
		Comment: knftables.PtrTo(comment)}, policySet
}

// objectText renders one knftables object as its add command, for hashing.
func objectText(objs ...knftables.Object) string {
	tx := knftables.NewFake(knftables.InetFamily, TableName).NewTransaction()
	for _, o := range objs {
		tx.Add(o)
	}
	return tx.String()
}

// want computes the table moat wants for rs.
func want(rs *ruleset.Ruleset) *desired {
	d := &desired{comment: rs.SourceComment()}
	for _, s := range rs.Sets {
		if s.ScanWindow > 0 {
			for _, ts := range trapSets(s) {
				d.sets = append(d.sets, &wantSet{set: ts, kind: limitSet, def: hash(objectText(ts))})
			}
			continue
		}
		set, kind := setDef(s)
		w := &wantSet{set: set, kind: kind, def: hash(objectText(set))}
		if kind == policySet {
			w.src = s
			w.data = entriesHash(s)
		}
		d.sets = append(d.sets, w)
	}
	seen := map[string]bool{}
	for _, c := range rs.Chains {
		name := string(c.Hook)
		pol := knftables.AcceptPolicy
		if c.Default != ruleset.Accept {
			pol = knftables.DropPolicy
		}
		wc := &wantChain{chain: &knftables.Chain{
			Name:     name,
			Type:     knftables.PtrTo(knftables.FilterType),
			Hook:     knftables.PtrTo(hookOf[c.Hook]),
			Priority: knftables.PtrTo(chainPriority(c.Hook)),
			Policy:   knftables.PtrTo(pol),
		}}
		parts := []string{objectText(wc.chain)}
		var gates map[int]gate
		if !rs.Ungated { // the earlier layout (ruleset.CompileEarlierOrder)
			gates = gateRuns(c.Rules)
		}
		var subs []*wantChain
		var sub *wantChain // the gated chain being filled, up to subEnd
		subEnd := -1
		for i := range c.Rules {
			r := &c.Rules[i]
			if g, ok := gates[i]; ok {
				sub = &wantChain{chain: &knftables.Chain{Name: name + "_" + g.name,
					Comment: knftables.PtrTo("built-ins for " + g.what + ", jumped to from " + name)}}
				subEnd = g.end
				subs = append(subs, sub)
				wc.rules = append(wc.rules, &knftables.Rule{Chain: name, Rule: g.text + " jump " + sub.chain.Name,
					Comment: knftables.PtrTo("gate:" + g.name)})
			}
			into := wc
			if i < subEnd {
				into = sub
			}
			if r.Limit != nil {
				for _, fam := range limitFamilies(r) {
					name := limitSetName(r, fam)
					if seen[name] {
						continue
					}
					seen[name] = true
					typ := "ipv4_addr"
					if fam == policy.FamilyV6 {
						typ = "ipv6_addr"
					}
					set := &knftables.Set{Name: name, Type: typ,
						Flags:   []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
						Timeout: knftables.PtrTo(limitTimeout(r.Limit)), Size: knftables.PtrTo[uint64](65535),
						Comment: knftables.PtrTo("per-source rate of " + r.Origin.ID)}
					d.sets = append(d.sets, &wantSet{set: set, kind: limitSet, def: hash(objectText(set))})
				}
			}
			for _, text := range RuleTexts(r) {
				into.rules = append(into.rules, &knftables.Rule{Chain: into.chain.Name, Rule: text, Comment: knftables.PtrTo(r.Tag())})
			}
		}
		def := ruleset.Rule{Verdict: c.Default, Origin: c.DefaultOrigin}
		for _, text := range RuleTexts(&def) {
			if !c.HasDefault() {
				break
			}
			wc.rules = append(wc.rules, &knftables.Rule{Chain: name, Rule: text, Comment: knftables.PtrTo(def.Tag())})
		}
		for _, r := range wc.rules {
			parts = append(parts, r.Rule, *r.Comment)
		}
		wc.hash = hash(parts...)
		d.chains = append(d.chains, wc)
		for _, sc := range subs {
			parts := []string{objectText(sc.chain)}
			for _, r := range sc.rules {
				parts = append(parts, r.Rule, *r.Comment)
			}
			sc.hash = hash(parts...)
			d.chains = append(d.chains, sc)
		}
	}
	return d
}

// gate is a run of built-in rules that only a few packets can match,
// moved into a chain of their own behind one rule that lets only those
// packets in: a TCP or UDP packet to a service then passes one rule
// instead of five (ICMP, ICMPv6, MLD, neighbour discovery) or two (DHCP,
// DHCPv6). A jump changes no verdict: an accept or drop in the jumped-to
// chain is final, and a packet it does not decide comes back to the rule
// after the gate. BenchmarkPacketRate measures what it saves.
type gate struct {
	name, what string // the chain's suffix; what it holds, for its comment
	text       string // the gate's match
	end        int    // index of the first rule after the run
}

// gateRuns finds the runs of two or more consecutive built-in rules that
// all match only ICMP and ICMPv6, or all only UDP from given source
// ports, keyed by the index of each run's first rule.
func gateRuns(rules []ruleset.Rule) map[int]gate {
	kind := func(r *ruleset.Rule) string {
		if !strings.HasPrefix(r.Origin.ID, "builtin:") || r.Limit != nil || r.Trap != nil || len(r.Match.Protos) == 0 {
			return ""
		}
		m := r.Match
		if !slices.ContainsFunc(m.Protos, func(p string) bool { return p != "icmp" && p != "ipv6-icmp" }) {
			return "icmp"
		}
		if len(m.Protos) == 1 && m.Protos[0] == "udp" && len(m.SPorts) > 0 {
			return "udp"
		}
		return ""
	}
	out := map[int]gate{}
	used := map[string]int{}
	for i := 0; i < len(rules); {
		k := kind(&rules[i])
		j := i + 1
		for j < len(rules) && k != "" && kind(&rules[j]) == k {
			j++
		}
		if k == "" || j-i < 2 {
			i = j
			continue
		}
		g := gate{end: j}
		switch k {
		case "icmp":
			var protos []string
			for _, r := range rules[i:j] {
				for _, p := range r.Match.Protos {
					if !slices.Contains(protos, p) {
						protos = append(protos, p)
					}
				}
			}
			slices.Sort(protos)
			g.name, g.what, g.text = "icmp", "ICMP and ICMPv6", "meta l4proto "+set(protos)
		case "udp":
			var ports policy.Ports
			for _, r := range rules[i:j] {
				for _, p := range r.Match.SPorts {
					if !slices.Contains(ports, p) {
						ports = append(ports, p)
					}
				}
			}
			slices.SortFunc(ports, func(a, b policy.PortRange) int { return int(a.First) - int(b.First) })
			g.name, g.what, g.text = "udp", "UDP from their source ports", "udp sport "+portList(ports)
		}
		if n := used[k]; n > 0 {
			g.name += strconv.Itoa(n + 1)
		}
		used[k]++
		out[i] = g
		i = j
	}
	return out
}

// record is what the sync set holds: key ("chain input", "set ban4") to
// hash ("DEF" for sets without policy elements, "DEF DATA" for policy
// sets, the rules' hash for chains).
type record map[string]string

func (d *desired) record() record {
	r := record{}
	for _, c := range d.chains {
		r["chain "+c.chain.Name] = c.hash
	}
	for _, s := range d.sets {
		v := s.def
		if s.kind == policySet {
			v += " " + s.data
		}
		r["set "+s.set.Name] = v
	}
	return r
}

// rules are the sync chain's rules for a record, in a stable order.
func (r record) rules() []*knftables.Rule {
	keys := make([]string, 0, len(r))
	for k := range r {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := []*knftables.Rule{{Chain: SyncChain, Rule: "return", Comment: knftables.PtrTo(syncVersion)}}
	for _, k := range keys {
		out = append(out, &knftables.Rule{Chain: SyncChain, Rule: "return", Comment: knftables.PtrTo(k + " " + r[k])})
	}
	return out
}

// parseRecord reads the sync chain's rule comments back; ok is false
// when they are not a record this version of moat wrote.
func parseRecord(comments []string) (record, bool) {
	r := record{}
	version := false
	for _, c := range comments {
		if c == syncVersion {
			version = true
			continue
		}
		f := strings.Fields(c)
		if len(f) < 3 {
			return nil, false
		}
		r[f[0]+" "+f[1]] = strings.Join(f[2:], " ")
	}
	return r, version
}

var syncChainDef = &knftables.Chain{Name: SyncChain,
	Comment: knftables.PtrTo("what moat loaded (hashes), for partial updates; never jumped to")}

// Plan is one nftables transaction, in order: knftables objects and raw
// commands that knftables cannot write (a set created with all its
// elements, element lists). The kernel builds an interval set from one
// list in one go, where one command per element makes it quadratic, and
// nft needs half the memory for a set declared with its elements.
type Plan struct {
	newTx func() *knftables.Transaction
	// script: raw commands are kept as text; otherwise (an Interface that
	// runs transactions itself, knftables.Fake) they become objects.
	script bool
	parts  []any // *knftables.Transaction or string
	// Full is true when the plan rewrites the whole table.
	Full bool
	// dropped: the plan (a patch) deletes sets.
	dropped bool
	// nl, when set, is the whole plan as a netlink transaction, to be
	// committed only at ruleset generation gen.
	nl  *batch
	gen uint32
	// wrote names the chains nl flushes and refills (or sets the policy
	// of), moat_sync among them.
	wrote []string
	// save is what the plan loads into policy sets, for the element store.
	save map[string]StoredSet
	// want is the table the plan makes.
	want *desired
	// pre, when set, is the stage (stage.go): a netlink transaction,
	// committed first at generation gen, that creates the table and the
	// sets in staged filled; the plan only declares those sets.
	pre    *batch
	staged map[string]bool
	// oddChains and oddSets are objects of moat's table, none of moat's,
	// whose names nft's parser cannot take (scriptName): made over
	// netlink by someone else, they are left out of the script (where
	// they broke every whole rewrite, or wrote their text into it as
	// commands) and removed over netlink around its commit (removeOdd).
	oddChains, oddSets []string
}

// loaded notes what a policy set is loaded with, for the element store.
func (p *Plan) loaded(s *wantSet) {
	if p.save == nil {
		p.save = map[string]StoredSet{}
	}
	ps := s.elems()
	p.save[s.set.Name] = StoredSet{Data: s.data, Prefixes: ps, Ranges: prefixesHash(ps)}
}

func newPlan(newTx func() *knftables.Transaction, script bool) *Plan {
	return &Plan{newTx: newTx, script: script}
}

// tx is the transaction to add objects to: the last part, or a new one.
func (p *Plan) tx() *knftables.Transaction {
	if n := len(p.parts); n > 0 {
		if tx, ok := p.parts[n-1].(*knftables.Transaction); ok {
			return tx
		}
	}
	tx := p.newTx()
	p.parts = append(p.parts, tx)
	return tx
}

// addSet creates a set with its elements in one command.
func (p *Plan) addSet(set *knftables.Set, items []string) {
	if !p.script || len(items) == 0 {
		p.tx().Add(set)
		p.elements("add", set.Name, items)
		return
	}
	def := strings.TrimSuffix(strings.TrimSpace(objectText(set)), "}")
	p.parts = append(p.parts, def+"elements = { "+strings.Join(items, ", ")+" } ; }\n")
}

// elements adds or deletes many elements of a set in one command.
func (p *Plan) elements(verb, set string, items []string) {
	if len(items) == 0 {
		return
	}
	if !p.script {
		tx := p.tx()
		for _, item := range items {
			el := &knftables.Element{Set: set, Key: []string{item}}
			if verb == "delete" {
				tx.Delete(el)
			} else {
				tx.Add(el)
			}
		}
		return
	}
	p.parts = append(p.parts, fmt.Sprintf("%s element inet %s %s { %s }\n", verb, TableName, set, strings.Join(items, ", ")))
}

// Empty says whether the plan changes nothing.
func (p *Plan) Empty() bool {
	for _, part := range p.parts {
		if tx, ok := part.(*knftables.Transaction); !ok || tx.NumOperations() > 0 {
			return false
		}
	}
	return true
}

// Script is the plan as `nft -f` input.
func (p *Plan) Script() string {
	var b strings.Builder
	for _, part := range p.parts {
		switch v := part.(type) {
		case *knftables.Transaction:
			b.WriteString(v.String())
		case string:
			b.WriteString(v)
		}
	}
	return b.String()
}

// single is the plan as one transaction (for a plan built without script).
func (p *Plan) single() *knftables.Transaction {
	return p.tx()
}

// prefixStrings writes networks as nft does: a single address bare.
func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		if p.IsSingleIP() {
			out[i] = p.Addr().String()
		} else {
			out[i] = p.String()
		}
	}
	return out
}

// fullPlan rewrites moat's table whole in one transaction: chains flushed
// and refilled, policy and limit sets re-created and filled with one
// element list each, ban sets kept with their bans, objects the ruleset no
// longer has deleted. existing lists the table's objects by type.
func fullPlan(p *Plan, d *desired, existing map[string][]string) *Plan {
	return fullPlanMigrating(p, d, existing, nil)
}

// fullPlanMigrating is fullPlan that also re-creates the ban sets named in
// migrate (their definition changed: a set's flags cannot change in place)
// and puts their bans back (elements as 'ADDR timeout Ns comment "..."').
func fullPlanMigrating(p *Plan, d *desired, existing map[string][]string, migrate map[string][]string) *Plan {
	p.Full = true
	tx := p.tx()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo(d.comment)})
	wantChains := map[string]bool{}
	for _, c := range d.chains {
		wantChains[c.chain.Name] = true
	}
	wantChains[SyncChain] = true
	for _, c := range d.chains {
		tx.Add(c.chain)
		tx.Flush(&knftables.Chain{Name: c.chain.Name})
	}
	has := map[string]map[string]bool{"chain": {}, "set": {}}
	for typ := range has {
		for _, n := range existing[typ] {
			has[typ][n] = true
		}
	}
	// Other chains (none of moat's own, but a table is moat's whole) are
	// emptied first so no rule refers to a set deleted below.
	var stale []string
	for _, n := range existing["chain"] {
		if !wantChains[n] {
			stale = append(stale, n)
		}
	}
	slices.Sort(stale)
	for _, n := range stale {
		tx.Flush(&knftables.Chain{Name: n})
	}
	wantSets := map[string]bool{}
	for _, s := range d.sets {
		wantSets[s.set.Name] = true
	}
	var staleSets []string
	for _, n := range existing["set"] {
		if !wantSets[n] {
			staleSets = append(staleSets, n)
		}
	}
	slices.Sort(staleSets)
	for _, n := range staleSets {
		tx.Delete(&knftables.Set{Name: n})
	}
	for _, n := range stale {
		tx.Delete(&knftables.Chain{Name: n})
	}
	for _, s := range d.sets {
		bans, migrating := migrate[s.set.Name]
		if (s.kind != banSet || migrating) && has["set"][s.set.Name] {
			// Re-created, so a changed definition takes effect (the
			// kernel ignores a changed comment or timeout on "add").
			p.tx().Delete(&knftables.Set{Name: s.set.Name})
		}
		if s.kind == policySet {
			if p.staged[s.set.Name] {
				p.tx().Add(s.set)
			} else {
				p.addSet(s.set, prefixStrings(s.elems()))
			}
			p.loaded(s)
		} else {
			p.tx().Add(s.set)
		}
		if migrating {
			p.elements("add", s.set.Name, bans)
		}
	}
	tx = p.tx()
	tx.Add(syncChainDef)
	tx.Flush(syncChainDef)
	for _, r := range d.record().rules() {
		tx.Add(r)
	}
	for _, c := range d.chains {
		for _, r := range c.rules {
			tx.Add(r)
		}
	}
	return p
}

// canPatch says whether the table recorded as old can be turned into d by
// patching: the same chains; the sets it keeps with the same definitions;
// sets it gains or loses only policy sets and rate-limit sets (addedSets,
// removedSets), never a ban set or the port scan trap's.
func canPatch(d *desired, old record) bool {
	chains := map[string]bool{}
	for _, c := range d.chains {
		if _, ok := old["chain "+c.chain.Name]; !ok {
			return false
		}
		chains[c.chain.Name] = true
	}
	sets := map[string]bool{}
	for _, s := range d.sets {
		sets[s.set.Name] = true
		v, ok := old["set "+s.set.Name]
		if !ok {
			if !addable(s) {
				return false
			}
			continue
		}
		def, _, _ := strings.Cut(v, " ")
		if def != s.def {
			return false
		}
	}
	for k, v := range old {
		typ, name, _ := strings.Cut(k, " ")
		switch {
		case typ == "chain" && chains[name], typ == "set" && sets[name]:
		case typ == "set" && removable(name, v):
		default:
			return false
		}
	}
	return true
}

// addable says whether a patch may create s: a policy set, or a rate
// limit's set, of a definition batch.newSet writes as nft does.
func addable(s *wantSet) bool {
	if s.kind != policySet && !(s.kind == limitSet && strings.HasPrefix(s.set.Name, "limit_")) {
		return false
	}
	return (&batch{}).newSet(s.set, 1)
}

// removable says whether a patch may delete the set recorded as name with
// value v: a policy set (recorded with its entries' hash) or a rate
// limit's set.
func removable(name, v string) bool {
	return strings.Contains(v, " ") || strings.HasPrefix(name, "limit_")
}

// addedSets lists d's sets the record does not have, in d's order.
func addedSets(d *desired, old record) []*wantSet {
	var out []*wantSet
	for _, s := range d.sets {
		if _, ok := old["set "+s.set.Name]; !ok {
			out = append(out, s)
		}
	}
	return out
}

// removedSets lists the record's sets d does not have, sorted.
func removedSets(d *desired, old record) []string {
	want := map[string]bool{}
	for _, s := range d.sets {
		want[s.set.Name] = true
	}
	var out []string
	for k := range old {
		if name, ok := strings.CutPrefix(k, "set "); ok && !want[name] {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// changedSets lists the policy sets the record has whose elements differ
// from it.
func changedSets(d *desired, old record) []*wantSet {
	var out []*wantSet
	for _, s := range d.sets {
		v, ok := old["set "+s.set.Name]
		if ok && s.kind == policySet && v != s.def+" "+s.data {
			out = append(out, s)
		}
	}
	return out
}

// maxDeletes is how many element deletes a patch sends before it
// replaces the set instead: nft (1.0.6) fetches the whole set for the
// first delete from an interval set and spends tens of milliseconds per
// further one, while flushing and re-adding costs one set load.
const maxDeletes = 8

// patchPlan sends only what differs from the record: chains whose rules
// changed are flushed and refilled, and policy sets whose elements
// changed get element adds (and a few deletes) when current holds their
// elements as the kernel has them, else are flushed and refilled with one
// element list, in the same transaction. The record is rewritten.
// Nothing changed: an empty plan.
func patchPlan(p *Plan, d *desired, old record, current map[string][]netip.Prefix) *Plan {
	tx := p.tx()
	var changed []*wantChain
	for _, c := range d.chains {
		if old["chain "+c.chain.Name] != c.hash {
			changed = append(changed, c)
			tx.Add(c.chain)
			tx.Flush(&knftables.Chain{Name: c.chain.Name})
		}
	}
	// Sets gone (their rules went with the chains flushed above), sets
	// new (a first rate limit, a first `deny from`), filled.
	removed, added := removedSets(d, old), addedSets(d, old)
	for _, n := range removed {
		p.tx().Delete(&knftables.Set{Name: n})
		p.dropped = true
	}
	for _, s := range added {
		if s.kind == policySet {
			p.addSet(s.set, prefixStrings(s.elems()))
			p.loaded(s)
		} else {
			p.tx().Add(s.set)
		}
	}
	sets := changedSets(d, old)
	for _, s := range sets {
		have, ok := current[s.set.Name]
		if ok {
			del, add := diffPrefixes(have, s.elems())
			if len(del) <= maxDeletes {
				p.elements("delete", s.set.Name, prefixStrings(del))
				p.elements("add", s.set.Name, prefixStrings(add))
				continue
			}
		}
		p.tx().Flush(s.set)
		p.elements("add", s.set.Name, prefixStrings(s.elems()))
		p.loaded(s)
	}
	if len(changed) == 0 && len(sets) == 0 && len(removed) == 0 && len(added) == 0 {
		return p
	}
	tx = p.tx()
	tx.Flush(syncChainDef)
	for _, r := range d.record().rules() {
		tx.Add(r)
	}
	for _, c := range changed {
		for _, r := range c.rules {
			tx.Add(r)
		}
	}
	return p
}

// diffPrefixes returns what to delete from old and add to it to get new.
func diffPrefixes(old, new []netip.Prefix) (del, add []netip.Prefix) {
	in := make(map[netip.Prefix]bool, len(old))
	for _, p := range old {
		in[p] = true
	}
	keep := make(map[netip.Prefix]bool, len(new))
	for _, p := range new {
		keep[p] = true
		if !in[p] {
			add = append(add, p)
		}
	}
	for _, p := range old {
		if !keep[p] {
			del = append(del, p)
		}
	}
	slices.SortFunc(del, setstore.ComparePrefix)
	return del, add
}
