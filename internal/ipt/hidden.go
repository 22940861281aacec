package ipt

import (
	"fmt"
	"sort"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/moat-fw/moat/internal/nft"
)

// HiddenRules lists the rules of moat's chains (iptables-nft: chains of
// the nftables tables ip/ip6 filter and raw) that hold nftables
// expressions iptables-nft never writes for moat's rules, read over
// netlink. iptables-save leaves some of them out without a word (a set
// lookup: 'nft insert rule ip filter MOAT-INPUT ip saddr != @s tcp dport
// 80 return comment L3' lists exactly as moat's '-p tcp --dport 80'
// rule), so neither the fingerprint nor the drift check, which read
// iptables-save, would see the rule filter otherwise. nil when there are
// none or moat's chains are not in nftables.
func HiddenRules() ([]string, error) {
	if legacyTables() {
		return nil, nil
	}
	c, done, err := nft.Conn()
	defer done()
	if err != nil {
		return nil, err
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ch := range chains {
		if ch.Table == nil || !strings.HasPrefix(ch.Name, "MOAT-") || (ch.Table.Name != "filter" && ch.Table.Name != "raw") {
			continue
		}
		fam := map[gnft.TableFamily]string{gnft.TableFamilyIPv4: "ip", gnft.TableFamilyIPv6: "ip6"}[ch.Table.Family]
		if fam == "" {
			continue
		}
		rules, err := nft.GetRules(c, ch.Table, ch)
		if err != nil {
			return nil, fmt.Errorf("read %s %s %s: %w", fam, ch.Table.Name, ch.Name, err)
		}
		for i, r := range rules {
			kinds := foreignExprs(r.Exprs)
			// The expressions google/nftables could not decode (it drops
			// them: a rule with a byteorder or rt step read as moat's).
			for _, k := range r.Kinds() {
				if !iptablesExprs[k] && !containsString(kinds, k) {
					kinds = append(kinds, k)
				}
			}
			if len(kinds) > 0 {
				out = append(out, fmt.Sprintf("chain %s %s rule %d holds nftables expressions iptables-save does not show (%s)", fam, ch.Name, i+1, strings.Join(kinds, ", ")))
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// foreignExprs names the expressions of a rule iptables-nft does not
// write for moat's rules.
func foreignExprs(exprs []expr.Any) []string {
	var kinds []string
	for _, e := range exprs {
		switch e.(type) {
		case *expr.Payload, *expr.Cmp, *expr.Bitwise, *expr.Meta, *expr.Counter, *expr.Verdict, *expr.Immediate,
			*expr.Match, *expr.Target, *expr.Ct, *expr.Range, *expr.Limit, *expr.Log, *expr.Reject:
		default:
			k := strings.TrimPrefix(fmt.Sprintf("%T", e), "*expr.")
			if !containsString(kinds, k) {
				kinds = append(kinds, strings.ToLower(k))
			}
		}
	}
	return kinds
}

// iptablesExprs are the kernel's names of the expressions foreignExprs
// lets through.
var iptablesExprs = map[string]bool{"payload": true, "cmp": true, "bitwise": true, "meta": true, "counter": true,
	"immediate": true, "match": true, "target": true, "ct": true, "range": true, "limit": true, "log": true, "reject": true}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
