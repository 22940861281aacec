package ipt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// With iptables-nft, a rule change is written by moat itself over
// netlink, as one nf_tables transaction for both families: every chain
// of moat's that the change rewrites is flushed and gets its rules (the
// expressions iptables-nft 1.8.9 writes for the same line, package
// xtenc; the comment in the rule's user data, which iptables-save prints
// the same and which costs a packet nothing, where iptables-restore
// writes the compat comment match), and MOAT-GEN its record. The kernel
// switches both families, raw and filter, and the record at once: a moat
// killed at any point leaves all of it or none of it (iptables-restore
// commits each table of each family on its own: four commits, and the
// "rewriting" mark before them, markRewriting). Only a change of ipsets
// is committed before it, on its own, with the "changing" mark that
// says so (markChanging) until the transaction writes the new record.
// No process is started (two restores were most of a command's time).
//
// The transaction is sent at the ruleset generation moat read its
// chains at (plus its own commits since): a change made by anyone else
// in between (iptables -I, another tool's commit) makes the kernel
// refuse it whole. When the command's drift check vouches for the read
// (Checked), Apply then checks moat's rules again: unchanged (a foreign
// commit, a ban), it goes on; changed, it says so
// (nft.ErrChangedSinceCheck: the command runs its drift check again)
// and never writes over the hand change. Without that check, the change
// is made by iptables-restore instead, as before, whose commits then do
// not account for the generation (ownRestoresOnly: the kernel is read
// back and compared). Jumps from the
// built-in chains are written too: inserted first where there is none
// (the table and the built-in chain made first where they are not
// there, as iptables-nft makes them), or replaced in place by handle
// where there are others. A line the encoder does not know
// (ErrUnsupported: a match outside its list), a jump inserted further
// down or deleted and not put back, a chain of a built-in's name that is
// not that built-in (checkBuiltins), tools other than iptables-nft
// 1.8.9's (nftTools): iptables-restore for the whole change, never part
// one way and part the other.

// xtRule is one rule encoded for the kernel (xtenc.Rule).
type xtRule struct {
	exprs  []byte // payload of NFTA_RULE_EXPRESSIONS
	udata  []byte // payload of NFTA_RULE_USERDATA, or nil
	compat []byte // payload of NFTA_RULE_COMPAT (nested), or nil
}

// errXtUnsupported says that a line cannot be written over netlink:
// the change goes through iptables-restore whole.
var errXtUnsupported = errors.New("iptables rule not written over netlink")

// xtEncoder encodes one rule line ("-A CHAIN ...", as render writes it)
// of a family (NFPROTO_IPV4, NFPROTO_IPV6) as the rules iptables makes
// of it, in order. An error wrapping errXtUnsupported: iptables-restore
// writes the change.
type xtEncoder interface {
	encode(proto uint8, line string) ([]xtRule, error)
	close() error
}

// newXtEncoder opens the encoder (the ipsets' indexes are read from the
// kernel); nil when there is none (the change goes through
// iptables-restore). A variable for the tests.
var newXtEncoder = func() (xtEncoder, error) { return nil, errXtUnsupported }

// rulesTxn is the transaction of a rule change: per family, the scripts
// render wrote (the sections of the tables to rewrite, MOAT-GEN's record
// in filter's), as the messages that do what iptables-restore --noflush
// would do with them.
type rulesTxn struct {
	x nft.XtBatch
	// ops says what each message does, in order ("ip flush filter
	// MOAT-INPUT", "ip6 chain raw MOAT-PREROUTING", "ip add filter
	// LINE"): the tests read it.
	ops []string
}

// lineRefused is the encoder's refusal of one line of a family's script
// (its error: errXtUnsupported's reason, or another), where it stood:
// what the debug log says of a change that went through iptables-restore.
type lineRefused struct {
	family, table, chain, line string
	err                        error
}

func (e *lineRefused) Error() string { return fmt.Sprintf("%s %s: %s", e.family, e.line, e.err) }
func (e *lineRefused) Unwrap() error { return e.err }

