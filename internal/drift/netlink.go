package drift

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"go4.org/netipx"

	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/ruleset"
)

// readNftNetlink reads the layout of moat's table over netlink, as
// ParseNftJSON reads `nft -j list table inet moat`: nft 1.0.x fetches every
// element of every set before any listing, which took 10 to 20 s with
// 200,000 bans; chains and rules over netlink cost the same with none.
func readNftNetlink() (*Layout, error) { return ReadNftLoaded(nil) }

// ReadNftLoaded is the layout of moat's table read over netlink, but a
// policy set for which loaded gives the hash of what moat loaded into it
// is not read back (with 100,000 networks the dump costs about 0.3 s):
// its hash stands in the layout's Loaded. Use it only when the kernel is
// known to hold what moat loaded (nothing but moat's own transaction was
// committed since the kernel was last compared).
func ReadNftLoaded(loaded func(set string) (string, bool)) (*Layout, error) {
	return ReadNftLoadedReusing(loaded, nil)
}

// ReadNftLoadedReusing is ReadNftLoaded that takes a chain's rules from
// known instead of the kernel when known gives them for the chain's name
// and its head as the kernel lists it (one netlink dump and the decoding
// of every rule less per chain: most of the fingerprint read after an
// edit, which rewrites one chain of nine). Every chain is still listed
// from the kernel, its head included. Use it only for chains the kernel
// is known to hold as known gives them: read at a generation from which
// nothing but moat's own transaction, which did not write them, was
// committed.
func ReadNftLoadedReusing(loaded func(set string) (string, bool), known func(chain, head string) ([]Rule, bool)) (*Layout, error) {
	c, done, err := nft.Conn()
	defer done()
	if err != nil {
		return nil, fmt.Errorf("read moat's nftables table: %w", err)
	}
	tables, err := c.ListTablesOfFamily(gnft.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("read moat's nftables table: %w", err)
	}
	l := newLayout()
	var table *gnft.Table
	for _, t := range tables {
		if t.Name == nft.TableName {
			table = t
		}
	}
	if table == nil {
		return l, nil
	}
	l.Dormant = nft.TableDormant(table)
	sets, err := c.GetSets(table)
	if err != nil {
		return nil, fmt.Errorf("read moat's nftables sets: %w", err)
	}
	// anon: the table's anonymous sets (a rule's port list, ICMP types),
	// their elements read when a rule read looks one up (anonElems).
	anon := map[string]string{}
	for _, s := range sets {
		if s.Anonymous {
			anon[s.Name] = ""
		}
		// Policy sets only: not bans, not rate-limit state.
		if !s.Interval || s.HasTimeout || s.Dynamic || s.Anonymous {
			continue
		}
		if loaded != nil {
			if hash, ok := loaded(s.Name); ok {
				if l.Loaded == nil {
					l.Loaded = map[string]string{}
				}
				l.Loaded[s.Name] = hash
				continue
			}
		}
		els, err := nft.DumpElements(s.Name)
		if err != nil {
			return nil, err
		}
		addIntervals(l.set(s.Name), els)
	}
	chains, err := c.ListChainsOfTableFamily(gnft.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("read moat's nftables chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != nft.TableName {
			continue
		}
		lc := l.chain(ch.Name)
		if ch.Hooknum != nil {
			prio := 0
			if ch.Priority != nil {
				prio = int(*ch.Priority)
			}
			lc.Head = fmt.Sprintf("hook %s priority %d policy %s", hookName(*ch.Hooknum), prio, policyName(ch.Policy))
		}
		if known != nil {
			if rules, ok := known(ch.Name, lc.Head); ok {
				lc.Rules = append([]Rule(nil), rules...)
				continue
			}
		}
		rules, err := nft.GetRules(c, table, ch)
		if err != nil {
			return nil, fmt.Errorf("read moat's nftables chain %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			if err := anonElems(anon, r.Exprs); err != nil {
				return nil, fmt.Errorf("read moat's nftables chain %s: %w", ch.Name, err)
			}
			rule := Rule{Tag: ruleset.OriginID(nft.RuleComment(r.UserData)), Body: exprBody(r.Exprs, anon) + undecodedBody(r.Undecoded)}
			for _, e := range r.Exprs {
				if v := verdictOf(e); v != "" {
					rule.Verdict = v
				}
			}
			lc.Rules = append(lc.Rules, rule)
		}
	}
	return l, nil
}

