package ipt

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
)

// With iptables-nft, a chain made over netlink (nft, or any nftables
// client) in ip filter may hold a name iptables cannot make: a newline,
// a control character, a blank. iptables-save prints the name as it is
// (":NAME - [0:0]", "-A NAME ..."), so a name such as
// "MOAT-X\n-A MOAT-INPUT -j ACCEPT" writes lines of its own choosing into
// the text: a rule of moat's that does not exist (or one deleted by hand
// shown as present), a chain of moat's, a jump. moat never reads that
// text while such a chain exists: a read for a change (Apply, a
// snapshot, a rollback, Remove) removes the chains over netlink first;
// a read only to look (status, check) is refused, naming the chains
// escaped; the drift check reports them. The fingerprint read over
// netlink holds their names, so a chain appearing is seen as drift.

// OddChain is a regular chain of an iptables-nft table (ip or ip6;
// filter, raw, mangle, nat, security) whose name iptables-save cannot
// print as one word.
type OddChain struct {
	Family string // "ip" or "ip6"
	Table  string
	Name   string
}

func (o OddChain) String() string {
	return fmt.Sprintf("chain %s %s %s", o.Family, o.Table, strconv.Quote(o.Name))
}

// oddChainName says whether iptables-save cannot print a chain name as
// one word of its line: empty, or holding a blank, a control character
// or DEL (iptables itself never makes such a name).
func oddChainName(name string) bool {
	return name == "" || strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == 0x7f })
}

// OddChains lists the regular chains of iptables-nft's tables whose
// names iptables-save cannot print (oddChainName), read over netlink;
// nil when there are none or the tables are the legacy ones. A base
// chain of such a name makes iptables-save call its table incompatible
// (CheckSave says so): it is not listed.
var OddChains = oddChainsNetlink