// buildRulesTxn makes the transaction of scripts (family → script).
// has says which of moat's chains exist in each family: a chain
// declared (":MOAT-X - [0:0]", which iptables-restore --noflush empties)
// is made where it does not, and flushed. Any line but a chain's
// declaration, a rule appended to one of moat's chains, a jump inserted
// first into a built-in chain (plan's builtins say whether the table and
// the chain are there: made first where not), jumps deleted and one
// inserted in their stead (writeJump: replaced by plan's handles), a
// table line and COMMIT (a jump deleted and not put back, one inserted
// further down, a count of jumps not the kernel's) is errXtUnsupported.
func buildRulesTxn(plan map[policy.Family]nlFamilyPlan, has map[policy.Family]map[string]bool, enc xtEncoder) (*rulesTxn, error) {
	t := &rulesTxn{}
	for i, f := range families {
		p, ok := plan[f.fam]
		if !ok {
			continue
		}
		script, builtins := p.script, maps.Clone(p.builtins)
		proto := nlFamilies[i].proto
		table := ""
		deleted := map[string]int{} // jumps deleted, not yet put back
		for _, l := range strings.Split(script, "\n") {
			attrs := func(chain string) []netlink.Attribute {
				return []netlink.Attribute{
					{Type: nftaRuleTable, Data: []byte(table + "\x00")},
					{Type: nftaRuleChain, Data: []byte(chain + "\x00")},
				}
			}
			switch {
			case l == "" || l == "COMMIT":
			case strings.HasPrefix(l, "*"):
				table = l[1:]
				if table != tableFilter && table != tableRaw {
					return nil, fmt.Errorf("%w: table %q", errXtUnsupported, table)
				}
				if builtins != nil && !builtins[table] {
					// Made as iptables-nft makes it: its name alone.
					t.ops = append(t.ops, nlFamilies[i].name+" table "+table)
					t.x.Add(proto, unix.NFT_MSG_NEWTABLE, netlink.Create, []netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: []byte(table + "\x00")}})
					builtins[table] = true
				}
			case table == "":
				return nil, fmt.Errorf("%w: %q before a table", errXtUnsupported, l)
			case strings.HasPrefix(l, ":MOAT-"):
				// Made where moat's read did not find it, and flushed
				// whatever it holds: Apply may have made it since (a
				// restore of the "changing" mark into a family without
				// MOAT-GEN), which that read does not know. A chain made
				// in the transaction is flushed empty.
				name, _, _ := strings.Cut(l[1:], " ")
				if !has[f.fam][name] {
					t.ops = append(t.ops, nlFamilies[i].name+" chain "+table+" "+name)
					t.x.Add(proto, unix.NFT_MSG_NEWCHAIN, netlink.Create, []netlink.Attribute{
						{Type: nftaChainTable, Data: []byte(table + "\x00")},
						{Type: nftaChainName, Data: []byte(name + "\x00")},
					})
				}
				t.ops = append(t.ops, nlFamilies[i].name+" flush "+table+" "+name)
				t.x.Add(proto, unix.NFT_MSG_DELRULE, 0, attrs(name))
			case strings.HasPrefix(l, "-A "+GenChain+" "):
				// MOAT-GEN's record as writeGen writes it (the compat
				// comment: no packet goes through MOAT-GEN).
				exprs, err := genRuleExprs(CommentOf(l))
				if err != nil {
					return nil, fmt.Errorf("%w: %w", errXtUnsupported, err)
				}
				t.x.Add(proto, unix.NFT_MSG_NEWRULE, netlink.Create|nlmFAppend,
					append(attrs(GenChain), netlink.Attribute{Type: unix.NLA_F_NESTED | nftaRuleExpressions, Data: exprs}))
				t.ops = append(t.ops, nlFamilies[i].name+" add "+table+" "+l)
			case strings.HasPrefix(l, "-A MOAT-"), strings.HasPrefix(l, "-I "):
				// A rule appended to moat's chain, or a jump inserted
				// first into a built-in chain that has none (writeJump:
				// "-I CHAIN 1 COND -j MOAT-CHAIN"; the kernel puts a rule
				// sent without NLM_F_APPEND nor a position at the head).
				flags, op, line := netlink.Create|nlmFAppend, " add ", l
				var extra []netlink.Attribute
				var drop []uint64
				if rest, ok := strings.CutPrefix(l, "-I "); ok {
					builtin, rest, _ := strings.Cut(rest, " ")
					pos, spec, _ := strings.Cut(rest, " ")
					hook, known := builtinHooks[table][builtin]
					if _, _, ok := parseJump("-A " + builtin + " " + spec); !ok || !known {
						return nil, fmt.Errorf("%w: %q", errXtUnsupported, l)
					}
					flags, op, line = netlink.Create, " insert ", "-A "+builtin+" "+spec
					switch n := deleted[table+" "+builtin]; {
					case n > 0:
						// writeJump deleted every jump there and inserts the
						// new one where the first stood: the first replaced
						// in place, the others deleted, by their handles
						// (read at the generation the transaction is sent
						// at, or it is refused).
						handles := p.jumps[table+" "+builtin]
						if len(handles) != n {
							return nil, fmt.Errorf("%w: %d jumps deleted from %s, %d there", errXtUnsupported, n, builtin, len(handles))
						}
						deleted[table+" "+builtin] = 0
						flags, op = netlink.Create|netlink.Replace, " replace "
						extra = []netlink.Attribute{{Type: nftaRuleHandle, Data: binary.BigEndian.AppendUint64(nil, handles[0])}}
						drop = handles[1:]
					case pos != "1" || builtins == nil:
						return nil, fmt.Errorf("%w: %q", errXtUnsupported, l)
					case !builtins[table+" "+builtin]:
						// iptables-nft makes a built-in chain when a rule
						// first goes into it: a base chain of type filter at
						// its hook and the table's priority, policy accept.
						h, err := netlink.MarshalAttributes([]netlink.Attribute{
							{Type: unix.NFTA_HOOK_HOOKNUM, Data: binary.BigEndian.AppendUint32(nil, uint32(hook[0]))},
							{Type: unix.NFTA_HOOK_PRIORITY, Data: binary.BigEndian.AppendUint32(nil, uint32(hook[1]))},
						})
						if err != nil {
							return nil, err
						}
						t.ops = append(t.ops, nlFamilies[i].name+" base "+table+" "+builtin)
						t.x.Add(proto, unix.NFT_MSG_NEWCHAIN, netlink.Create, []netlink.Attribute{
							{Type: nftaChainTable, Data: []byte(table + "\x00")},
							{Type: nftaChainName, Data: []byte(builtin + "\x00")},
							{Type: unix.NLA_F_NESTED | unix.NFTA_CHAIN_HOOK, Data: h},
							{Type: unix.NFTA_CHAIN_POLICY, Data: binary.BigEndian.AppendUint32(nil, 1)}, // NF_ACCEPT
							{Type: unix.NFTA_CHAIN_TYPE, Data: []byte("filter\x00")},
						})
						builtins[table+" "+builtin] = true
					}
				}
				chain, _, _ := strings.Cut(line[3:], " ")
				rules, err := enc.encode(proto, line)
				if err != nil {
					return nil, &lineRefused{family: nlFamilies[i].name, table: table, chain: chain, line: l, err: err}
				}
				if len(rules) != 1 && flags&nlmFAppend == 0 {
					// Inserted at the head one by one, they would stand in
					// the reverse order; one handle replaces one rule.
					return nil, fmt.Errorf("%w: %q makes %d rules", errXtUnsupported, l, len(rules))
				}
				for _, r := range rules {
					a := append(append(attrs(chain), extra...), netlink.Attribute{Type: unix.NLA_F_NESTED | nftaRuleExpressions, Data: r.exprs})
					if r.compat != nil {
						a = append(a, netlink.Attribute{Type: unix.NLA_F_NESTED | nftaRuleCompat, Data: r.compat})
					}
					if r.udata != nil {
						a = append(a, netlink.Attribute{Type: nftaRuleUserdata, Data: r.udata})
					}
					t.x.Add(proto, unix.NFT_MSG_NEWRULE, flags, a)
					t.ops = append(t.ops, nlFamilies[i].name+op+table+" "+line)
				}
				for _, h := range drop {
					t.ops = append(t.ops, fmt.Sprintf("%s delete %s %s %d", nlFamilies[i].name, table, chain, h))
					t.x.Add(proto, unix.NFT_MSG_DELRULE, 0, append(attrs(chain), netlink.Attribute{Type: nftaRuleHandle, Data: binary.BigEndian.AppendUint64(nil, h)}))
				}
			case strings.HasPrefix(l, "-D "):
				// A jump deleted (writeJump): done with the insert that
				// follows it.
				builtin, _, ok := parseJump("-A " + l[3:])
				if !ok {
					return nil, fmt.Errorf("%w: %q", errXtUnsupported, l)
				}
				deleted[table+" "+builtin]++
			default:
				return nil, fmt.Errorf("%w: %q", errXtUnsupported, l)
			}
		}
		for b, n := range deleted {
			if n > 0 {
				return nil, fmt.Errorf("%w: %s's jumps deleted, none put back", errXtUnsupported, b)
			}
		}
	}
	return t, nil
}

