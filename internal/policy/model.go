// Package policy holds moat's policy language: ufw's rule grammar plus a few
// statements of moat's own, the parsed model, and editing of the policy file.
package policy

import (
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Action is what a rule does with a matching packet.
type Action string

const (
	Allow  Action = "allow"
	Deny   Action = "deny"
	Reject Action = "reject"
	Limit  Action = "limit"
)

// Direction says which traffic a rule or default applies to.
type Direction string

const (
	In    Direction = "in"
	Out   Direction = "out"
	Route Direction = "route"
)

// Family is the IP family a rule applies to, named as nftables names them.
type Family string

const (
	FamilyAny Family = "inet"
	FamilyV4  Family = "ip"
	FamilyV6  Family = "ip6"
)

// LogMode is ufw's per-rule logging option.
type LogMode string

const (
	LogNone LogMode = ""
	LogNew  LogMode = "log"
	LogAll  LogMode = "log-all"
)

// Backend names the kernel interface moat programs.
type Backend string

const (
	BackendAuto     Backend = "auto"
	BackendNftables Backend = "nftables"
	BackendIptables Backend = "iptables"
)

// PortRange is an inclusive range of ports; a single port has First == Last.
type PortRange struct {
	First, Last uint16
}

// Ports is a list of ports and ranges; nil means any port.
type Ports []PortRange

// String writes ports the way ufw does: "any", "22", "80,443", "6000:6007".
func (p Ports) String() string {
	if len(p) == 0 {
		return "any"
	}
	parts := make([]string, len(p))
	for i, r := range p {
		if r.First == r.Last {
			parts[i] = strconv.Itoa(int(r.First))
		} else {
			parts[i] = strconv.Itoa(int(r.First)) + ":" + strconv.Itoa(int(r.Last))
		}
	}
	return strings.Join(parts, ",")
}

// Contains reports whether port is in the list (an empty list is any port).
func (p Ports) Contains(port uint16) bool {
	if len(p) == 0 {
		return true
	}
	for _, r := range p {
		if port >= r.First && port <= r.Last {
			return true
		}
	}
	return false
}

// Rate is a per-source limit on new connections: Count per Seconds, with a
// burst of Burst connections before the limit bites.
type Rate struct {
	Count   int `json:"count"`
	Seconds int `json:"seconds"`
	Burst   int `json:"burst"`
}

// DefaultLimit is ufw's limit: a source that opens its sixth connection
// within 30 seconds is refused.
var DefaultLimit = Rate{Count: 6, Seconds: 30, Burst: 5}

// Pos is where something stands in a policy file.
type Pos struct {
	File string
	Line int // 1-based
	Col  int // 1-based
}

// Rule is one normalized ufw rule.
type Rule struct {
	Action    Action
	Direction Direction
	InIface   string
	OutIface  string
	Log       LogMode
	Proto     string       // "any", "tcp", "udp", "icmp", "ipv6-icmp", "esp", ...
	From      netip.Prefix // invalid (zero) means any
	FromPort  Ports
	To        netip.Prefix
	ToPort    Ports
	Comment   string
	Rate      *Rate // for limit rules; nil for the others
	Family    Family
	Pos       Pos    // where the rule was written
	Text      string // the rule as written, without comment or trailing space
	// FromApp and ToApp name the application profiles the ports come from
	// ("" when none): the rule follows the profile when it changes.
	FromApp, ToApp string
}

// AddrString writes an address as a CIDR, or "any".
func AddrString(p netip.Prefix) string {
	if !p.IsValid() {
		return "any"
	}
	return p.String()
}

// Equal reports whether two rules match the same traffic with the same
// action and options (position and spelling are ignored).
func (r Rule) Equal(o Rule) bool {
	return r.Key() == o.Key()
}

// Key is a canonical form of the rule, used to find duplicates and to delete
// a rule by its text.
func (r Rule) Key() string {
	var b strings.Builder
	b.WriteString(string(r.Direction))
	b.WriteByte('|')
	b.WriteString(string(r.Action))
	for _, s := range []string{r.InIface, r.OutIface, string(r.Log), r.Proto,
		AddrString(r.From), r.FromPort.String(), AddrString(r.To), r.ToPort.String(), r.Comment, string(r.Family),
		r.FromApp, r.ToApp} {
		b.WriteByte('|')
		b.WriteString(s)
	}
	if r.Rate != nil {
		b.WriteString("|" + strconv.Itoa(r.Rate.Count) + "/" + strconv.Itoa(r.Rate.Seconds))
	}
	return b.String()
}

// Guard holds the brute-force guard's settings.
type Guard struct {
	Enabled       bool
	MaxRetry      int
	FindTime      time.Duration
	BanTime       time.Duration
	BanTimeMax    time.Duration
	BanTimeFactor float64
	// WeakWeight is what one piece of weaker evidence (a pre-auth
	// disconnect, a bad protocol banner) counts for; a failed login is 1.
	WeakWeight float64
	Allowlist  []netip.Prefix
}

// DefaultGuard are fail2ban's familiar numbers, with escalation.
var DefaultGuard = Guard{MaxRetry: 5, FindTime: 10 * time.Minute, BanTime: time.Hour, BanTimeMax: 7 * 24 * time.Hour,
	BanTimeFactor: 2, WeakWeight: 0.5}

// Policy is a whole validated policy: defaults, rules in order, settings.
type Policy struct {
	Defaults map[Direction]Action
	// DefaultPos records where each default was set (zero Pos: built-in).
	DefaultPos map[Direction]Pos
	// rules are the rules in order when the policy holds them whole (a
	// policy built in code, SetRules). A policy read from a document holds
	// them in store instead, address-only rules compact, and rules is nil.
	// Both are unexported so that no reader can see only one form: read
	// the rules with NumRules, Rule, RulePtr, RuleSeq, CompactAddrRule and
	// RuleText, which see both.
	rules   []Rule
	store   *ruleStore
	Backend Backend
	Guard   Guard
	// Blocklists in the order written; Portscan is the scan trap.
	Blocklists []Blocklist
	Portscan   Portscan
	// Logging is the level of kernel logging ('logging LEVEL', as ufw).
	Logging LogLevel
	// Source is the file the policy was read from.
	Source string
}

// BuiltinDefaults are the defaults when the policy does not set them: those
// of ufw for incoming and outgoing traffic. Routed traffic is left alone
// (accepted by moat, so other tools such as Docker keep deciding) until the
// admin writes a default for it or a route rule.
var BuiltinDefaults = map[Direction]Action{In: Deny, Out: Allow, Route: Allow}

// New returns an empty policy with the built-in defaults.
func New() *Policy {
	p := &Policy{Defaults: map[Direction]Action{}, DefaultPos: map[Direction]Pos{}, Backend: BackendAuto, Guard: DefaultGuard}
	for d, a := range BuiltinDefaults {
		p.Defaults[d] = a
	}
	return p
}

// DirectionWord is how ufw names a default's direction.
func DirectionWord(d Direction) string {
	switch d {
	case In:
		return "incoming"
	case Out:
		return "outgoing"
	default:
		return "routed"
	}
}

// RuleJSON is the stable JSON shape of a rule that scripts rely on.
type RuleJSON struct {
	Action       Action    `json:"action"`
	Direction    Direction `json:"direction"`
	InterfaceIn  string    `json:"interface_in"`
	InterfaceOut string    `json:"interface_out"`
	Proto        string    `json:"proto"`
	From         string    `json:"from"`
	FromPort     string    `json:"from_port"`
	To           string    `json:"to"`
	ToPort       string    `json:"to_port"`
	Family       Family    `json:"family"`
	Comment      string    `json:"comment"`
	Log          LogMode   `json:"log,omitempty"`
	Rate         *Rate     `json:"rate,omitempty"`
	FromApp      string    `json:"from_app,omitempty"`
	ToApp        string    `json:"to_app,omitempty"`
}

// JSON returns the rule in its JSON shape.
func (r Rule) JSON() RuleJSON {
	return RuleJSON{Action: r.Action, Direction: r.Direction, InterfaceIn: r.InIface, InterfaceOut: r.OutIface,
		Proto: r.Proto, From: AddrString(r.From), FromPort: r.FromPort.String(), To: AddrString(r.To),
		ToPort: r.ToPort.String(), Family: r.Family, Comment: r.Comment, Log: r.Log, Rate: r.Rate,
		FromApp: r.FromApp, ToApp: r.ToApp}
}

// set applies one validated setting.
func (g *Guard) set(s GuardSetting) {
	switch s.Name {
	case "enable":
		g.Enabled = s.Value == "yes"
	case "maxretry":
		g.MaxRetry, _ = strconv.Atoi(s.Value)
	case "findtime":
		g.FindTime, _ = ParseDuration(s.Value)
	case "bantime":
		g.BanTime, _ = ParseDuration(s.Value)
	case "bantime-max":
		g.BanTimeMax, _ = ParseDuration(s.Value)
	case "bantime-factor":
		g.BanTimeFactor, _ = strconv.ParseFloat(s.Value, 64)
	case "weak":
		g.WeakWeight, _ = strconv.ParseFloat(s.Value, 64)
	}
}
