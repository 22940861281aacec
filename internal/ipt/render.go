// Package ipt renders a ruleset for iptables: moat's own chains (MOAT-INPUT,
// MOAT-OUTPUT, MOAT-FORWARD) loaded with one iptables-restore --noflush and
// one ip6tables-restore --noflush (with iptables-nft's tools, written by
// moat over netlink in one transaction instead: rulesnl.go), and address
// sets loaded with ipset restore. It works with both iptables-nft and
// iptables-legacy.
package ipt

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/netmerge"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/setstore"
)

// ChainName is moat's chain for a hook.
func ChainName(h ruleset.Hook) string { return "MOAT-" + strings.ToUpper(string(h)) }

var builtinChain = map[ruleset.Hook]string{ruleset.Input: "INPUT", ruleset.Output: "OUTPUT", ruleset.Forward: "FORWARD", ruleset.Prerouting: "PREROUTING"}

// Tables moat writes: the raw table's PREROUTING runs before conntrack
// (the drops of banned and blocklisted sources), filter holds the rest.
const (
	tableRaw    = "raw"
	tableFilter = "filter"
)

// tables lists them in the order they are restored.
var tables = []string{tableRaw, tableFilter}

func tableOfHook(h ruleset.Hook) string {
	if h == ruleset.Prerouting {
		return tableRaw
	}
	return tableFilter
}

// tableOf is the table of a moat chain or of the built-in chain that
// jumps to one (MOAT-PREROUTING and PREROUTING: raw).
func tableOf(chain string) string {
	if strings.TrimPrefix(chain, "MOAT-") == "PREROUTING" {
		return tableRaw
	}
	return tableFilter
}

// MaxBans bounds each family's ban set.
const MaxBans = 1 << 20

// SetPrefix starts the name of every ipset moat owns.
const SetPrefix = "moat-"

// IPSetName is the ipset that holds a ruleset set.
func IPSetName(name string) string { return SetPrefix + name }

var protoNumbers = map[string]string{"esp": "50", "ah": "51", "gre": "47", "igmp": "2", "vrrp": "112", "ipv6": "41"}

// Names maps a ruleset set to the ipset that holds it.
type Names map[string]string

// SetNames are the ipsets of rs. A policy set keeps its name while its
// contents change (moat-NAME, or moat- and a hash of NAME when that would
// be too long for ipset): a change of its networks is sent as the
// networks added and deleted (Apply), and MOAT-GEN records which contents
// each set holds. Ban sets keep fixed names and their contents.
func SetNames(rs *ruleset.Ruleset) Names {
	n := Names{}
	for _, s := range rs.Sets {
		if s.Bans {
			n[s.Name] = IPSetName(s.Name)
			continue
		}
		if s.ScanWindow > 0 {
			// Filled by the kernel; a new window is a new set.
			n[s.Name] = IPSetName(fmt.Sprintf("%s-%d", s.Name, int64(s.ScanWindow/time.Second)))
			continue
		}
		n[s.Name] = policySetName(s.Name)
	}
	return n
}

// policySetName is the ipset of a policy set: its temporary twin
// (moatnew-...) must fit ipset's 31 characters too.
func policySetName(name string) string {
	if len(SetPrefix+name) <= 28 && !strings.ContainsAny(name, " \t") {
		return SetPrefix + name
	}
	h := sha256.Sum256([]byte(name))
	return SetPrefix + hex.EncodeToString(h[:])[:12]
}

// contentHash identifies a policy set by its family and entries, whatever
// their order (no merge: it is computed for every set at every apply).
func contentHash(s *ruleset.Set) string {
	return string(s.Family) + setstore.EntriesHash(s.Entries)[:20]
}

// merged are a policy set's networks, merged and sorted.
// minMaxelem is the smallest maxelem of a policy ipset.
const minMaxelem = 65536

func merged(s *ruleset.Set) []netip.Prefix {
	ps := make([]netip.Prefix, len(s.Entries))
	for i, e := range s.Entries {
		ps[i] = e.Prefix
	}
	// Merged already (a blocklist, addresses apart): as it is, not
	// copied again (3 MB at 100,000 networks).
	out := ps
	if !netmerge.IsMerged(ps) {
		out = setstore.Merge(ps)
	}
	// hash:net holds no /0 (its smallest CIDR is 1): networks that merge
	// into the whole address space are loaded as its two halves.
	if len(out) == 1 && out[0].Bits() == 0 {
		lo := netip.PrefixFrom(out[0].Addr(), 1)
		out = []netip.Prefix{lo, netip.PrefixFrom(setstore.LastAddr(lo).Next(), 1)}
	}
	return out
}