// sendRules is the transaction's send at generation gen (a variable
// for the tests).
var sendRules = func(t *rulesTxn, gen uint32) error { return t.x.SendAt(gen) }

// nlFamilyPlan is what the transaction writes into one family: script
// (render's text, as iptables-restore would take it: what predictState
// reads), and whether it rewrites moat's chains (whole) or MOAT-GEN's
// record alone.
type nlFamilyPlan struct {
	script string
	whole  bool
	// builtins: where render inserts jumps, the tables ("TABLE") and
	// built-in chains ("TABLE CHAIN") there (readBuiltins); nil: no
	// jump is inserted.
	builtins map[string]bool
	// jumps: where render replaces jumps, the handles of each built-in
	// chain's jumps into moat's chain, in order (readBuiltins).
	jumps map[string][]uint64
}

// rulesNetlinkPlan is, per family to change, what Apply's loop would
// restore into it (without the "rewriting" mark, which one transaction
// does not need: nothing of the rules is committed before the record),
// when the change can go over netlink: iptables-nft 1.8.9's tools
// (nftTools), and some family's rules rewritten (the record alone goes
// through writeGen). Where a family's jumps from the built-in chains are
// not as they should be, readBuiltins says which tables and built-in
// chains are there (and, where jumps are replaced, their handles); a
// read that fails, or a chain of a built-in's name that is not that
// built-in: not over netlink.
func (b *Backend) rulesNetlinkPlan(rs *ruleset.Ruleset, st *state, gen, rh string, c contents, names Names, keepRaw map[policy.Family]bool) (map[policy.Family]nlFamilyPlan, bool) {
	if !b.nlPrint() {
		return nil, false
	}
	if !nftTools() {
		b.log().Debug("iptables rules through iptables-restore: the iptables-restore and ip6tables-restore found are not iptables-nft 1.8.9's")
		return nil, false
	}
	plan := map[policy.Family]nlFamilyPlan{}
	anyWhole, jumps, replaces := false, false, false
	for _, f := range families {
		w, ts := b.familyWrite(rs, st, f.fam, gen, rh, names, keepRaw[f.fam])
		if w != writeWhole && restoredForm(st, f.fam, rs) {
			// Chains iptables-restore wrote (compat comments):
			// rewritten over netlink, the others left out by
			// onlyChanged (compat.go).
			w, ts = writeWhole, tables
		}
		switch w {
		case writeNone:
			continue // left as it is
		case writeRecord:
			plan[f.fam] = nlFamilyPlan{script: "*filter\n" + genChainRules(gen, rh, c) + "COMMIT\n"}
		default:
			if !b.jumpsComplete(rs, st, f.fam, names) {
				jumps = true
				replaces = replaces || !onlyInserts(rs, st, f.fam, names)
			}
			script := renderTablesRH(rs, f.fam, st.jumps[f.fam], names, gen, rh, c, ts)
			if !b.Full {
				script = onlyChanged(script, st.sums[f.fam], st.has[f.fam])
			}
			plan[f.fam] = nlFamilyPlan{script: script, whole: true}
			anyWhole = true
		}
	}
	if jumps && anyWhole {
		there, handles, err := readBuiltins(replaces)
		if err != nil {
			b.log().Debug("iptables rules through iptables-restore: the built-in chains could not be read over netlink", "reason", err)
			return nil, false
		}
		for f, p := range plan {
			p.builtins, p.jumps = there[f], handles[f]
			plan[f] = p
		}
	}
	return plan, anyWhole
}

