// Package ruleset is the backend-neutral form of a compiled policy: chains
// of match→verdict rules and named address sets. Both backends render it,
// and the evaluator walks it, so what moat explains is what the kernel gets.
package ruleset

import (
	"net/netip"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/policy"
)

// Hook is where in the packet path a chain runs.
type Hook string

const (
	Input   Hook = "input"
	Output  Hook = "output"
	Forward Hook = "forward"
	// Prerouting runs before conntrack (nftables: hook prerouting
	// priority raw; iptables: the raw table's PREROUTING). It holds only
	// the drops of banned and blocklisted sources, so they never create
	// conntrack state, and has no default: what it does not drop goes on
	// to the input or forward chain.
	Prerouting Hook = "prerouting"
)

// Hooks lists the chains in the order they are rendered.
var Hooks = []Hook{Input, Output, Forward}

// Verdict is a final decision about a packet.
type Verdict string

const (
	Accept Verdict = "accept"
	Drop   Verdict = "drop"
	Reject Verdict = "reject" // tcp reset for TCP, ICMP port unreachable otherwise
	// Log logs the packet (with Rule.Log as prefix) and goes on to the
	// next rule: the logging levels' rules.
	Log Verdict = "log"
)

// Origin says where a kernel rule comes from: a line of the policy, a
// built-in default, a default policy, or a set of address rules.
type Origin struct {
	// ID is short and has no spaces; it tags the kernel rule (comment) so
	// counters can be read back: "L12", "builtin:loopback", "default:input".
	ID   string `json:"id"`
	Line int    `json:"line,omitempty"`
	Text string `json:"text"`
}

// CTState is a conntrack state.
type CTState string

const (
	CTInvalid     CTState = "invalid"
	CTEstablished CTState = "established"
	CTRelated     CTState = "related"
	CTNew         CTState = "new"
	CTUntracked   CTState = "untracked"
)

// Match is what a rule matches. Empty fields match anything.
type Match struct {
	Family   policy.Family // FamilyAny or empty: both
	InIface  string        // a trailing '+' matches a prefix, as in iptables
	OutIface string
	// Protos lists transport protocols ("tcp", "udp", "icmp", "ipv6-icmp",
	// "esp", ...); empty is any. Ports need tcp or udp.
	Protos    []string
	Src, Dst  []netip.Prefix // of the rule's family; empty is any
	SrcSet    string         // name of an address set; with Family set
	DstSet    string
	SPorts    policy.Ports
	DPorts    policy.Ports
	ICMPTypes []uint8 // with Protos icmp or ipv6-icmp
	CTStates  []CTState
	HopLimit  uint8 // exact IPv6 hop limit (255 for neighbour discovery); 0 any
	// NotInIface: packets that came in on this interface never match
	// (loopback is exempt from the drops before conntrack).
	NotInIface string
	// ExceptSrcSets: a source in one of these sets never matches (the
	// allowlist and the admin's sessions are never dropped).
	ExceptSrcSets []string
	// LocalDst: only packets to this host match (not forwarded ones):
	// nftables 'fib daddr type != unicast', iptables 'addrtype ! UNICAST'.
	LocalDst bool
}

// Rule is a match with a verdict.
type Rule struct {
	Match
	Verdict Verdict
	// Limit makes the rule a rate limit: new connections from one source
	// over the rate are rejected, the others get Verdict.
	Limit *policy.Rate
	// Log is a log prefix; empty means no logging.
	Log string
	// LogLimited rate-limits a Log rule as ufw does (3 a minute, bursts
	// of 10).
	LogLimited bool
	Origin     Origin
	Comment    string // the admin's comment, shown beside the rule
	// Uncounted: the rule carries no counter (nftables; on iptables the
	// established accept is the condition on moat's jump instead of a
	// rule, unless a rule must come before it). established,related is:
	// nearly every packet passes it,
	// its count tells the admin nothing, and the counter cost a
	// measurable share of an established packet's path
	// (docs/benchmarks.md, Packet rate).
	Uncounted bool
	// Trap makes the rule the port scan trap: it gives no verdict (the
	// packet goes on to the next rule) but counts, in the kernel, the
	// distinct ports a source tries, and bans it when there are too many.
	Trap *ScanTrap
}

// Chain is one base chain: its rules, then its default.
type Chain struct {
	Hook          Hook
	Rules         []Rule
	Default       Verdict
	DefaultOrigin Origin
}

// SetEntry is one address of a set with the rule that put it there.
type SetEntry struct {
	Prefix netip.Prefix
	Origin Origin
}

