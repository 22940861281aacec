package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// StmtKind is the kind of a policy statement.
type StmtKind int

const (
	StmtRule StmtKind = iota + 1
	StmtDefault
	StmtBackend
	StmtGuard
	StmtAllowlist
	StmtBlocklist
	StmtPortscan
	StmtLogging
)

// Statement is one parsed line of policy.
type Statement struct {
	Kind          StmtKind
	Rule          Rule      // StmtRule
	DefaultDir    Direction // StmtDefault
	DefaultAction Action    // StmtDefault
	Backend       Backend   // StmtBackend
	// StmtGuard: settings given (name → value); "enable" is "yes" or "no".
	GuardSettings []GuardSetting
	Allowlist     []netip.Prefix // StmtAllowlist
	Blocklist     Blocklist      // StmtBlocklist
	Portscan      Portscan       // StmtPortscan
	Logging       LogLevel       // StmtLogging
	// More are further rules of a StmtRule whose application profile has
	// ports of several protocols (137,138/udp|139,445/tcp).
	More []Rule
}

// GuardSetting is one 'guard' setting as written.
type GuardSetting struct {
	Name  string
	Value string
	Pos   Pos
}

// Protocols moat accepts after 'proto': ufw's list plus ICMP for each family.
var Protocols = []string{"tcp", "udp", "icmp", "ipv6-icmp", "esp", "ah", "gre", "igmp", "vrrp", "ipv6"}

// portless protocols cannot have a port clause.
var portless = map[string]bool{"icmp": true, "ipv6-icmp": true, "esp": true, "ah": true, "gre": true, "igmp": true, "vrrp": true, "ipv6": true}

// v4only protocols exist only in IPv4 ("ipv6" is IPv6-in-IPv4, protocol 41).
var v4only = map[string]bool{"icmp": true, "igmp": true, "ipv6": true}
var v6only = map[string]bool{"ipv6-icmp": true}

// maxPortItems is ufw's limit (and iptables multiport's): 15 ports, a range
// counting as two.
const maxPortItems = 15

var numericPorts = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^\d([0-9,:]*\d)*$`) })
var ifaceName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-zA-Z0-9_\-.+,=%@]+$`) })

type parser struct {
	toks []Token
	i    int
	pos  Pos // file and line; Col is set per error
	svc  Services
	apps Apps   // application profiles (nil: none)
	more []Rule // further rules of a profile with several protocols
}

func (p *parser) errAt(t Token, format string, args ...any) *Error {
	pos := p.pos
	pos.Col = t.Col
	return &Error{Pos: pos, Msg: fmt.Sprintf(format, args...)}
}

// errAtOffset reports an error at byte off of the token's text (the part
// of a '22,99999' or '10/99h' that is wrong).
func (p *parser) errAtOffset(t Token, off int, format string, args ...any) *Error {
	e := p.errAt(t, format, args...)
	// On the command line the column is the argument's number.
	if p.pos.File != "" && off > 0 && off <= len(t.Text) {
		e.Pos.Col += len([]rune(t.Text[:off]))
		if t.Quoted {
			e.Pos.Col++
		}
	}
	return e
}