// onlyChanged is script (render's, for one family) without the chains
// that already hold what it writes into them: a chain of moat's (but
// MOAT-GEN, whose record changes with the rules) that exists (has) and
// whose sum (state.sums: what moat's own script last wrote into it, at
// the generation the state was read at, which the transaction is sent
// at) is the chainSum of the script's rules for it loses its
// declaration (which would flush it) and its rules; a table left with
// nothing to write is left out. Jumps inserted or replaced stay. An
// edit of one rule rewrites MOAT-INPUT and MOAT-GEN of each family, not
// every chain: fewer rules for the kernel to check and swap. A chain
// changed by anyone else moved the generation since the state (the
// transaction is refused, and a state read anew has no sums), so an
// unchanged sum is what the kernel holds.
func onlyChanged(script string, sums map[string]string, has map[string]bool) string {
	if len(sums) == 0 {
		return script
	}
	lines := strings.Split(script, "\n")
	rules := map[string][]string{}
	for _, l := range lines {
		if strings.HasPrefix(l, "-A MOAT-") {
			name, _, _ := strings.Cut(l[3:], " ")
			rules[name] = append(rules[name], l)
		}
	}
	keep := map[string]bool{}
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, ":"); ok && strings.HasPrefix(rest, "MOAT-") {
			name, _, _ := strings.Cut(rest, " ")
			sum, known := sums[name]
			keep[name] = name == GenChain || !known || !has[name] || sum != chainSum(rules[name])
		}
	}
	var b strings.Builder
	var section []string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "*"):
			section = []string{l}
			continue
		case l == "COMMIT":
			if len(section) > 1 {
				for _, s := range section {
					b.WriteString(s + "\n")
				}
				b.WriteString("COMMIT\n")
			}
			section = nil
			continue
		case strings.HasPrefix(l, ":MOAT-"):
			if name, _, _ := strings.Cut(l[1:], " "); !keep[name] {
				continue
			}
		case strings.HasPrefix(l, "-A MOAT-"):
			if name, _, _ := strings.Cut(l[3:], " "); !keep[name] {
				if _, declared := keep[name]; declared {
					continue
				}
			}
		case l == "":
			continue
		}
		if section == nil {
			// Outside a table: left as it is (buildRulesTxn refuses it).
			b.WriteString(l + "\n")
			continue
		}
		section = append(section, l)
	}
	return b.String()
}