// contents are the content hashes of rs's policy sets, by ipset name.
type contents map[string]string

func contentsOf(rs *ruleset.Ruleset, names Names) contents {
	c := contents{}
	for _, s := range rs.Sets {
		if !s.Bans && s.ScanWindow == 0 {
			c[names.of(s.Name)] = contentHash(s)
		}
	}
	return c
}

// GenChain holds rules whose comments name the generation of moat's rules
// in that family and the contents of each policy set (a hash of its
// networks). No packet goes through it (nothing jumps to it); two
// families with different generations mean an apply was cut between them.
const GenChain = "MOAT-GEN"

const (
	genTag   = "moat:gen"
	rulesTag = "moat:rules"
	setTag   = "moat:set"
	// dirty is the generation while sets are being changed in place: a
	// set without its record in MOAT-GEN is loaded whole next time.
	dirty = "changing"
	// rewriting is the generation while a family's rules are being
	// rewritten: iptables-restore commits the raw table before filter
	// (one nf_tables transaction, or one table blob, each), so a moat
	// killed between the two leaves raw at the new rules and MOAT-GEN,
	// in filter, at the old ones. With no rules record beside it, the
	// next apply rewrites the family whole (markRewriting).
	rewriting = "rewriting"
)

// Generation is a hash of both families' rules of rs (set names included)
// and of its policy sets' contents.
func Generation(rs *ruleset.Ruleset, names Names) string {
	return generation(rs, names, contentsOf(rs, names))
}

func generation(rs *ruleset.Ruleset, names Names, c contents) string {
	return generationOf(rulesHash(rs, names), c)
}