// Set is a named set of networks of one family.
type Set struct {
	Name    string
	Family  policy.Family // FamilyV4 or FamilyV6
	Entries []SetEntry    // in policy order, as written
	// Bans marks a set of single addresses with per-element timeouts that
	// the guard and 'moat ban' fill; applying a policy keeps its contents.
	Bans bool
	// Blocklist names the policy blocklist whose networks the set holds
	// (the list minus the allowlist and loopback).
	Blocklist string
	// Protect marks protect4/protect6: the allowlist and the live SSH
	// sessions at apply time. Its contents depend on the sessions, so it
	// keeps a fixed name (iptables) and drift does not compare them.
	Protect bool
	// ScanWindow marks the port scan trap's dynamic set: (source,
	// protocol, port) entries the kernel adds, each expiring after
	// ScanWindow. It has no Entries.
	ScanWindow time.Duration
}

// Ban set names, one per family.
const (
	BanSet4 = "ban4"
	BanSet6 = "ban6"
)

// Prefixes returns the set's networks merged into the fewest disjoint
// prefixes, as the kernel gets them.
func (s *Set) Prefixes() []netip.Prefix {
	return mergePrefixes(s.Entries)
}

// Ruleset is a whole compiled policy.
type Ruleset struct {
	Chains []*Chain
	Sets   []*Set
	// Source is the policy file the ruleset comes from, named in the
	// kernel (nftables table comment) so an admin who finds the table
	// knows which file to edit.
	Source string
	// Ungated renders the ruleset as moat loaded it before it gated the
	// built-ins (nftables: no chains like input_icmp behind a gate rule,
	// the built-ins inline). Only CompileEarlierOrder sets it: drift
	// compares the kernel with that layout after an upgrade; moat never
	// loads it.
	Ungated bool
	// PlainJumps renders the ruleset for iptables as moat loaded it
	// before its jumps carried conditions: every built-in chain jumps to
	// moat's unconditionally, MOAT-INPUT (OUTPUT, FORWARD) starts with
	// the established accept and each early drop tests '! -i lo'. Set by
	// CompileEarlierOrder and, for the layout between the two, by drift's
	// comparison after an upgrade; moat never loads it.
	PlainJumps bool
	// LoopbackRawJump renders the ruleset for iptables as moat loaded it
	// before the raw jump was taken only by a listed source: "-A
	// PREROUTING ! -i lo -j MOAT-PREROUTING", the early drops without
	// their own '! -i lo'. Set by drift's comparison after an upgrade
	// from that layout; moat never loads it.
	LoopbackRawJump bool
}

// SourceComment is the comment that names the policy file in the kernel:
// "managed by moat: edit FILE, not this table". A path too long for a
// kernel comment, or with characters that need quoting, is left out.
func (rs *Ruleset) SourceComment() string {
	src := rs.Source
	if src == "" {
		src = policy.DefaultPath
	}
	c := "managed by moat: edit " + src + ", not this table"
	ok := len(c) <= 120
	for _, r := range src {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+@:,", r)) {
			ok = false
		}
	}
	if !ok {
		return "managed by moat: edit its policy file ('moat status verbose' names it), not this table"
	}
	return c
}

// HasDefault says whether the chain ends with a counted default rule:
// every chain but the one before conntrack, whose packets go on.
func (c *Chain) HasDefault() bool { return c.Hook != Prerouting }

// Chain returns the chain for a hook.
func (rs *Ruleset) Chain(h Hook) *Chain {
	for _, c := range rs.Chains {
		if c.Hook == h {
			return c
		}
	}
	return nil
}

// Set returns a set by name.
func (rs *Ruleset) Set(name string) *Set {
	for _, s := range rs.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Tag is the kernel comment of a rule: its origin ID, then the admin's
// comment if any.
func (r *Rule) Tag() string {
	if r.Comment == "" {
		return r.Origin.ID
	}
	return r.Origin.ID + " " + r.Comment
}

// OriginID reads the origin ID back from a kernel comment.
func OriginID(comment string) string {
	id, _, _ := strings.Cut(comment, " ")
	return id
}

// Ban is an address in a ban set.
type Ban struct {
	Addr netip.Addr `json:"address"`
	// Timeout is the ban's length when it is set; Expires is the time
	// left when it is read back.
	Timeout time.Duration `json:"-"`
	Expires time.Duration `json:"-"`
	Reason  string        `json:"reason"`
	// Replace: the address may be banned already and must get this
	// timeout (slower on nftables; the guard never needs it, since it only
	// bans addresses whose ban is gone).
	Replace bool `json:"-"`
}

// BanSetFor is the ban set of an address's family.
func BanSetFor(a netip.Addr) string {
	if a.Is4() {
		return BanSet4
	}
	return BanSet6
}

// CleanReason makes a ban reason safe to write into nft and ipset input.
func CleanReason(s string) string {
	var b strings.Builder
	for _, c := range s {
		if c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '\'' && c != '`' && c != '$' {
			b.WriteRune(c)
		}
		if b.Len() >= 100 {
			break
		}
	}
	return b.String()
}