// onlyInserts says whether every jump into moat's chains that family fam
// lacks is missing, none there in another form: render then inserts
// them first (writeJump), and deletes none.
func onlyInserts(rs *ruleset.Ruleset, st *state, fam policy.Family, names Names) bool {
	for _, c := range rs.Chains {
		cond, _ := jumpCond(rs, c, fam, names)
		if j, ok := st.jumps[fam][builtinChain[c.Hook]]; ok && (j.Cond != cond || len(j.Extra) > 0) {
			return false
		}
	}
	return true
}

// nftTools says whether the iptables-restore and ip6tables-restore moat
// would run are iptables-nft's (xtables-nft-multi) of the version whose
// rules xtenc's bytes are proven against (provenIptables): only then
// does moat write their rules into nftables itself. The legacy tools on
// a host that has no legacy table yet (InNftables cannot tell) would
// have made x_tables rules; a wrapper, whatever it does, is run; another
// iptables-nft (Debian 13's 1.8.11 writes some matches otherwise, and
// its iptables-save, -C and -D are not proven to read 1.8.9's bytes as
// the lines moat rendered) restores the change itself. A variable for
// the tests.
var nftTools = func() bool {
	for _, prog := range []string{"iptables-restore", "ip6tables-restore"} {
		path, err := exec.LookPath(prog)
		if err != nil {
			return false
		}
		if path, err = filepath.EvalSymlinks(path); err != nil || filepath.Base(path) != "xtables-nft-multi" || !provenVersion(path) {
			return false
		}
	}
	return true
}

// provenIptables is the iptables-nft whose rules xtenc writes byte for
// byte (TestKernelShapes, TestKernelCorpus, TestWireMatchesIptables):
// the version string xtables-nft-multi is built with (PACKAGE_VERSION
// " (nf_tables)", which `iptables --version` prints).
const provenIptables = "1.8.9 (nf_tables)"

// provenVersion says whether the binary at path (xtables-nft-multi) is
// of provenIptables: its file holds that version string, whole (NUL
// ended, not the tail of a longer version such as 11.8.9). Read from the
// file, not asked of the program (no process is started); the answer is
// kept for the process (its file does not change under one command).
func provenVersion(path string) bool {
	if v, ok := provenVersions.Load(path); ok {
		return v.(bool)
	}
	f, err := os.Open(path)
	ok := err == nil && readerHoldsVersion(f, provenIptables, 32<<10)
	if err == nil {
		_ = f.Close() // read only
	}
	provenVersions.Store(path, ok)
	return ok
}