// addIntervals adds an interval set's elements: each start runs to the
// value before the next interval end (exclusive end), or to the end of the
// address space when no end follows.
func addIntervals(s *addrs, els []nft.Elem) {
	sort.Slice(els, func(i, j int) bool {
		if c := bytes.Compare(els[i].Key, els[j].Key); c != 0 {
			return c < 0
		}
		return els[i].End && !els[j].End // an end closes the range before a start opens one
	})
	var start netip.Addr
	open := false
	for _, e := range els {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok {
			continue
		}
		switch {
		case !e.End && !open:
			start, open = a, true
		case e.End && open:
			if last := a.Prev(); last.IsValid() && !last.Less(start) {
				s.b.AddRange(netipx.IPRangeFrom(start, last))
			}
			open = false
		}
	}
	if open {
		top := netip.AddrFrom16([16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		if start.Is4() {
			top = netip.AddrFrom4([4]byte{255, 255, 255, 255})
		}
		s.b.AddRange(netipx.IPRangeFrom(start, top))
	}
}

func hookName(h gnft.ChainHook) string {
	switch h {
	case *gnft.ChainHookPrerouting:
		return "prerouting"
	case *gnft.ChainHookInput:
		return "input"
	case *gnft.ChainHookForward:
		return "forward"
	case *gnft.ChainHookOutput:
		return "output"
	case *gnft.ChainHookPostrouting:
		return "postrouting"
	case *gnft.ChainHookIngress:
		return "ingress"
	}
	return fmt.Sprintf("hook-%d", h)
}

func policyName(p *gnft.ChainPolicy) string {
	if p != nil && *p == gnft.ChainPolicyDrop {
		return "drop"
	}
	return "accept"
}

// verdictOf names a verdict expression as nft's JSON does ("" for others).
func verdictOf(e expr.Any) string {
	switch v := e.(type) {
	case *expr.Verdict:
		switch v.Kind {
		case expr.VerdictAccept:
			return "accept"
		case expr.VerdictDrop:
			return "drop"
		case expr.VerdictReturn:
			return "return"
		case expr.VerdictJump:
			return "jump"
		case expr.VerdictGoto:
			return "goto"
		case expr.VerdictQueue:
			return "queue"
		}
	case *expr.Reject:
		return "reject"
	case *expr.Queue:
		return "queue"
	}
	return ""
}

// anonElems reads the elements of the anonymous sets exprs look up into
// anon (by set name, for exprBody), each set once.
func anonElems(anon map[string]string, exprs []expr.Any) error {
	for _, e := range exprs {
		l, ok := e.(*expr.Lookup)
		if !ok {
			continue
		}
		if text, isAnon := anon[l.SetName]; !isAnon || text != "" {
			continue
		}
		els, err := nft.DumpElements(l.SetName)
		if err != nil {
			return err
		}
		keys := make([]string, 0, len(els))
		for _, el := range els {
			k := fmt.Sprintf("%x", el.Key)
			if el.End {
				k += "/end"
			}
			keys = append(keys, k)
		}
		sort.Strings(keys)
		anon[l.SetName] = "{" + strings.Join(keys, ",") + "}"
	}
	return nil
}

// exprBody is what a rule matches and does, comparable between two kernels
// (network namespaces): its expressions as JSON, without counters and
// without the set IDs the kernel hands out (set names stay). A lookup in
// an anonymous set (anon: their elements by name, anonElems) carries the
// set's elements: the set is the rule's own (a port list), and a rule
// replaced by hand with another list differs in nothing else.
func exprBody(exprs []expr.Any, anon map[string]string) string {
	var out []any
	for _, e := range exprs {
		switch x := e.(type) {
		case *expr.Counter:
			continue
		case *expr.Lookup:
			c := *x
			c.SetID = 0
			elems, isAnon := anon[c.SetName]
			if strings.HasPrefix(c.SetName, "__set") {
				c.SetName = "__set" // anonymous sets are numbered per table, in creation order
			}
			if isAnon {
				out = append(out, map[string]any{"lookup": c, "elements": elems})
				continue
			}
			out = append(out, map[string]any{"lookup": c})
		case *expr.Dynset:
			c := *x
			c.SetID = 0
			out = append(out, map[string]any{"dynset": c})
		default:
			out = append(out, map[string]any{fmt.Sprintf("%T", e): e})
		}
	}
	data, err := json.Marshal(out)
	if err != nil {
		return fmt.Sprintf("unreadable: %v", err)
	}
	return string(data)
}

// undecodedBody is what exprBody adds for a rule whose expressions
// google/nftables did not all decode (nft.Rule.Undecoded): every
// expression as the kernel dumped it, so that the rule reads as what it
// is, never as the rule without the expressions left out ("" when none).
func undecodedBody(raw []nft.RawExpr) string {
	if len(raw) == 0 {
		return ""
	}
	parts := make([]string, len(raw))
	for i, e := range raw {
		parts[i] = e.String()
	}
	return " undecoded[" + strings.Join(parts, " ") + "]"
}

// SessionSets compares moat's protected sets in the kernel (nftables, this
// thread's namespace) with what moat loaded into them (loaded: the hash of
// their address ranges as the element store recorded them, as for
// ReadNftLoaded; nil or unknown: not compared). Compare leaves them out:
// they hold the SSH sessions live at the apply, which a script rendered
// now cannot know. An address added to them by hand would be spared every
// ban, so it is drift all the same.
func SessionSets(loaded func(set string) (string, bool)) ([]string, error) {
	if loaded == nil {
		return nil, nil
	}
	var out []string
	for _, name := range []string{ruleset.ProtectSet4, ruleset.ProtectSet6} {
		want, ok := loaded(name)
		if !ok {
			continue
		}
		els, err := nft.DumpElements(name)
		if err != nil {
			return nil, err
		}
		l := newLayout()
		addIntervals(l.set(name), els)
		set, err := l.Sets[name].b.IPSet()
		if err != nil {
			return nil, fmt.Errorf("read set %s: %w", name, err)
		}
		if nft.RangesHash(set.Ranges()) != want {
			out = append(out, fmt.Sprintf("set %s holds other addresses than moat loaded (the SSH sessions and allowlist at the apply)", name))
		}
	}
	return out, nil
}

// IpsetHolds says whether data, the output of `ipset list NAME`, holds
// exactly the addresses of want.
func IpsetHolds(data []byte, want []netip.Prefix) bool {
	l := newLayout()
	ParseIpsetList(l, "set", data)
	s := l.set("set")
	got, err := s.b.IPSet()
	if err != nil || len(s.bad) > 0 {
		return false
	}
	var wb netipx.IPSetBuilder
	for _, p := range want {
		wb.AddPrefix(p)
	}
	ws, err := wb.IPSet()
	return err == nil && got.Equal(ws)
}