// errEnd reports a missing word after the last token.
func (p *parser) errEnd(format string, args ...any) *Error {
	pos := p.pos
	if n := len(p.toks); n > 0 {
		last := p.toks[n-1]
		if pos.File == "" {
			pos.Col = last.Col + 1
		} else {
			pos.Col = last.Col + len([]rune(last.Text)) + 1
			if last.Quoted {
				pos.Col += 2
			}
		}
	} else {
		pos.Col = 1
	}
	return &Error{Pos: pos, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) peek() (Token, bool) {
	if p.i < len(p.toks) {
		return p.toks[p.i], true
	}
	return Token{}, false
}

func (p *parser) next() (Token, bool) {
	t, ok := p.peek()
	if ok {
		p.i++
	}
	return t, ok
}

// ParseLine lexes and parses one policy line; pos names the file and line.
// ok is false for a blank or comment-only line.
func ParseLine(line string, pos Pos, svc Services) (st Statement, ok bool, err error) {
	return ParseLineApps(line, pos, svc, nil)
}

// ParseLineApps is ParseLine with application profiles.
func ParseLineApps(line string, pos Pos, svc Services, apps Apps) (st Statement, ok bool, err error) {
	toks, lerr := Lex(line)
	if lerr != nil {
		lerr.Pos.File, lerr.Pos.Line = pos.File, pos.Line
		return Statement{}, false, lerr
	}
	if len(toks) == 0 {
		return Statement{}, false, nil
	}
	st, err = ParseStatementApps(toks, pos, svc, apps)
	return st, err == nil, err
}

// ParseStatement parses one statement from its tokens. pos names the file
// and line (File empty for command-line arguments). svc resolves service
// names.
func ParseStatement(toks []Token, pos Pos, svc Services) (Statement, error) {
	return ParseStatementApps(toks, pos, svc, nil)
}

// ParseStatementApps is ParseStatement with application profiles: a rule
// naming a profile gets its ports (and, for a profile with several
// protocols, Statement.More holds the rules of the others).
func ParseStatementApps(toks []Token, pos Pos, svc Services, apps Apps) (Statement, error) {
	p := &parser{toks: toks, pos: pos, svc: svc, apps: apps}
	first, ok := p.peek()
	if !ok {
		return Statement{}, p.errEnd("empty statement: expected a rule such as 'allow 22/tcp' or 'default deny incoming'")
	}
	switch strings.ToLower(first.Text) {
	case "default":
		return p.parseDefault()
	case "backend":
		return p.parseBackend()
	case "guard":
		return p.parseGuard()
	case "allowlist":
		return p.parseAllowlist()
	case "blocklist":
		return p.parseBlocklist()
	case "logging":
		return p.parseLogging()
	case "allow", "deny", "reject", "limit", "route":
		r, err := p.parseRule()
		if err != nil {
			return Statement{}, err
		}
		return Statement{Kind: StmtRule, Rule: r, More: p.more}, nil
	case "enable", "disable", "reset", "status", "show", "delete", "insert", "prepend", "reload":
		return Statement{}, p.errAt(first, "'%s' is a command, not a policy statement: expected allow, deny, reject, limit, route, default, backend, guard, allowlist or blocklist", first.Text)
	default:
		return Statement{}, p.errAt(first, "unknown statement '%s': expected allow, deny, reject, limit, route, default, backend, guard, allowlist or blocklist", first.Text)
	}
}

func (p *parser) parseDefault() (Statement, error) {
	p.next()
	at, ok := p.next()
	if !ok {
		return Statement{}, p.errEnd("'default' needs a policy: expected allow, deny or reject")
	}
	var act Action
	switch strings.ToLower(at.Text) {
	case "allow":
		act = Allow
	case "deny":
		act = Deny
	case "reject":
		act = Reject
	default:
		return Statement{}, p.errAt(at, "invalid default policy '%s': expected allow, deny or reject", at.Text)
	}
	dir := In
	if dt, ok := p.next(); ok {
		switch strings.ToLower(dt.Text) {
		case "incoming", "input", "in":
			dir = In
		case "outgoing", "output", "out":
			dir = Out
		case "routed", "forward", "route":
			dir = Route
		default:
			return Statement{}, p.errAt(dt, "invalid direction '%s': expected incoming, outgoing or routed", dt.Text)
		}
	}
	if t, ok := p.next(); ok {
		return Statement{}, p.errAt(t, "unexpected '%s' after the default policy", t.Text)
	}
	return Statement{Kind: StmtDefault, DefaultDir: dir, DefaultAction: act}, nil
}

func (p *parser) parseBackend() (Statement, error) {
	p.next()
	t, ok := p.next()
	if !ok {
		return Statement{}, p.errEnd("'backend' needs a value: expected auto, nftables or iptables")
	}
	b := Backend(strings.ToLower(t.Text))
	if b != BackendAuto && b != BackendNftables && b != BackendIptables {
		return Statement{}, p.errAt(t, "unknown backend '%s': expected auto, nftables or iptables", t.Text)
	}
	if t, ok := p.next(); ok {
		return Statement{}, p.errAt(t, "unexpected '%s' after the backend name", t.Text)
	}
	return Statement{Kind: StmtBackend, Backend: b}, nil
}

// guardSettings are the settings 'guard' takes, with what each expects.
var guardSettings = map[string]string{
	"maxretry":       "a count from 1 to 1000",
	"findtime":       "a duration such as 10m",
	"bantime":        "a duration such as 1h",
	"bantime-max":    "a duration such as 1w",
	"bantime-factor": "a factor from 1 to 100",
	"weak":           "a weight from 0 to 1 (0 ignores pre-auth disconnects and bad banners)",
}

// parseGuard reads 'guard sshd [on|off] [SETTING VALUE]...' or
// 'guard SETTING VALUE...'.
func (p *parser) parseGuard() (Statement, error) {
	p.next()
	st := Statement{Kind: StmtGuard}
	t, ok := p.peek()
	if !ok {
		return st, p.errEnd("'guard' needs 'sshd' or a setting: expected e.g. 'guard sshd' or 'guard maxretry 5'")
	}
	if strings.EqualFold(t.Text, "portscan") {
		return p.parsePortscan()
	}
	if strings.EqualFold(t.Text, "sshd") {
		p.next()
		val := "yes"
		if t, ok := p.peek(); ok && (strings.EqualFold(t.Text, "on") || strings.EqualFold(t.Text, "off")) {
			p.next()
			if strings.EqualFold(t.Text, "off") {
				val = "no"
			}
		}
		st.GuardSettings = append(st.GuardSettings, GuardSetting{Name: "enable", Value: val, Pos: p.posOf(t)})
	}
	for {
		name, ok := p.next()
		if !ok {
			break
		}
		key := strings.ToLower(name.Text)
		want, known := guardSettings[key]
		if !known {
			return st, p.errAt(name, "unknown guard setting '%s': expected maxretry, findtime, bantime, bantime-max, bantime-factor or weak", name.Text)
		}
		v, ok := p.next()
		if !ok {
			return st, p.errEnd("'%s' needs %s", key, want)
		}
		if msg := checkGuardValue(key, v.Text); msg != "" {
			return st, p.errAt(v, "invalid %s '%s': expected %s", key, v.Text, want)
		}
		st.GuardSettings = append(st.GuardSettings, GuardSetting{Name: key, Value: v.Text, Pos: p.posOf(v)})
	}
	return st, nil
}

func (p *parser) posOf(t Token) Pos {
	pos := p.pos
	pos.Col = t.Col
	return pos
}

func checkGuardValue(key, v string) string {
	switch key {
	case "maxretry":
		if _, ok := parseCount(v, 1, 1000); !ok {
			return "bad"
		}
	case "findtime", "bantime", "bantime-max":
		d, err := ParseDuration(v)
		if err != nil || d < time.Second || d > 365*24*time.Hour {
			return "bad"
		}
	case "bantime-factor":
		if f, ok := parseDecimal(v); !ok || f < 1 || f > 100 {
			return "bad"
		}
	case "weak":
		if f, ok := parseDecimal(v); !ok || f < 0 || f > 1 {
			return "bad"
		}
	}
	return ""
}

// maxDigits bounds every number in the grammar: no value moat takes needs
// more digits, and none can then overflow on the way in.
const maxDigits = 10

var decimal = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^([0-9]{1,10}(\.[0-9]{0,10})?|\.[0-9]{1,10})$`) })

// parseCount reads a plain decimal integer (digits only: no sign, no
// spaces, no hex) from min to max.
func parseCount(s string, min, max int) (int, bool) {
	if s == "" || len(s) > maxDigits {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < min || n > max {
		return 0, false
	}
	return n, true
}

// parseDecimal reads "2" or "1.5": no sign, exponent, hex, NaN or Inf.
func parseDecimal(s string) (float64, bool) {
	if !decimal().MatchString(s) {
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	return f, err == nil
}

// maxDuration bounds ParseDuration's days and weeks (and keeps them far
// from overflowing time.Duration).
const maxDuration = 100 * 365 * 24 * time.Hour

// ParseDuration reads durations as admins write them: 90s, 10m, 1h, 2d,
// 1w, or Go's forms such as 1h30m. Negative durations and durations that
// would overflow are errors.
func ParseDuration(s string) (time.Duration, error) {
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			v, ok := parseCount(n, 0, int(maxDuration/unit))
			if !ok {
				return 0, fmt.Errorf("bad duration %q: expected a number of %s up to %d", s, map[string]string{"d": "days", "w": "weeks"}[suffix], maxDuration/unit)
			}
			return time.Duration(v) * unit, nil
		}
	}
	if strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+") {
		return 0, fmt.Errorf("bad duration %q: expected e.g. 90s, 10m, 1h, 2d or 1w", s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q: expected e.g. 90s, 10m, 1h, 2d or 1w", s)
	}
	if d > maxDuration {
		return 0, fmt.Errorf("bad duration %q: at most %d days", s, maxDuration/(24*time.Hour))
	}
	return d, nil
}

// parseAllowlist reads 'allowlist CIDR...': addresses the guard never bans.
func (p *parser) parseAllowlist() (Statement, error) {
	p.next()
	st := Statement{Kind: StmtAllowlist}
	for {
		t, ok := p.next()
		if !ok {
			break
		}
		a, off, msg := parseAddrAt(t.Text)
		if msg != "" && off > 0 {
			return st, p.errAtOffset(t, off, "bad allowlist address: %s", strings.TrimPrefix(msg, "bad address "))
		}
		if msg != "" || !a.IsValid() {
			return st, p.errAt(t, "bad allowlist address '%s': expected an IP address or a CIDR", t.Text)
		}
		st.Allowlist = append(st.Allowlist, a)
	}
	if len(st.Allowlist) == 0 {
		return st, p.errEnd("'allowlist' needs addresses: expected e.g. 'allowlist 198.51.100.0/24 2001:db8:1::/48'")
	}
	return st, nil
}

// ruleWords are the words with a meaning in a rule; anything else where a
// keyword is expected is an error.
var ruleWords = map[string]bool{"in": true, "out": true, "on": true, "log": true, "log-all": true, "proto": true,
	"from": true, "to": true, "port": true, "app": true, "comment": true, "rate": true}

func (p *parser) parseRule() (Rule, error) {
	start, _ := p.peek()
	r := Rule{Direction: In, Proto: "any", Pos: p.pos}
	r.Pos.Col = start.Col
	route := false
	if strings.EqualFold(start.Text, "route") {
		route = true
		r.Direction = Route
		p.next()
	}
	at, ok := p.next()
	if !ok {
		return r, p.errEnd("'route' needs an action: expected allow, deny, reject or limit")
	}
	switch strings.ToLower(at.Text) {
	case "allow", "deny", "reject", "limit":
		r.Action = Action(strings.ToLower(at.Text))
	default:
		return r, p.errAt(at, "unknown action '%s': expected allow, deny, reject or limit", at.Text)
	}

	// comment and rate may stand anywhere after the action (as in ufw);
	// take them out first so the rest has a fixed shape.
	rest, err := p.takeOptions(&r)
	if err != nil {
		return r, err
	}
	p.toks, p.i = rest, 0

	if err := p.parseDirection(&r, route); err != nil {
		return r, err
	}
	if t, ok := p.peek(); ok && (strings.EqualFold(t.Text, "log") || strings.EqualFold(t.Text, "log-all")) {
		r.Log = LogMode(strings.ToLower(t.Text))
		p.next()
		// ufw lets log stand between a route rule's two interfaces.
		if route {
			if err := p.parseDirection(&r, route); err != nil {
				return r, err
			}
		}
	}

	remaining := p.toks[p.i:]
	if len(remaining) == 1 && !ruleWords[strings.ToLower(remaining[0].Text)] {
		if r.InIface != "" || r.OutIface != "" {
			return r, p.errAt(remaining[0], "'%s' after an interface needs the full syntax: expected e.g. 'allow in on eth0 to any port 22 proto tcp'", remaining[0].Text)
		}
		// ufw's short route form: 'route allow 80/tcp'.
		if err := p.parseSimpleOrApp(&r, remaining[0]); err != nil {
			return r, err
		}
	} else if len(remaining) > 1 && !ruleWords[strings.ToLower(remaining[0].Text)] &&
		r.InIface == "" && r.OutIface == "" && p.isShortForm(r, remaining[0]) {
		return r, p.shortFormTail(remaining[0], remaining[1])
	} else if err := p.parseFull(&r); err != nil {
		return r, err
	}
	if err := p.finish(&r, start); err != nil {
		return r, err
	}
	for i := range p.more {
		if err := p.finish(&p.more[i], start); err != nil {
			return r, err
		}
	}
	return r, nil
}

// takeOptions removes 'comment TEXT' and 'rate N/Ts' from the tokens after
// the action and returns the others.
func (p *parser) takeOptions(r *Rule) ([]Token, error) {
	var rest []Token
	seen := map[string]bool{}
	toks := p.toks[p.i:]
	for i := 0; i < len(toks); i++ {
		word := strings.ToLower(toks[i].Text)
		if toks[i].Quoted || (word != "comment" && word != "rate") {
			rest = append(rest, toks[i])
			continue
		}
		if seen[word] {
			return nil, p.errAt(toks[i], "'%s' given twice", word)
		}
		seen[word] = true
		if i+1 >= len(toks) {
			if word == "comment" {
				return nil, p.errEnd("'comment' needs a text: expected e.g. comment 'web server'")
			}
			return nil, p.errEnd("'rate' needs a value: expected e.g. rate 6/30s")
		}
		val := toks[i+1]
		i++
		if word == "comment" {
			if err := checkComment(val.Text); err != "" {
				return nil, p.errAt(val, "%s", err)
			}
			r.Comment = val.Text
			continue
		}
		rate, off, msg := parseRate(val.Text)
		if msg != "" {
			return nil, p.errAtOffset(val, off, "%s", msg)
		}
		r.Rate = &rate
	}
	return rest, nil
}

// maxComment is the room an nftables rule comment leaves after moat's tag.
const maxComment = 100

func checkComment(c string) string {
	if len(c) > maxComment {
		return fmt.Sprintf("comment is %d bytes long; at most %d are allowed", len(c), maxComment)
	}
	if strings.ContainsAny(c, "'\"\\`$") {
		return "comment may not contain quotes, backslashes, '`' or '$'"
	}
	for _, ch := range c {
		if isControl(ch) {
			return "comment may not contain control characters"
		}
		// Bidirectional overrides make 'moat status' show a rule's text
		// in another order than it has.
		if (ch >= 0x202a && ch <= 0x202e) || (ch >= 0x2066 && ch <= 0x2069) {
			return fmt.Sprintf("comment may not contain bidirectional control characters (%U)", ch)
		}
	}
	return ""
}