// readerHoldsVersion is holdsVersion of everything r reads, read in
// pieces of size bytes (the program is 230 KB: read whole, its fresh
// pages cost more than the search). Each piece after the first starts
// with the last len(v)+1 bytes of the one before: a string across the
// boundary is found whole, with the byte before it; one at the start of
// such a piece lay wholly within the piece before, which looked at it.
func readerHoldsVersion(r io.Reader, v string, size int) bool {
	carry := len(v) + 1
	buf := make([]byte, max(size, 2*carry+1))
	have, from := 0, 0
	for {
		n, err := io.ReadFull(r, buf[have:])
		if data := buf[:have+n]; len(data) > from && holdsVersionAfter(data, v, from) {
			return true
		}
		if err != nil {
			return false // the end (io.EOF, io.ErrUnexpectedEOF) or a failed read
		}
		have, from = copy(buf, buf[len(buf)-carry:]), 1
	}
}

var provenVersions sync.Map // path → bool

// holdsVersion says whether data holds the NUL-ended string v not
// preceded by a digit or a dot.
func holdsVersion(data []byte, v string) bool { return holdsVersionAfter(data, v, 0) }

// holdsVersionAfter is holdsVersion of the strings that start at index
// from or later (one at index 0 counts as preceded by nothing).
func holdsVersionAfter(data []byte, v string, from int) bool {
	want := []byte(v + "\x00")
	for off := from; ; {
		i := bytes.Index(data[off:], want)
		if i < 0 {
			return false
		}
		i += off
		if i == 0 || (data[i-1] != '.' && (data[i-1] < '0' || data[i-1] > '9')) {
			return true
		}
		off = i + 1
	}
}

// readBuiltins reads which tables of iptables-nft's (raw, filter) hold
// chains in each family, and which of their built-in chains exist
// ("TABLE" and "TABLE CHAIN"); with handles, also the handles of each
// built-in chain's jumps into moat's chain ("TABLE CHAIN"), in order.
// A variable for the tests.
var readBuiltins = func(handles bool) (map[policy.Family]map[string]bool, map[policy.Family]map[string][]uint64, error) {
	c, err := dialNetfilter()
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = c.Close() }() // read only
	ctx := context.Background()
	out, jumps := map[policy.Family]map[string]bool{}, map[policy.Family]map[string][]uint64{}
	for i, fam := range nlFamilies {
		chains, err := chainsOf(ctx, c, fam.proto, func(string) bool { return true })
		if err != nil {
			return nil, nil, err
		}
		there := map[string]bool{}
		for t, names := range chains {
			there[t] = true
			for _, n := range names {
				if !strings.HasPrefix(n, "MOAT-") {
					there[t+" "+n] = true
				}
			}
			// A chain named as a built-in one must be that built-in:
			// a base chain at its hook and priority. A regular chain
			// INPUT (nft add chain ip filter INPUT) sees no packet, and
			// a jump inserted there filters nothing; iptables-restore
			// refuses to take either for its built-in (CHAIN_ADD:
			// Operation not supported), so the change goes that way.
			if err := checkBuiltins(c, fam.proto, t, there); err != nil {
				return nil, nil, err
			}
		}
		out[families[i].fam] = there
		if !handles {
			continue
		}
		jumps[families[i].fam] = map[string][]uint64{}
		for _, t := range tables {
			if !there[t] {
				continue
			}
			rules, err := dumpRules(ctx, c, fam.proto, t)
			if err != nil {
				return nil, nil, err
			}
			for _, r := range rules {
				if r.isJumpToMoat() {
					jumps[families[i].fam][t+" "+r.chain] = append(jumps[families[i].fam][t+" "+r.chain], r.handle)
				}
			}
		}
	}
	return out, jumps, nil
}

// nlOutcome is what became of a transaction of writeRulesNetlink.
type nlOutcome int

const (
	nlNotSent   nlOutcome = iota // nothing committed: restore the change
	nlCommitted                  // the change is in the kernel
	nlUnknown                    // its answer was lost: read the kernel again
	// nlMoved: refused, the generation moved since the read, and a drift
	// check vouches for the read (Checked): nothing committed, and
	// whether the change is made otherwise is Apply's to say.
	nlMoved
)