// generationOf is generation of the rules whose rulesHash is rh.
func generationOf(rh string, c contents) string {
	h := sha256.New()
	h.Write([]byte(rh))
	for _, name := range sortedKeys(c) {
		fmt.Fprintf(h, "set %s %s\n", name, c[name])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// rulesHash is a hash of both families' rules of rs (set names included).
func rulesHash(rs *ruleset.Ruleset, names Names) string {
	h := sha256.New()
	for _, f := range []policy.Family{policy.FamilyV4, policy.FamilyV6} {
		for _, t := range tables {
			h.Write([]byte(body(rs, f, names, t)))
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// genChainRules is the MOAT-GEN chain: the generation, the hash of the
// rules, and the contents of each policy set.
func genChainRules(gen, rules string, c contents) string {
	var b strings.Builder
	fmt.Fprintf(&b, ":%s - [0:0]\n", GenChain)
	for _, comment := range genComments(gen, rules, c) {
		fmt.Fprintf(&b, "-A %s -m comment --comment \"%s\" -j RETURN\n", GenChain, comment)
	}
	return b.String()
}

// genComments are the comments of MOAT-GEN's rules, in order.
func genComments(gen, rules string, c contents) []string {
	out := []string{genTag + " " + gen}
	if rules != "" {
		out = append(out, rulesTag+" "+rules)
	}
	for _, name := range sortedKeys(c) {
		out = append(out, setTag+" "+name+" "+c[name])
	}
	return out
}

// Render writes the iptables-restore input that makes moat's chains of one
// family hold rs. haveJump says which built-in chains already jump to
// moat's, and how; the others get a jump inserted first, and a jump of
// another form is replaced where it stands.
func Render(rs *ruleset.Ruleset, fam policy.Family, haveJump map[string]Jump) string {
	names := SetNames(rs)
	c := contentsOf(rs, names)
	return render(rs, fam, haveJump, names, generation(rs, names, c), c)
}

// Jump is a built-in chain's jump into moat's chain: its condition (""
// for none; one of jumpConds, or another made by hand) and its position
// in the built-in chain (from 1).
type Jump struct {
	Cond string `json:"cond"`
	Pos  int    `json:"pos"`
	// Extra are the conditions of further jumps from the same chain (an
	// earlier moat, run after a later one, added its own beside it; one
	// made by hand), in their order: each is deleted at the next apply.
	Extra []string `json:"extra,omitempty"`
}

// The conditions moat's jumps carry, as iptables-save prints them. Each
// lets past moat's chain only packets that chain would let past anyway,
// at the cost of one match in the built-in chain instead of a jump, a
// rule and a return (iptables-nft: the jump and the return are most of
// what moat's chains cost an accepted packet beyond a hand-written
// ruleset; see docs/benchmarks.md).
const (
	// jumpNotEstablished: packets of established connections skip
	// MOAT-INPUT (OUTPUT, FORWARD), whose first rule would return them
	// (the built-in established accept, which is then left out of the
	// chain: it has no counter to show on nftables either).
	jumpNotEstablished = "-m conntrack ! --ctstate RELATED,ESTABLISHED"
	// jumpNotLoopback: loopback skips MOAT-PREROUTING, whose drops all
	// spare it (then left out of each drop: one interface-name compare
	// per packet instead of one per list).
	jumpNotLoopback = "! -i lo"
)

// The early lists: per family an ipset list:set of the sets whose
// sources MOAT-PREROUTING drops (the ban set and every blocklist's).
// The raw jump is taken only by a source in one of them
// (jumpEarlyList), so a packet from an unlisted source pays the set
// lookups alone, as in a hand-written ruleset, and no jump, interface
// compare nor return (docs/benchmarks.md); the drops keep every
// exemption ('! -i lo', the protected set, forwarded packets). Apply
// adds a list's set to it before any rule drops by that set, and takes
// it out before the set is destroyed.
const (
	earlyKey4 = "early4" // Names key; the ipset is moat-early4 (moatchk... in a check)
	earlyKey6 = "early6"
	// earlySize is the most members an early list holds (ipset list:set
	// size); a policy with more blocklists keeps the '! -i lo' jump.
	earlySize = 64
)

// earlyKey is the Names key of fam's early list.
func earlyKey(fam policy.Family) string {
	if fam == policy.FamilyV6 {
		return earlyKey6
	}
	return earlyKey4
}

// jumpEarlyList is the condition of the raw jump gated by the early list
// named list.
func jumpEarlyList(list string) string { return "-m set --match-set " + list + " src" }

// jumpConds are the jump forms moat knows as its own.
var jumpConds = []string{"", jumpNotEstablished, jumpNotLoopback, jumpEarlyList(IPSetName(earlyKey4)), jumpEarlyList(IPSetName(earlyKey6))}

// jumpSpec is a jump's rule after its chain: "COND -j MOAT-CHAIN".
func jumpSpec(builtin, cond string) string {
	return join(cond, "-j MOAT-"+builtin)
}

// ParseJump reads a line "-A BUILTIN [COND] -j MOAT-BUILTIN": a jump
// from a built-in chain into moat's chain of the same hook, as
// iptables-save prints it. cond is "" for the plain jump; it is one of
// moat's forms (KnownJump), or another condition, made by hand: moat's
// chains rely on their jump's condition (MOAT-INPUT lacks the
// established accept its jump stands for), so every such jump is moat's
// to replace, report and remove, whatever its condition.
func ParseJump(line string) (builtin, cond string, ok bool) { return parseJump(line) }

// KnownJump says whether cond is the condition of one of moat's jump
// forms.
func KnownJump(cond string) bool { return slices.Contains(jumpConds, cond) }

func parseJump(line string) (builtin, cond string, ok bool) {
	rest, ok := strings.CutPrefix(line, "-A ")
	if !ok || strings.ContainsAny(line, "\r\n") {
		return "", "", false // one line of a restore script, never two
	}
	builtin, rest, ok = strings.Cut(rest, " ")
	if !ok || builtin == "" || strings.HasPrefix(builtin, "MOAT-") {
		return "", "", false
	}
	target := "-j MOAT-" + builtin
	if rest == target {
		return builtin, "", true
	}
	cond, ok = strings.CutSuffix(rest, " "+target)
	if !ok || strings.TrimSpace(cond) == "" || cond != strings.TrimSpace(cond) {
		return "", "", false
	}
	return builtin, cond, true
}

// writeJump writes the restore lines that leave builtin with one jump,
// of form cond, where its first jump (have, when there) stood. Every
// jump there is deleted (-D deletes the first rule that matches: a
// jump inserted before a deletion of the same form would be the one
// deleted, moat's jump then behind the rules that stood between), the
// last first, then moat's is inserted at the first one's place: the
// rules before it are untouched, so it follows the same rules as
// before, in the same commit (no packet sees neither or both).
func writeJump(b *strings.Builder, builtin, cond string, have Jump, there bool) {
	switch {
	case !there:
		fmt.Fprintf(b, "-I %s 1 %s\n", builtin, jumpSpec(builtin, cond))
		return
	case have.Cond == cond && len(have.Extra) == 0:
		return
	}
	for i := len(have.Extra) - 1; i >= 0; i-- {
		fmt.Fprintf(b, "-D %s %s\n", builtin, jumpSpec(builtin, have.Extra[i]))
	}
	fmt.Fprintf(b, "-D %s %s\n-I %s %d %s\n", builtin, jumpSpec(builtin, have.Cond), builtin, max(have.Pos, 1), jumpSpec(builtin, cond))
}

// jumpCond is the condition on the jump into c's chain for family fam,
// and whether the chain leaves out its first rule (the built-in the
// condition stands for). A chain that starts with anything but the plain
// established accept (logging every packet, say) gets a plain jump, as
// does every chain of the earlier layout (PlainJumps). The raw jump is
// gated by the family's early list when every rule of MOAT-PREROUTING
// that does more than let a packet past drops by a source set
// (earlyMembers), else it lets only loopback past (as did the layout
// before the early lists: LoopbackRawJump).
func jumpCond(rs *ruleset.Ruleset, c *ruleset.Chain, fam policy.Family, names Names) (cond string, skipFirst bool) {
	if rs.PlainJumps {
		return "", false
	}
	if c.Hook == ruleset.Prerouting {
		if _, ok := earlyMembers(rs, c, fam, names); ok {
			return jumpEarlyList(names.of(earlyKey(fam))), false
		}
		for i := range c.Rules {
			r := &c.Rules[i]
			if r.Log != "" || r.Limit != nil || r.Trap != nil || (r.Verdict != ruleset.Accept && r.NotInIface != "lo") {
				return "", false
			}
		}
		return jumpNotLoopback, false
	}
	if len(c.Rules) > 0 && establishedAccept(&c.Rules[0]) {
		return jumpNotEstablished, true
	}
	return "", false
}

// earlyMembers are the ipsets fam's early list holds for the prerouting
// chain c (the source sets of its drops, in order), and whether the raw
// jump can be gated by it: every rule of fam does nothing but let a
// packet past (a packet that skips the chain goes past anyway) or drop a
// source in one of those sets (a packet from no set matches none), and
// there is at least one and at most earlySize.
func earlyMembers(rs *ruleset.Ruleset, c *ruleset.Chain, fam policy.Family, names Names) ([]string, bool) {
	if rs.PlainJumps || rs.LoopbackRawJump || c == nil || c.Hook != ruleset.Prerouting {
		return nil, false
	}
	var out []string
	for i := range c.Rules {
		r := &c.Rules[i]
		if r.Family != "" && r.Family != policy.FamilyAny && r.Family != fam {
			continue
		}
		if r.Log != "" || r.Limit != nil || r.Trap != nil {
			return nil, false
		}
		switch {
		case r.Verdict == ruleset.Accept:
		case r.Verdict == ruleset.Drop && r.SrcSet != "" && r.Family == fam:
			if n := names.of(r.SrcSet); !slices.Contains(out, n) {
				out = append(out, n)
			}
		default:
			return nil, false
		}
	}
	if len(out) == 0 || len(out) > earlySize {
		return nil, false
	}
	return out, true
}

// establishedAccept: r accepts packets of established and related
// connections, and does nothing else.
func establishedAccept(r *ruleset.Rule) bool {
	if r.Verdict != ruleset.Accept || r.Log != "" || r.Limit != nil || r.Trap != nil ||
		!slices.Equal(r.CTStates, []ruleset.CTState{ruleset.CTEstablished, ruleset.CTRelated}) {
		return false
	}
	m := r.Match
	m.CTStates = nil
	return reflect.DeepEqual(m, ruleset.Match{})
}

func render(rs *ruleset.Ruleset, fam policy.Family, haveJump map[string]Jump, names Names, gen string, c contents) string {
	return renderTables(rs, fam, haveJump, names, gen, c, tables)
}

// renderTables is render of the tables ts alone (in tables' order).
func renderTables(rs *ruleset.Ruleset, fam policy.Family, haveJump map[string]Jump, names Names, gen string, c contents, ts []string) string {
	return renderTablesRH(rs, fam, haveJump, names, gen, "", c, ts)
}

// renderTablesRH is renderTables with rulesHash(rs, names) given as rh
// (Apply has it: each family's script rendered both families' rules
// again for it); "": computed here when a table needs it.
func renderTablesRH(rs *ruleset.Ruleset, fam policy.Family, haveJump map[string]Jump, names Names, gen, rh string, c contents, ts []string) string {
	var b strings.Builder
	for _, t := range ts {
		var chains []*ruleset.Chain
		for _, ch := range rs.Chains {
			if tableOfHook(ch.Hook) == t {
				chains = append(chains, ch)
			}
		}
		if len(chains) == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", t)
		for _, ch := range chains {
			// Declaring a chain under --noflush empties it; the rules follow.
			fmt.Fprintf(&b, ":%s - [0:0]\n", ChainName(ch.Hook))
		}
		if t == tableFilter {
			if rh == "" {
				rh = rulesHash(rs, names)
			}
			b.WriteString(genChainRules(gen, rh, c))
		}
		b.WriteString(body(rs, fam, names, t))
		for _, ch := range chains {
			builtin := builtinChain[ch.Hook]
			cond, _ := jumpCond(rs, ch, fam, names)
			have, ok := haveJump[builtin]
			writeJump(&b, builtin, cond, have, ok)
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// rawSum is a hash of the raw table's section of render for family fam,
// with the jump into MOAT-PREROUTING inserted anew (it does not depend
// on the jumps there): what MOAT-PREROUTING and its jump hold once moat
// restored it. "" when rs has no chain in raw.
func rawSum(rs *ruleset.Ruleset, fam policy.Family, names Names) string {
	text := renderTables(rs, fam, nil, names, "", nil, []string{tableRaw})
	if text == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(text))
	return hex.EncodeToString(sum[:])
}

// body is the rules of moat's chains of one table for one family.
func body(rs *ruleset.Ruleset, fam policy.Family, names Names, table string) string {
	var b strings.Builder
	for _, c := range rs.Chains {
		if tableOfHook(c.Hook) != table {
			continue
		}
		chain := ChainName(c.Hook)
		cond, skipFirst := jumpCond(rs, c, fam, names)
		for i := range c.Rules {
			if i == 0 && skipFirst {
				continue
			}
			r := &c.Rules[i]
			if cond == jumpNotLoopback && r.NotInIface == "lo" {
				// The jump tests it.
				cp := *r
				cp.NotInIface = ""
				r = &cp
			}
			for _, line := range ruleLines(r, fam, names) {
				fmt.Fprintf(&b, "-A %s %s\n", chain, line)
			}
		}
		if !c.HasDefault() {
			continue
		}
		def := ruleset.Rule{Verdict: c.Default, Origin: c.DefaultOrigin}
		for _, line := range ruleLines(&def, fam, names) {
			fmt.Fprintf(&b, "-A %s %s\n", chain, line)
		}
	}
	return b.String()
}

// acceptTarget: moat's accept returns to the built-in chain, so rules other
// tools put there still decide, exactly as an accept in moat's nftables
// table lets other tables see the packet. Both backends then give the same
// verdict: moat refuses what its policy refuses and adds no exceptions to
// other tools' refusals.
const acceptTarget = "-j RETURN"

// RuleLines renders one neutral rule as iptables rule arguments for one
// family (none if the rule is for the other family). One neutral rule can
// need several: one per protocol, per ICMP type, a LOG rule, a rate limit's
// reject before its accept.
func RuleLines(r *ruleset.Rule, fam policy.Family) []string {
	return ruleLines(r, fam, nil)
}

func ruleLines(r *ruleset.Rule, fam policy.Family, names Names) []string {
	if r.Family != "" && r.Family != policy.FamilyAny && r.Family != fam {
		return nil
	}
	var out []string
	comment := "-m comment --comment " + quote(r.Tag())
	if r.Trap != nil {
		return trapLines(r, fam, names, comment)
	}
	for _, m := range matchVariants(r.Match, fam, names) {
		if r.Log != "" && r.Verdict != ruleset.Log {
			out = append(out, join(m, comment, "-j LOG --log-prefix "+quote(r.Log)))
		}
		if r.Limit != nil {
			n, unit := ruleset.RateUnit(*r.Limit)
			name := "moat_" + r.Origin.ID + "_" + famSuffix(fam)
			over := fmt.Sprintf("-m conntrack --ctstate NEW -m hashlimit --hashlimit-above %d/%s --hashlimit-burst %d --hashlimit-mode srcip --hashlimit-name %s --hashlimit-htable-expire %d",
				n, unitAbbrev(unit), r.Limit.Burst, name, 2*r.Limit.Seconds*1000)
			out = append(out, join(m, over, comment, rejectTarget(m)))
			out = append(out, join(m, comment, acceptTarget))
			continue
		}
		switch r.Verdict {
		case ruleset.Log:
			limit := ""
			if r.LogLimited {
				limit = "-m limit --limit 3/min --limit-burst 10"
			}
			out = append(out, join(m, limit, comment, "-j LOG --log-prefix "+quote(r.Log)))
		case ruleset.Accept:
			out = append(out, join(m, comment, acceptTarget))
		case ruleset.Drop:
			out = append(out, join(m, comment, "-j DROP"))
		case ruleset.Reject:
			if strings.Contains(m, "-p ") {
				out = append(out, join(m, comment, rejectTarget(m)))
			} else {
				out = append(out, join(m, "-p tcp", comment, "-j REJECT --reject-with tcp-reset"))
				out = append(out, join(m, comment, "-j REJECT"))
			}
		}
	}
	return out
}

func rejectTarget(m string) string {
	if strings.Contains(m, "-p tcp") {
		return "-j REJECT --reject-with tcp-reset"
	}
	return "-j REJECT"
}

func famSuffix(f policy.Family) string {
	if f == policy.FamilyV6 {
		return "6"
	}
	return "4"
}

func unitAbbrev(unit string) string {
	switch unit {
	case "second":
		return "sec"
	case "minute":
		return "min"
	}
	return unit
}

// matchVariants renders a match as iptables arguments; it gives several
// when iptables needs a rule per protocol or per ICMP type.
func matchVariants(m ruleset.Match, fam policy.Family, names Names) []string {
	var common []string
	if m.InIface != "" {
		common = append(common, "-i "+m.InIface)
	}
	if m.OutIface != "" {
		common = append(common, "-o "+m.OutIface)
	}
	// Loopback's exemption is the interface the packet came in on, not
	// its source: a packet from outside may claim one of this host's
	// addresses (IPv6 has no martian check after the raw table), and
	// '! --src-type LOCAL' let such a listed source through.
	if m.NotInIface != "" {
		common = append(common, "! -i "+m.NotInIface)
	}
	if len(m.Src) > 0 {
		common = append(common, "-s "+prefixList(m.Src))
	}
	if len(m.Dst) > 0 {
		common = append(common, "-d "+prefixList(m.Dst))
	}
	if len(m.CTStates) > 0 {
		states := make([]string, len(m.CTStates))
		for i, s := range m.CTStates {
			states[i] = strings.ToUpper(string(s))
		}
		common = append(common, "-m conntrack --ctstate "+strings.Join(states, ","))
	}
	if m.HopLimit != 0 {
		common = append(common, fmt.Sprintf("-m hl --hl-eq %d", m.HopLimit))
	}
	if m.SrcSet != "" {
		common = append(common, "-m set --match-set "+names.of(m.SrcSet)+" src")
	}
	// The exemptions follow the set lookup: only a listed source pays them.
	for _, s := range m.ExceptSrcSets {
		common = append(common, "-m set ! --match-set "+names.of(s)+" src")
	}
	// IPv6 multicast to this host is not LOCAL, and no later chain
	// checks these sets: it gets a rule of its own, which a unicast
	// packet leaves at the address compare, before the set lookup.
	mcast := ""
	if m.LocalDst && fam == policy.FamilyV6 && len(m.Dst) == 0 && m.DstSet == "" && len(m.Protos) == 0 {
		mcast = strings.Join(append([]string{"-d ff00::/8"}, common...), " ")
	}
	switch {
	case m.LocalDst && fam == policy.FamilyV6:
		// IPv6 addrtype calls every global address UNICAST, local or not;
		// LOCAL asks the routes (multicast: the rule above).
		common = append(common, "-m addrtype --dst-type LOCAL")
	case m.LocalDst:
		common = append(common, "-m addrtype ! --dst-type UNICAST")
	}
	if m.DstSet != "" {
		common = append(common, "-m set --match-set "+names.of(m.DstSet)+" dst")
	}
	base := strings.Join(common, " ")
	if mcast != "" {
		return []string{base, mcast}
	}
	if len(m.Protos) == 0 {
		return []string{base}
	}
	var out []string
	for _, p := range m.Protos {
		proto := p
		if n, ok := protoNumbers[p]; ok {
			proto = n
		}
		pm := join(base, "-p "+proto)
		switch {
		case len(m.ICMPTypes) > 0:
			opt := "--icmp-type"
			if p == "ipv6-icmp" {
				opt = "--icmpv6-type"
			}
			for _, t := range m.ICMPTypes {
				out = append(out, join(pm, fmt.Sprintf("%s %d", opt, t)))
			}
		default:
			out = append(out, join(pm, portMatches(m.SPorts, m.DPorts)))
		}
	}
	return out
}

// portMatches writes the source and destination port matches. A single
// port or range (-p's own tcp or udp match) goes before a multiport
// list: iptables' getopt_long takes "--dport 22" after "-m multiport"
// as an abbreviation of multiport's --dports, and iptables-restore then
// refuses the rule ("--source-ports" cannot be used together with
// "--destination-ports"). Two lists are two multiport matches, which
// iptables-save lists back as written.
func portMatches(src, dst policy.Ports) string {
	s, d := portMatch(src, "sport"), portMatch(dst, "dport")
	if len(src) > 1 && len(dst) == 1 {
		return join(d, s)
	}
	return join(s, d)
}

// portMatch writes a port match: --dport for one port or range, multiport
// for a list.
func portMatch(ps policy.Ports, dir string) string {
	if len(ps) == 0 {
		return ""
	}
	items := make([]string, len(ps))
	for i, r := range ps {
		if r.First == r.Last {
			items[i] = strconv.Itoa(int(r.First))
		} else {
			items[i] = fmt.Sprintf("%d:%d", r.First, r.Last)
		}
	}
	if len(ps) == 1 {
		return "--" + dir + " " + items[0]
	}
	return "-m multiport --" + dir + "s " + strings.Join(items, ",")
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func join(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, " ")
}

// quote writes a string as iptables-restore reads a quoted argument. Tags
// and log prefixes never hold quotes (the parser refuses them in comments).
func quote(s string) string { return `"` + s + `"` }

// of is the ipset of a ruleset set (moat-NAME when unmapped).
func (n Names) of(set string) string {
	if name, ok := n[set]; ok {
		return name
	}
	return IPSetName(set)
}

// RenderSets writes the ipset restore input that loads the sets of rs
// that are not there yet: a policy set is filled under a temporary name
// and renamed when whole, so a set of that name is always complete; ban
// sets are created empty and never touched again. existing names the
// ipsets already there.
func RenderSets(rs *ruleset.Ruleset, existing map[string]bool) string {
	return renderSets(rs, existing, SetNames(rs), func(string) bool { return false })
}

// renderSets loads the sets not there yet, and the policy sets that refill
// names (their contents are not known to be the wanted ones), whole
// (writeSets, into memory).
func renderSets(rs *ruleset.Ruleset, existing map[string]bool, names Names, refill func(name string) bool) string {
	var b strings.Builder
	_ = writeSets(&b, rs, existing, names, refill, nil, nil, nil) // a Builder does not fail
	return b.String()
}

// createLine is the ipset create command for a ruleset set under a name.
func createLine(s *ruleset.Set, name string) string {
	family := "inet"
	if s.Family == policy.FamilyV6 {
		family = "inet6"
	}
	if s.Bans {
		return fmt.Sprintf("create %s hash:ip family %s timeout 0 maxelem %d comment", name, family, MaxBans)
	}
	if s.ScanWindow > 0 {
		return fmt.Sprintf("create %s hash:ip,port family %s timeout %d maxelem 65536", name, family, int64(s.ScanWindow/time.Second))
	}
	maxelem := minMaxelem
	for maxelem < 2*len(s.Entries) {
		maxelem *= 2
	}
	return fmt.Sprintf("create %s hash:net family %s maxelem %d", name, family, maxelem)
}

// tmpSetName is where a set is filled before it is renamed or swapped in.
func tmpSetName(name string) string { return "moatnew-" + strings.TrimPrefix(name, SetPrefix) }