// CleanComment makes text from elsewhere (an imported ufw comment) a
// comment checkComment takes: the characters it refuses are dropped and
// the text is cut, on a character boundary, to the bytes allowed.
func CleanComment(c string) string {
	var b strings.Builder
	for _, ch := range c {
		if strings.ContainsRune("'\"\\`$", ch) || isControl(ch) || (ch >= 0x202a && ch <= 0x202e) || (ch >= 0x2066 && ch <= 0x2069) {
			continue
		}
		if b.Len()+utf8.RuneLen(ch) > maxComment {
			break
		}
		b.WriteRune(ch)
	}
	return b.String()
}

// parseRate reads "N/Ts" (T seconds; 'm' and 'h' suffixes also work): the
// Nth new connection from one source within T is refused. On error, off is
// where in s the bad part starts.
func parseRate(s string) (r Rate, off int, msg string) {
	const want = "expected COUNT/TIME such as 6/30s, 10/1m or 100/1h (COUNT from 2 to 10000, TIME at most one day)"
	n, t, ok := strings.Cut(s, "/")
	if !ok {
		return Rate{}, 0, fmt.Sprintf("invalid rate '%s': %s", s, want)
	}
	count, ok := parseCount(n, 2, 10000)
	if !ok {
		return Rate{}, 0, fmt.Sprintf("invalid rate count '%s': %s", n, want)
	}
	off = len(n) + 1
	mult := 0
	switch {
	case strings.HasSuffix(t, "s"):
		mult = 1
	case strings.HasSuffix(t, "m"):
		mult = 60
	case strings.HasSuffix(t, "h"):
		mult = 3600
	}
	if mult == 0 {
		return Rate{}, off, fmt.Sprintf("invalid rate time '%s': %s", t, want)
	}
	// Bounded before multiplying: 10/5124095576030432h must not wrap
	// around into another rate.
	v, ok := parseCount(t[:len(t)-1], 1, 86400/mult)
	if !ok {
		return Rate{}, off, fmt.Sprintf("invalid rate time '%s': %s (at most one day)", t, want)
	}
	return Rate{Count: count, Seconds: v * mult, Burst: count - 1}, 0, ""
}