// writeRulesNetlink sends plan in one transaction at the generation
// Apply read moat's chains at plus its own commits since. Not sent, or
// refused: nothing was committed (a change by anyone else since the
// read makes the kernel refuse it whole), and Apply restores the change
// whole, unless a drift check vouches for the read (nlMoved: Apply
// checks moat's rules again first). Unknown (its answer lost): LastApply no longer vouches, and
// Apply starts again from a new read of the kernel, which holds all of
// the transaction or none of it.
func (b *Backend) writeRulesNetlink(st *state, plan map[policy.Family]nlFamilyPlan) nlOutcome {
	t := b.track
	if b.noRulesNetlink || !t.known || !st.readGenOK || st.readGen != t.before {
		return nlNotSent // the generation to send at is not known
	}
	log := b.log()
	enc, err := newXtEncoder()
	if err != nil || enc == nil {
		log.Debug("iptables rules through iptables-restore: the rule encoder did not open", "reason", err)
		return nlNotSent
	}
	defer func() { _ = enc.close() }() // read only
	txn, err := buildRulesTxn(plan, st.has, enc)
	if lr := (*lineRefused)(nil); errors.As(err, &lr) {
		log.Debug("iptables rules through iptables-restore: a line not written over netlink", "family", lr.family, "table", lr.table, "chain", lr.chain, "line", lr.line, "reason", lr.err)
		return nlNotSent
	}
	if err != nil {
		log.Debug("iptables rules through iptables-restore", "reason", err)
		return nlNotSent
	}
	err = sendRules(txn, t.before+t.commits)
	switch {
	case err == nil:
		b.track.commits++
		return nlCommitted
	case nft.AckLost(err) && b.Checked.OK:
		// A drift check vouches for the read: settled from the
		// generation and the record (acklost.go), never by a read
		// that would take a hand change made meanwhile for moat's.
		return b.afterLostAck(plan, t.before+t.commits, err)
	case nft.AckLost(err):
		b.track.known = false
		b.lastRead = nil
		log.Debug("iptables rules over netlink: answer lost, reading the kernel again", "err", err)
		return nlUnknown
	}
	if b.Checked.OK && nft.GenerationMoved(err) {
		log.Debug("iptables rules over netlink refused: the ruleset changed after the read", "err", err)
		return nlMoved
	}
	log.Debug("iptables rules over netlink refused: through iptables-restore", "err", err)
	return nlNotSent
}

// chainsChanged says whether moat's chains (their rules and the jumps
// into them, MOAT-GEN's record aside) are no longer those of orig, read
// by this Apply: read again from the kernel. Not known (orig has no
// lines, a read that fails): changed.
func (b *Backend) chainsChanged(ctx context.Context, orig *state) bool {
	if orig.noLines {
		return true
	}
	b.lastRead = nil
	now, err := b.readRules(ctx)
	if err != nil || now.noLines {
		return true
	}
	rules := func(lines []string) []string {
		var out []string
		for _, l := range lines {
			// MOAT-GEN's record (its comments, each returning), which
			// Apply's own restore rewrote.
			rec := strings.HasPrefix(l, "-A "+GenChain+" -m comment --comment ") && strings.HasSuffix(l, " -j RETURN")
			if !rec {
				out = append(out, l)
			}
		}
		return out
	}
	for _, f := range families {
		if !slices.Equal(rules(orig.lines[f.fam]), rules(now.lines[f.fam])) {
			return true
		}
	}
	return false
}

// checkBuiltins says, of table (of family proto) whose chains there
// lists ("TABLE CHAIN"), whether every chain named as one of the
// built-in chains moat jumps from (filter's INPUT, OUTPUT and FORWARD,
// raw's PREROUTING) is a base chain at that built-in's hook and
// priority (as iptables-nft makes it); an error wrapping
// errXtUnsupported names the first that is not.
func checkBuiltins(c *netlink.Conn, proto uint8, table string, there map[string]bool) error {
	used := func(n string) bool {
		_, ok := builtinHooks[table][n]
		return ok && tableOf(n) == table && there[table+" "+n]
	}
	named := false
	for n := range builtinHooks[table] {
		named = named || used(n)
	}
	if !named {
		return nil
	}
	base, err := dumpBaseChains(c, proto, table)
	if err != nil {
		return err
	}
	for n, hook := range builtinHooks[table] {
		if !used(n) {
			continue
		}
		i := slices.IndexFunc(base, func(ch nlBaseChain) bool { return ch.name == n })
		if i < 0 {
			return fmt.Errorf("%w: chain %s of table %s is not a base chain", errXtUnsupported, n, table)
		}
		if base[i].hook != hook {
			return fmt.Errorf("%w: chain %s of table %s is at hook %d, priority %d, not iptables' (%d, %d)", errXtUnsupported, n, table, base[i].hook[0], base[i].hook[1], hook[0], hook[1])
		}
	}
	return nil
}