func oddChainsNetlink() ([]OddChain, error) {
	if legacyTables() {
		return nil, nil
	}
	c, done, err := nft.Conn()
	defer done()
	if err != nil {
		return nil, fmt.Errorf("list chains over netlink: %w", err)
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list chains over netlink: %w", err)
	}
	var out []OddChain
	for _, ch := range chains {
		if o, ok := oddOf(ch); ok {
			out = append(out, o)
		}
	}
	slices.SortFunc(out, func(a, b OddChain) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

// oddOf says whether ch is an odd chain (OddChains) and which.
func oddOf(ch *gnft.Chain) (OddChain, bool) {
	if ch.Table == nil || ch.Hooknum != nil || !oddChainName(ch.Name) {
		return OddChain{}, false
	}
	fam := map[gnft.TableFamily]string{gnft.TableFamilyIPv4: "ip", gnft.TableFamilyIPv6: "ip6"}[ch.Table.Family]
	if _, ok := builtinHooks[ch.Table.Name]; !ok || fam == "" {
		return OddChain{}, false
	}
	return OddChain{Family: fam, Table: ch.Table.Name, Name: ch.Name}, true
}

// oddChainsError says that odd chains exist and what to do.
func oddChainsError(odd []OddChain) error {
	return fmt.Errorf("%s, which iptables-save cannot print (a newline, a control character or a blank in the name: its text could show rules that do not exist), so moat does not read the rules as text; 'moat reload' removes %s",
		oddList(odd), map[bool]string{true: "it", false: "them"}[len(odd) == 1])
}

// oddList names the chains for a message, escaped.
func oddList(odd []OddChain) string {
	var names []string
	for _, o := range odd {
		names = append(names, o.String())
	}
	const most = 10
	if len(names) > most {
		names = append(names[:most], fmt.Sprintf("and %d more", len(names)-most))
	}
	return strings.Join(names, ", ")
}

// OddChainsDrift describes the odd chains as drift, one line each.
func OddChainsDrift(odd []OddChain) []string {
	var out []string
	for _, o := range odd {
		out = append(out, fmt.Sprintf("%s was added outside moat under a name iptables-save cannot print (its text could show rules that do not exist): moat does not read the rules as text while it is there", o))
	}
	return out
}

// checkOddChains is the gate of every read of iptables-save's text:
// with repair, the odd chains are removed over netlink (and the rules
// of other chains jumping to them: their text is as forged); without,
// their presence is an error. It says whether it removed any.
func (b *Backend) checkOddChains(repair bool) (bool, error) {
	if !b.InNftables() {
		return false, nil
	}
	odd, err := OddChains()
	if err != nil || len(odd) == 0 {
		// Unreadable over netlink: iptables-save's text is all there is.
		return false, nil
	}
	if !repair {
		return false, oddChainsError(odd)
	}
	if err := removeOddChains(odd); err != nil {
		return false, fmt.Errorf("remove %s (names iptables-save cannot print): %w", oddList(odd), err)
	}
	return true, nil
}

// removeOddChains deletes the odd chains in one nftables transaction:
// the rules of other chains of their tables that jump or go to one of
// them, then their rules, then the chains.
var removeOddChains = removeOddChainsNetlink

func removeOddChainsNetlink(odd []OddChain) error {
	c, done, err := nft.Conn()
	defer done()
	if err != nil {
		return err
	}
	chains, err := c.ListChains()
	if err != nil {
		return err
	}
	type key struct{ fam, table, name string }
	isOdd := map[key]bool{}
	for _, o := range odd {
		isOdd[key{o.Family, o.Table, o.Name}] = true
	}
	famName := map[gnft.TableFamily]string{gnft.TableFamilyIPv4: "ip", gnft.TableFamilyIPv6: "ip6"}
	var gone []*gnft.Chain
	for _, ch := range chains {
		if ch.Table == nil || famName[ch.Table.Family] == "" {
			continue
		}
		fam := famName[ch.Table.Family]
		hasOdd := false
		for k := range isOdd {
			hasOdd = hasOdd || k.fam == fam && k.table == ch.Table.Name
		}
		if !hasOdd {
			continue
		}
		if o, ok := oddOf(ch); ok && isOdd[key{o.Family, o.Table, o.Name}] {
			gone = append(gone, ch)
			c.FlushChain(ch)
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return fmt.Errorf("read %s %s %q: %w", fam, ch.Table.Name, ch.Name, err)
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if v, ok := e.(*expr.Verdict); ok && isOdd[key{fam, ch.Table.Name, v.Chain}] {
					if err := c.DelRule(&gnft.Rule{Table: ch.Table, Chain: ch, Handle: r.Handle}); err != nil {
						return err
					}
					break
				}
			}
		}
	}
	for _, ch := range gone {
		c.DelChain(ch)
	}
	return c.Flush()
}

// explainReplacedBuiltin adds to an iptables-restore error of family f
// that refused a chain ("CHAIN_ADD failed (Operation not supported)":
// iptables-nft cannot make a built-in chain where a regular chain of its
// name is) which chains those are and what to do: the error alone named
// neither. Read over netlink; err as it is when none is found.
func explainReplacedBuiltin(err error, f family) error {
	if err == nil || !strings.Contains(err.Error(), "CHAIN_ADD failed") {
		return err
	}
	want := gnft.TableFamilyIPv4
	fam := "ip"
	if f.fam == policy.FamilyV6 {
		want, fam = gnft.TableFamilyIPv6, "ip6"
	}
	c, done, cerr := nft.Conn()
	defer done()
	if cerr != nil {
		return err
	}
	chains, cerr := c.ListChains()
	if cerr != nil {
		return err
	}
	var bad []string
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Family != want || ch.Hooknum != nil {
			continue
		}
		if _, builtin := builtinHooks[ch.Table.Name][ch.Name]; builtin && slices.Contains(tables, ch.Table.Name) {
			bad = append(bad, fmt.Sprintf("%s %s %s", fam, ch.Table.Name, ch.Name))
		}
	}
	if len(bad) == 0 {
		return err
	}
	slices.Sort(bad)
	return fmt.Errorf("%w\n%s: a regular chain of a built-in chain's name (made with nft: no packet goes through it), which iptables cannot make its built-in chain again over; "+
		"delete it ('nft flush chain %[3]s; nft delete chain %[3]s') and run 'moat reload', which makes the built-in chain again",
		err, strings.Join(bad, ", "), bad[0])
}