func (p *parser) parseDirection(r *Rule, route bool) error {
	seen := map[string]bool{}
	for {
		t, ok := p.peek()
		if !ok {
			return nil
		}
		word := strings.ToLower(t.Text)
		if word != "in" && word != "out" {
			return nil
		}
		if seen[word] {
			return p.errAt(t, "'%s' given twice", word)
		}
		if !route && len(seen) > 0 {
			return p.errAt(t, "a rule is either 'in' or 'out'; for traffic passing through, use 'route %s in on IFACE out on IFACE'", r.Action)
		}
		seen[word] = true
		p.next()
		if !route {
			r.Direction = Direction(word)
		}
		on, ok := p.peek()
		if !ok || !strings.EqualFold(on.Text, "on") {
			if route {
				return p.errAt(t, "'%s' in a route rule needs an interface: expected '%s on IFACE'", word, word)
			}
			continue
		}
		p.next()
		name, ok := p.next()
		if !ok {
			return p.errEnd("'on' needs an interface name")
		}
		if msg := checkIface(name.Text); msg != "" {
			return p.errAt(name, "%s", msg)
		}
		if word == "in" {
			r.InIface = name.Text
		} else {
			r.OutIface = name.Text
		}
	}
}

func checkIface(name string) string {
	switch {
	case name == "":
		return "interface name is empty"
	case len(name) > 15:
		return fmt.Sprintf("interface name '%s' is too long: at most 15 characters", name)
	case strings.Contains(name, "!"):
		return fmt.Sprintf("bad interface name '%s': '!' is reserved", name)
	case strings.Contains(name, ":"):
		return fmt.Sprintf("bad interface name '%s': interface aliases (eth0:1) cannot be filtered; use the device name", name)
	case name == "+":
		return "bad interface name '+': it would match every interface; leave out 'in on'/'out on'"
	case name == "." || name == "..":
		return "bad interface name: can't use '.' or '..'"
	case strings.Contains(strings.TrimSuffix(name, "+"), "+"):
		return fmt.Sprintf("bad interface name '%s': '+' is a wildcard only at the end (eth+)", name)
	case !ifaceName().MatchString(name):
		return fmt.Sprintf("bad interface name '%s': expected letters, digits and _-.+,=%%@", name)
	}
	return ""
}

