package ruleset

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"go4.org/netipx"

	"github.com/moat-fw/moat/internal/policy"
)

// Names of the port scan trap's sets.
const (
	ProtectSet4 = "protect4" // the allowlist and the admin's live sessions: never trapped
	ProtectSet6 = "protect6"
	ScanSet4    = "scan4" // (source, protocol, port) tried recently
	ScanSet6    = "scan6"
	// LoginSet4 and LoginSet6 hold the addresses the guard saw log in
	// over SSH since the last apply, each with a timeout: never trapped
	// either (an admin who logged in after the apply, then probes).
	LoginSet4 = "login4"
	LoginSet6 = "login6"
)

// LoginSetFor is the login set of an address's family.
func LoginSetFor(a netip.Addr) string {
	if a.Unmap().Is4() {
		return LoginSet4
	}
	return LoginSet6
}

// ReasonPortscan is the reason shown for a ban the kernel's trap made
// (those elements carry no comment).
const ReasonPortscan = "portscan (kernel trap)"

// ScanTrap is the port scan trap of one family: a new TCP or UDP
// connection that reaches the end of the input chain (no rule allowed or
// refused it) from a source outside ProtectSet is recorded in PortSet; a
// source that tries Rate.Count distinct ports within Rate.Seconds is added
// to BanSet for BanTime.
type ScanTrap struct {
	Family     policy.Family
	Rate       policy.Rate
	BanTime    time.Duration
	PortSet    string
	ProtectSet string
	// LoginSet: addresses that logged in over SSH (the guard adds them
	// with a timeout), never trapped.
	LoginSet string
	BanSet   string
}

// BlocklistSetName is the kernel set of a blocklist for one family.
func BlocklistSetName(list string, fam policy.Family) string {
	if fam == policy.FamilyV6 {
		return "bl6_" + list
	}
	return "bl4_" + list
}

// BlocklistOrigin names a blocklist in explain, status and counters.
func BlocklistOrigin(bl *policy.Blocklist) Origin {
	return Origin{ID: "blocklist:" + bl.Name, Line: bl.Pos.Line, Text: fmt.Sprintf("blocklist %s %s %s", bl.Name, bl.Source, bl.Where())}
}

var neverBlocked = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// BlocklistPrefixes is what the kernel gets for a list: its networks
// without the allowlist (which wins over every list) and loopback, merged,
// IPv4 and IPv6 apart.
func BlocklistPrefixes(list, allowlist []netip.Prefix) (v4, v6 []netip.Prefix) {
	var b netipx.IPSetBuilder
	for _, p := range list {
		b.AddPrefix(p)
	}
	for _, p := range slices.Concat(allowlist, neverBlocked) {
		b.RemovePrefix(p)
	}
	s, err := b.IPSet()
	if err != nil {
		return nil, nil
	}
	for _, p := range s.Prefixes() {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return v4, v6
}

// insertBlocklists puts a drop rule per blocklist and family right after
// the ban checks: before conntrack looks at the packet, so a listed source
// never creates state, and before any rule of the policy.
func insertBlocklists(rs *Ruleset, p *policy.Policy, rules []Rule) []Rule {
	if len(p.Blocklists) == 0 {
		return rules
	}
	at := 0
	for i, r := range rules {
		if r.Origin.ID == "builtin:ban" {
			at = i + 1
		}
	}
	var drops []Rule
	for i := range p.Blocklists {
		bl := &p.Blocklists[i]
		origin := BlocklistOrigin(bl)
		v4, v6 := BlocklistPrefixes(bl.Prefixes, p.Guard.Allowlist)
		for _, fam := range []struct {
			f policy.Family
			p []netip.Prefix
		}{{policy.FamilyV4, v4}, {policy.FamilyV6, v6}} {
			// Empty sets too: a list fetched later is filled in place.
			set := &Set{Name: BlocklistSetName(bl.Name, fam.f), Family: fam.f, Blocklist: bl.Name, Entries: make([]SetEntry, len(fam.p))}
			for j, pfx := range fam.p {
				set.Entries[j] = SetEntry{Prefix: pfx, Origin: origin}
			}
			rs.Sets = append(rs.Sets, set)
			drops = append(drops, Rule{Match: Match{Family: fam.f, SrcSet: set.Name}, Verdict: Drop, Origin: origin})
		}
	}
	return slices.Concat(rules[:at], drops, rules[at:])
}

// compileTrap adds the port scan trap at the end of the input chain, where
// only packets no rule decided arrive. With 'default allow incoming' every
// port is allowed, so there is nothing to trap.
func compileTrap(rs *Ruleset, p *policy.Policy, def Verdict) []Rule {
	ps := p.Portscan
	if !ps.Enabled || def == Accept {
		return nil
	}
	secs := int(ps.Within / time.Second)
	rate := policy.Rate{Count: ps.Ports, Seconds: secs, Burst: ps.Ports - 1}
	origin := Origin{ID: "portscan", Line: ps.Pos.Line,
		Text: fmt.Sprintf("guard portscan: ban for %s a source trying %d ports no rule allows within %s", ps.BanTime, ps.Ports, ps.Within)}
	var out []Rule
	for _, f := range []struct {
		fam                       policy.Family
		protect, login, scan, ban string
	}{{policy.FamilyV4, ProtectSet4, LoginSet4, ScanSet4, BanSet4}, {policy.FamilyV6, ProtectSet6, LoginSet6, ScanSet6, BanSet6}} {
		protect := &Set{Name: f.protect, Family: f.fam}
		for _, a := range p.Guard.Allowlist {
			if familyOf(a) == f.fam {
				protect.Entries = append(protect.Entries, SetEntry{Prefix: a, Origin: Origin{ID: "allowlist", Text: "allowlist " + a.String()}})
			}
		}
		if slices.ContainsFunc(protect.Entries, func(e SetEntry) bool { return e.Prefix.Bits() == 0 }) {
			continue // everyone is allowlisted: no trap for this family
		}
		// The login set is kept across applies like a ban set (single
		// addresses with timeouts the guard writes).
		rs.Sets = append(rs.Sets, protect, &Set{Name: f.login, Family: f.fam, Bans: true}, &Set{Name: f.scan, Family: f.fam, ScanWindow: ps.Within})
		out = append(out, Rule{
			Match:  Match{Family: f.fam, Protos: []string{"tcp", "udp"}, CTStates: []CTState{CTNew}},
			Trap:   &ScanTrap{Family: f.fam, Rate: rate, BanTime: ps.BanTime, PortSet: f.scan, ProtectSet: f.protect, LoginSet: f.login, BanSet: f.ban},
			Origin: origin,
		})
	}
	return out
}

func familyOf(p netip.Prefix) policy.Family {
	if p.Addr().Is4() {
		return policy.FamilyV4
	}
	return policy.FamilyV6
}

// Protect adds the admin's live session addresses to the trap's protected
// sets, so the trap never bans them. It does nothing without a trap.
func (rs *Ruleset) Protect(addrs []netip.Addr) {
	for _, a := range addrs {
		a = a.Unmap()
		name := ProtectSet4
		if a.Is6() {
			name = ProtectSet6
		}
		if s := rs.Set(name); s != nil {
			s.Entries = append(s.Entries, SetEntry{Prefix: netip.PrefixFrom(a, a.BitLen()), Origin: Origin{ID: "session", Text: "live SSH session from " + a.String()}})
		}
	}
}
