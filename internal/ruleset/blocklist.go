package ruleset

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"go4.org/netipx"

	"github.com/moat-fw/moat/internal/netmerge"
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
// IPv4 and IPv6 apart. The list is merged in one sort and pass
// (netmerge); only when the allowlist or loopback overlaps it are they cut
// out through netipx (TestBlocklistPrefixesSameAsIPSet).
func BlocklistPrefixes(list, allowlist []netip.Prefix) (v4, v6 []netip.Prefix) {
	// A list from internal/blocklist is merged already: it is used as it
	// is (the results share its array; nothing writes to either).
	merged, cut := list, false
	if !netmerge.IsMerged(list) {
		merged = netmerge.Merge(list)
		// An invalid prefix (none comes from a parsed policy) goes the
		// way it always went: IPSetBuilder's error, no networks.
		cut = slices.ContainsFunc(list, func(p netip.Prefix) bool { return !p.IsValid() })
	}
	for _, ps := range [][]netip.Prefix{allowlist, neverBlocked} {
		for _, p := range ps {
			cut = cut || !p.IsValid() || netmerge.Overlaps(merged, p)
		}
	}
	if !cut {
		return netmerge.Split(merged)
	}
	return ipsetPrefixes(list, allowlist)
}

// ipsetPrefixes is list less allowlist and the networks never blocked,
// through netipx.IPSetBuilder: the general way, which BlocklistPrefixes
// took for every list before it merged plain lists itself
// (TestBlocklistPrefixesSameAsIPSet compares the two).
func ipsetPrefixes(list, allowlist []netip.Prefix) (v4, v6 []netip.Prefix) {
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

// compilePrerouting is the chain before conntrack: the drops of banned
// and blocklisted sources, so they never create conntrack state (a ban
// also ends the address's open connections). A drop spares loopback,
// forwarded packets (it is the input chain's job, moved earlier), the
// allowlist and the admin's live sessions at the apply (protectN): those
// checks come after the set lookup in the same rule, so a packet from a
// source in no list pays one lookup per set. The login sets (addresses
// that logged in within a day, which the trap spares) are not spared
// here: the guard must still ban an address that logged in once and
// then guesses passwords, and it never bans a live session itself.
// IPv6 neighbour discovery goes on first (a host with one banned address
// must still resolve ours for its other addresses); it stands after the
// IPv4 drops so that IPv4 packets skip it cheaply.
func compilePrerouting(rs *Ruleset, p *policy.Policy) *Chain {
	c := &Chain{Hook: Prerouting, Default: Accept, DefaultOrigin: Origin{ID: "default:prerouting", Text: "not banned or blocklisted: on to conntrack and the input chain"}}
	protected := protectSets(rs, p)
	type list struct {
		set    map[policy.Family]string
		origin Origin
	}
	lists := []list{{map[policy.Family]string{policy.FamilyV4: BanSet4, policy.FamilyV6: BanSet6},
		builtin("ban", "drop addresses banned by the guard or 'moat ban' (before conntrack)")}}
	for i := range p.Blocklists {
		bl := &p.Blocklists[i]
		origin := BlocklistOrigin(bl)
		v4, v6 := BlocklistPrefixes(bl.Prefixes, p.Guard.Allowlist)
		names := map[policy.Family]string{}
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
			names[fam.f] = set.Name
		}
		lists = append(lists, list{names, origin})
	}
	for _, f := range []struct {
		fam     policy.Family
		protect string
	}{{policy.FamilyV4, ProtectSet4}, {policy.FamilyV6, ProtectSet6}} {
		if f.fam == policy.FamilyV6 {
			c.Rules = append(c.Rules, Rule{Match: Match{Family: policy.FamilyV6, Protos: []string{"ipv6-icmp"}, ICMPTypes: icmp6ND, HopLimit: 255}, Verdict: Accept,
				Origin: builtin("ndp-early", "let IPv6 neighbour discovery (hop limit 255) past the ban and blocklist drops")})
		}
		if !protected[f.fam] {
			continue // the allowlist holds all of this family: nothing is dropped
		}
		for _, l := range lists {
			c.Rules = append(c.Rules, Rule{Match: Match{Family: f.fam, SrcSet: l.set[f.fam], NotInIface: "lo",
				ExceptSrcSets: []string{f.protect}, LocalDst: true}, Verdict: Drop, Origin: l.origin})
		}
	}
	return c
}

// protectSets adds the sets of the addresses never dropped before
// conntrack nor trapped: protectN (the allowlist, and the live sessions
// that Protect adds); loginN (the guard's logins since the apply, kept
// across applies like bans) always exist. A family whose allowlist holds
// everything (a /0) gets no protectN; the result says which have one.
func protectSets(rs *Ruleset, p *policy.Policy) map[policy.Family]bool {
	out := map[policy.Family]bool{}
	for _, f := range []struct {
		fam            policy.Family
		protect, login string
	}{{policy.FamilyV4, ProtectSet4, LoginSet4}, {policy.FamilyV6, ProtectSet6, LoginSet6}} {
		if rs.Set(f.protect) != nil {
			out[f.fam] = true
			continue
		}
		protect := &Set{Name: f.protect, Family: f.fam, Protect: true}
		for _, a := range p.Guard.Allowlist {
			if familyOf(a) == f.fam {
				protect.Entries = append(protect.Entries, SetEntry{Prefix: a, Origin: Origin{ID: "allowlist", Text: "allowlist " + a.String()}})
			}
		}
		if slices.ContainsFunc(protect.Entries, func(e SetEntry) bool { return e.Prefix.Bits() == 0 }) {
			continue
		}
		rs.Sets = append(rs.Sets, protect) // the login sets are made first, with the ban sets
		out[f.fam] = true
	}
	return out
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
		if !protectSets(rs, p)[f.fam] {
			continue // everyone is allowlisted: no trap for this family
		}
		rs.Sets = append(rs.Sets, &Set{Name: f.scan, Family: f.fam, ScanWindow: ps.Within})
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

// Protect adds the admin's live session addresses to the protected sets,
// so neither the drops before conntrack nor the trap ever hit them.
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