// parseSimpleOrApp reads ufw's simple syntax: a port, a service, or an
// application profile (a port or service of that name wins, as in ufw).
func (p *parser) parseSimpleOrApp(r *Rule, t Token) error {
	err := p.parseSimple(r, t)
	if err == nil || p.apps == nil {
		return err
	}
	if app, ok := p.apps.Lookup(t.Text); ok {
		r.ToApp = app.Name
		return p.expandApps(r, nil, app)
	}
	if strings.ContainsAny(t.Text, "/,:") || (t.Text != "" && t.Text[0] >= '0' && t.Text[0] <= '9') {
		return err
	}
	return p.errAt(t, "%s", p.apps.unknownMsg(t.Text, false))
}

// expandApps gives r the ports of its profiles. A profile with ports of
// several protocols makes one rule per protocol: r is the first, p.more
// the others.
func (p *parser) expandApps(r *Rule, from, to *App) error {
	anyPart := []AppPart{{Proto: "any"}}
	fparts, tparts := anyPart, anyPart
	if from != nil {
		fparts = from.Parts
	}
	if to != nil {
		tparts = to.Parts
	}
	var rules []Rule
	for _, fp := range fparts {
		for _, tp := range tparts {
			proto := fp.Proto
			if proto == "any" {
				proto = tp.Proto
			} else if tp.Proto != "any" && tp.Proto != proto {
				continue
			}
			c := *r
			c.Proto = proto
			if from != nil {
				c.FromPort = fp.Ports
			}
			if to != nil {
				c.ToPort = tp.Ports
			}
			rules = append(rules, c)
		}
	}
	if len(rules) == 0 {
		return p.errEnd("the profiles '%s' and '%s' share no protocol", from.Name, to.Name)
	}
	*r = rules[0]
	p.more = rules[1:]
	return nil
}

// parseSimple reads ufw's simple syntax: PORT[/PROTO] or SERVICE[/PROTO].
func (p *parser) parseSimple(r *Rule, t Token) error {
	spec, proto, hasProto := strings.Cut(t.Text, "/")
	if hasProto {
		proto = strings.ToLower(proto)
		if proto != "tcp" && proto != "udp" {
			return p.errAt(t, "invalid protocol '%s' in '%s': expected PORT/tcp or PORT/udp (other protocols need 'proto')", proto, t.Text)
		}
		r.Proto = proto
	}
	if spec == "" {
		return p.errAt(t, "missing port in '%s': expected e.g. 22/tcp", t.Text)
	}
	ports, svcProtos, err := p.parsePorts(t, spec)
	if err != nil {
		return err
	}
	r.ToPort = ports
	if !hasProto && svcProtos != nil {
		r.Proto = protoOf(svcProtos)
	}
	return nil
}

func protoOf(protos []string) string {
	if len(protos) == 1 {
		return protos[0]
	}
	return "any"
}

// parseFull reads ufw's full syntax: [proto P] [from ADDR [port P]] [to ADDR [port P]] in any order.
func (p *parser) parseFull(r *Rule) error {
	var fromSvc, toSvc []string
	var fromApp, toApp *App
	seen := map[string]bool{}
	var last string     // "from" or "to": the clause a 'port' belongs to
	var prevPort string // the clause whose port was just read
	for {
		t, ok := p.next()
		if !ok {
			break
		}
		word := strings.ToLower(t.Text)
		if t.Quoted {
			word = ""
		}
		switch word {
		case "proto", "from", "to":
			if seen[word] {
				return p.errAt(t, "'%s' given twice", word)
			}
			seen[word] = true
			v, ok := p.next()
			if !ok {
				if word == "proto" {
					return p.errEnd("'proto' needs a protocol: expected one of %s", strings.Join(Protocols, ", "))
				}
				return p.errEnd("'%s' needs an address: expected any, an IP address or a CIDR", word)
			}
			if word == "proto" {
				proto := strings.ToLower(v.Text)
				if proto == "icmpv6" {
					proto = "ipv6-icmp"
				}
				if !slices.Contains(Protocols, proto) && proto != "any" {
					return p.errAt(v, "unsupported protocol '%s': expected one of %s", v.Text, strings.Join(Protocols, ", "))
				}
				r.Proto = proto
				last = ""
				continue
			}
			addr, off, msg := parseAddrAt(v.Text)
			if msg != "" {
				return p.errAtOffset(v, off, "%s", msg)
			}
			if word == "from" {
				r.From = addr
			} else {
				r.To = addr
			}
			last = word
		case "port":
			if last == "" && prevPort != "" {
				return p.errAt(t, "'port' given twice for '%s'", prevPort)
			}
			if last == "" {
				return p.errAt(t, "'port' must follow 'from ADDR' or 'to ADDR': expected e.g. 'to any port 22'")
			}
			key := last + " port"
			if seen[key] {
				return p.errAt(t, "'port' given twice for '%s'", last)
			}
			seen[key] = true
			v, ok := p.next()
			if !ok {
				return p.errEnd("'port' needs a port: expected e.g. 22, 80,443, 6000:6007 or a service name")
			}
			ports, protos, err := p.parsePorts(v, v.Text)
			if err != nil {
				return err
			}
			if last == "from" {
				r.FromPort, fromSvc = ports, protos
			} else {
				r.ToPort, toSvc = ports, protos
			}
			prevPort, last = last, ""
			continue
		case "app":
			if last == "" {
				return p.errAt(t, "'app' must follow 'from ADDR' or 'to ADDR': expected e.g. 'to any app OpenSSH'")
			}
			key := last + " port"
			if seen[key] {
				return p.errAt(t, "'port' or 'app' given twice for '%s'", last)
			}
			seen[key] = true
			v, ok := p.next()
			if !ok {
				return p.errEnd("'app' needs a profile name: expected e.g. 'app OpenSSH' ('moat app list' lists them)")
			}
			app, ok := p.apps.Lookup(v.Text)
			if !ok {
				return p.errAt(v, "%s", p.apps.unknownMsg(v.Text, true))
			}
			if last == "from" {
				fromApp, r.FromApp = app, app.Name
			} else {
				toApp, r.ToApp = app, app.Name
			}
			prevPort, last = last, ""
			continue
		case "in", "out", "on":
			return p.errAt(t, "'%s' must come right after the action: expected e.g. 'allow in on eth0 to any port 80'", t.Text)
		case "log", "log-all":
			return p.errAt(t, "'%s' must come right after the action or interface: expected e.g. 'allow log 22/tcp'", t.Text)
		default:
			return p.errAt(t, "unexpected '%s': expected proto, from, to, port or comment%s", t.Text, didYouMean(t.Text, keywordWords))
		}
		prevPort = ""
	}
	if fromApp != nil || toApp != nil {
		if seen["proto"] {
			return p.errEnd("'proto' cannot go with 'app': the profile says which protocols")
		}
		return p.expandApps(r, fromApp, toApp)
	}
	if !seen["from"] && !seen["to"] && r.InIface == "" && r.OutIface == "" {
		if seen["proto"] {
			return p.errEnd("a 'proto' rule needs a 'from' or 'to' clause, as in ufw: expected e.g. 'allow proto %s from any'", r.Proto)
		}
		return p.errEnd("incomplete rule: expected a port (allow 22/tcp), a 'from' or 'to' clause (allow from 203.0.113.0/24), or an interface (allow in on eth0)")
	}
	if r.Proto == "any" {
		protos := []string(nil)
		switch {
		case fromSvc != nil && toSvc != nil:
			for _, x := range fromSvc {
				if slices.Contains(toSvc, x) {
					protos = append(protos, x)
				}
			}
			if len(protos) == 0 {
				return p.errEnd("the 'from' and 'to' services share no protocol")
			}
		case fromSvc != nil:
			protos = fromSvc
		case toSvc != nil:
			protos = toSvc
		}
		if protos != nil {
			r.Proto = protoOf(protos)
		}
	}
	return nil
}

// parsePorts reads a port list. For a service name it also returns the
// protocols the service is registered for.
func (p *parser) parsePorts(t Token, spec string) (Ports, []string, error) {
	if numericPorts().MatchString(spec) {
		if strings.Count(spec, ",")+strings.Count(spec, ":") >= maxPortItems {
			return nil, nil, p.errAt(t, "too many ports in '%s': at most %d, a range counting as two", spec, maxPortItems)
		}
		var ports Ports
		off := 0 // of item in the token (spec starts the token)
		for _, item := range strings.Split(spec, ",") {
			a, b, isRange := strings.Cut(item, ":")
			first, err1 := portNum(a)
			last := first
			var err2 error
			if isRange {
				if strings.Contains(b, ":") {
					return nil, nil, p.errAtOffset(t, off, "bad port range '%s': expected FIRST:LAST", item)
				}
				last, err2 = portNum(b)
			}
			if err1 != nil {
				return nil, nil, p.errAtOffset(t, off, "bad port '%s': ports are 1 to 65535", item)
			}
			if err2 != nil {
				return nil, nil, p.errAtOffset(t, off+len(a)+1, "bad port '%s': ports are 1 to 65535", item)
			}
			if isRange && first >= last {
				return nil, nil, p.errAtOffset(t, off, "bad port range '%s': the first port must be lower than the last", item)
			}
			ports = append(ports, PortRange{first, last})
			off += len(item) + 1
		}
		return ports, nil, nil
	}
	if strings.ContainsAny(spec, ",:") {
		return nil, nil, p.errAt(t, "bad port '%s': lists and ranges must be numeric (80,443 or 6000:6007)", spec)
	}
	if spec == "any" {
		return nil, nil, nil
	}
	if p.svc == nil {
		return nil, nil, p.errAt(t, "bad port '%s': no service names are available", spec)
	}
	s, ok := p.svc[spec]
	if !ok {
		return nil, nil, p.errAt(t, "bad port '%s': expected a port number (1-65535), a list, a range or a service name from %s", spec, ServicesFile)
	}
	return Ports{{s.Port, s.Port}}, s.Protos, nil
}

func portNum(s string) (uint16, error) {
	n, ok := parseCount(s, 1, 65535)
	if !ok {
		return 0, errors.New("bad port")
	}
	return uint16(n), nil
}

// parseAddrAt reads any, an address or a CIDR; the CIDR is masked to its
// network. On error it also says where in s the error is (the prefix
// length of '203.0.113.0/33').
func parseAddrAt(s string) (netip.Prefix, int, string) {
	if strings.EqualFold(s, "any") {
		return netip.Prefix{}, 0, ""
	}
	if strings.Contains(s, "%") {
		return netip.Prefix{}, 0, fmt.Sprintf("bad address '%s': scoped addresses (%%zone) cannot be filtered; use 'in on IFACE'", s)
	}
	var pfx netip.Prefix
	if addrText, bitsText, ok := strings.Cut(s, "/"); ok {
		a, err := netip.ParseAddr(addrText)
		if err != nil {
			return netip.Prefix{}, 0, fmt.Sprintf("bad address '%s': expected any, an IP address or a CIDR such as 203.0.113.0/24 or 2001:db8::/32", s)
		}
		if strings.Contains(bitsText, ".") {
			// A dotted netmask, as ufw accepts: 10.0.0.1/255.255.255.0.
			bits, msg := netmaskBits(a, bitsText)
			if msg != "" {
				return netip.Prefix{}, len(addrText) + 1, fmt.Sprintf("bad address '%s': %s", s, msg)
			}
			bitsText = strconv.Itoa(bits)
			s = addrText + "/" + bitsText
		}
		bits, ok := parseCount(bitsText, 0, a.BitLen())
		if !ok || (len(bitsText) > 1 && bitsText[0] == '0') {
			return netip.Prefix{}, len(addrText) + 1, fmt.Sprintf("bad address '%s': prefix length '%s' is out of range: expected 0 to %d for an IPv%d address", s, bitsText, a.BitLen(), map[int]int{32: 4, 128: 6}[a.BitLen()])
		}
		// What netip.ParsePrefix(s) gives, without parsing the address
		// again (half of a blocklist's lines are IPv6 networks): the
		// address parsed, without a zone, and a length of decimal digits
		// in range, without a leading zero (FuzzParseAddrAt).
		pfx = netip.PrefixFrom(a, bits).Masked()
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, 0, fmt.Sprintf("bad address '%s': expected any, an IP address or a CIDR such as 203.0.113.0/24 or 2001:db8::/32", s)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx.Addr().Is4In6() {
		return netip.Prefix{}, 0, fmt.Sprintf("bad address '%s': IPv4-mapped IPv6 addresses are not filtered as such; write the IPv4 address", s)
	}
	return pfx, 0, ""
}

func familyOf(p netip.Prefix) Family {
	switch {
	case !p.IsValid():
		return FamilyAny
	case p.Addr().Is4():
		return FamilyV4
	default:
		return FamilyV6
	}
}

// finish checks what can only be checked on the whole rule.
func (p *parser) finish(r *Rule, start Token) error {
	hasPorts := len(r.FromPort) > 0 || len(r.ToPort) > 0
	if hasPorts && portless[r.Proto] {
		return p.errAt(start, "invalid port with protocol '%s': ports exist only for tcp and udp", r.Proto)
	}
	multi := len(r.FromPort) > 1 || len(r.ToPort) > 1 ||
		(len(r.FromPort) == 1 && r.FromPort[0].First != r.FromPort[0].Last) ||
		(len(r.ToPort) == 1 && r.ToPort[0].First != r.ToPort[0].Last)
	if multi && r.Proto == "any" {
		return p.errAt(start, "lists and ranges of ports need a protocol: expected e.g. '80,443/tcp' or 'proto tcp'")
	}
	ff, tf := familyOf(r.From), familyOf(r.To)
	if ff != FamilyAny && tf != FamilyAny && ff != tf {
		return p.errAt(start, "mixed IP versions for 'from' (%s) and 'to' (%s): a rule is for IPv4 or IPv6", AddrString(r.From), AddrString(r.To))
	}
	r.Family = ff
	if r.Family == FamilyAny {
		r.Family = tf
	}
	switch {
	case v4only[r.Proto] && r.Family == FamilyV6:
		return p.errAt(start, "protocol '%s' is IPv4 only, but the rule has an IPv6 address", r.Proto)
	case v6only[r.Proto] && r.Family == FamilyV4:
		return p.errAt(start, "protocol '%s' is IPv6 only, but the rule has an IPv4 address", r.Proto)
	case v4only[r.Proto]:
		r.Family = FamilyV4
	case v6only[r.Proto]:
		r.Family = FamilyV6
	}
	if r.Rate != nil && r.Action != Limit {
		return p.errAt(start, "'rate' goes with 'limit' rules only")
	}
	if r.Action == Limit && r.Rate == nil {
		rate := DefaultLimit
		r.Rate = &rate
	}
	if r.Direction == Route && r.Action == Limit {
		return p.errAt(start, "'limit' is for incoming or outgoing connections, not routed traffic")
	}
	return nil
}

// maxRuleNumber bounds a rule position ('moat insert N', 'moat delete N').
const maxRuleNumber = 99999999

// RuleNumber reads a rule position as 'moat status numbered' shows it:
// digits only (no sign, no hex), from 1. isNumber says whether s is
// meant as one (only digits), ok whether it is a valid one.
func RuleNumber(s string) (n int, isNumber, ok bool) {
	isNumber = s != ""
	for _, c := range s {
		isNumber = isNumber && c >= '0' && c <= '9'
	}
	n, ok = parseCount(s, 1, maxRuleNumber)
	return n, isNumber, ok
}

// netmaskBits turns a dotted IPv4 netmask into a prefix length. A mask
// whose one bits are not contiguous (255.0.255.0) matches no CIDR: nftables
// sets and ipset hold CIDRs only, so it is refused.
func netmaskBits(a netip.Addr, mask string) (int, string) {
	m, err := netip.ParseAddr(mask)
	if err != nil || !m.Is4() {
		return 0, fmt.Sprintf("netmask '%s' is not valid: expected a prefix length (/24) or a dotted netmask (/255.255.255.0)", mask)
	}
	if !a.Is4() {
		return 0, fmt.Sprintf("a dotted netmask '%s' goes with an IPv4 address only: expected a prefix length such as /64", mask)
	}
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := 0
	for ones < 32 && v&(1<<(31-ones)) != 0 {
		ones++
	}
	if ones < 32 && v<<ones != 0 {
		return 0, fmt.Sprintf("netmask '%s' is not contiguous: moat takes masks of consecutive one bits only (a CIDR); write the networks it means as CIDRs", mask)
	}
	return ones, ""
}

// NormalizeNetmask returns the CIDR written for an address with a dotted
// netmask ('10.0.0.1/255.255.255.0' → '10.0.0.0/24'); ok is false for
// anything else.
func NormalizeNetmask(s string) (string, bool) {
	_, maskText, found := strings.Cut(s, "/")
	if !found || !strings.Contains(maskText, ".") {
		return "", false
	}
	pfx, _, msg := parseAddrAt(s)
	if msg != "" || !pfx.IsValid() {
		return "", false
	}
	return pfx.String(), true
}
