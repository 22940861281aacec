package policy

import (
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// BlocklistSource says where a blocklist's contents come from.
type BlocklistSource string

const (
	BlocklistFile BlocklistSource = "file"
	BlocklistURL  BlocklistSource = "url"
)

// Blocklist is a 'blocklist NAME file PATH' or 'blocklist NAME url URL
// [refresh D]' statement: a named list of networks whose traffic is
// dropped before anything else looks at it.
type Blocklist struct {
	Name    string
	Source  BlocklistSource
	Path    string        // for file lists
	URL     string        // for url lists
	Refresh time.Duration // for url lists: how often 'moat blocklist update' fetches it
	Pos     Pos
	// Prefixes is the list's contents (merged, disjoint), filled in from
	// the file or the state directory before the policy is compiled; nil
	// until then.
	Prefixes []netip.Prefix
}

// Where is the list's source as the admin wrote it.
func (b Blocklist) Where() string {
	if b.Source == BlocklistURL {
		return b.URL
	}
	return b.Path
}

// Portscan holds the settings of the in-kernel scan trap: a source that
// opens new connections to Ports distinct ports no rule allows within
// Within is banned for BanTime.
type Portscan struct {
	Enabled bool
	Ports   int
	Within  time.Duration
	BanTime time.Duration
	Pos     Pos
}

// DefaultPortscan is what 'guard portscan' alone means.
var DefaultPortscan = Portscan{Ports: 10, Within: time.Minute, BanTime: time.Hour}

// DefaultRefresh is how often a url blocklist is fetched.
const DefaultRefresh = 24 * time.Hour

// MaxBlocklistName bounds a list's name so that the kernel set names built
// from it (nftables, ipset: at most 31 characters) fit.
const MaxBlocklistName = 16

var blocklistName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][a-z0-9_]*$`) })

// CheckBlocklistName says what is wrong with a blocklist name, or "".
func CheckBlocklistName(name string) string {
	switch {
	case len(name) > MaxBlocklistName:
		return fmt.Sprintf("blocklist name '%s' is too long: at most %d characters", name, MaxBlocklistName)
	case !blocklistName().MatchString(name):
		return fmt.Sprintf("bad blocklist name '%s': expected a lowercase letter, then lowercase letters, digits or '_' (e.g. spamhaus_drop)", name)
	}
	return ""
}

// parseBlocklist reads 'blocklist NAME file PATH' or 'blocklist NAME url
// URL [refresh DURATION]'.
func (p *parser) parseBlocklist() (Statement, error) {
	kw, _ := p.next()
	const want = "expected 'blocklist NAME file /PATH' or 'blocklist NAME url https://... [refresh 24h]'"
	nameTok, ok := p.next()
	if !ok {
		return Statement{}, p.errEnd("'blocklist' needs a name: %s", want)
	}
	if msg := CheckBlocklistName(nameTok.Text); msg != "" {
		return Statement{}, p.errAt(nameTok, "%s", msg)
	}
	bl := Blocklist{Name: nameTok.Text, Pos: p.posOf(kw)}
	src, ok := p.next()
	if !ok {
		return Statement{}, p.errEnd("blocklist '%s' needs a source: %s", bl.Name, want)
	}
	val, ok := p.next()
	switch strings.ToLower(src.Text) {
	case "file":
		if !ok {
			return Statement{}, p.errEnd("'file' needs an absolute path: %s", want)
		}
		if msg := checkListPath(val.Text); msg != "" {
			return Statement{}, p.errAt(val, "%s", msg)
		}
		bl.Source, bl.Path = BlocklistFile, val.Text
	case "url":
		if !ok {
			return Statement{}, p.errEnd("'url' needs an https:// address: %s", want)
		}
		if msg := CheckListURL(val.Text); msg != "" {
			return Statement{}, p.errAt(val, "%s", msg)
		}
		bl.Source, bl.URL, bl.Refresh = BlocklistURL, val.Text, DefaultRefresh
	default:
		return Statement{}, p.errAt(src, "unknown blocklist source '%s': %s", src.Text, want)
	}
	for {
		t, ok := p.next()
		if !ok {
			break
		}
		if !strings.EqualFold(t.Text, "refresh") || bl.Source != BlocklistURL {
			return Statement{}, p.errAt(t, "unexpected '%s': %s", t.Text, want)
		}
		v, ok := p.next()
		if !ok {
			return Statement{}, p.errEnd("'refresh' needs a duration from 1h to 30d, such as 24h")
		}
		d, err := ParseDuration(v.Text)
		if err != nil || d < time.Hour || d > 30*24*time.Hour {
			return Statement{}, p.errAt(v, "invalid refresh '%s': expected a duration from 1h to 30d, such as 24h", v.Text)
		}
		bl.Refresh = d
	}
	return Statement{Kind: StmtBlocklist, Blocklist: bl}, nil
}

func checkListPath(path string) string {
	if !strings.HasPrefix(path, "/") {
		return fmt.Sprintf("blocklist file '%s' must be an absolute path", path)
	}
	if len(path) > 1024 {
		return "blocklist file path is longer than 1024 bytes"
	}
	for _, c := range path {
		if c < 0x20 || c == 0x7f {
			return "blocklist file path may not contain control characters"
		}
	}
	return ""
}

// CheckListURL says what is wrong with a blocklist URL, or "".
func CheckListURL(s string) string {
	if len(s) > 2048 {
		return "blocklist url is longer than 2048 bytes"
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return fmt.Sprintf("bad blocklist url '%s': expected https://HOST/PATH", s)
	}
	if u.Scheme != "https" {
		return fmt.Sprintf("blocklist url '%s' must be https:// (a list fetched in clear text could be altered on the way; for a local copy use 'file /PATH')", s)
	}
	if u.User != nil {
		return fmt.Sprintf("blocklist url '%s' may not hold a user name or password", s)
	}
	for _, c := range s {
		if c <= 0x20 || c == 0x7f || c == '\'' || c == '"' || c == '\\' {
			return fmt.Sprintf("blocklist url '%s' may not contain spaces, quotes, backslashes or control characters", s)
		}
	}
	return ""
}

// portscanSettings are the settings 'guard portscan' takes.
var portscanSettings = map[string]string{
	"ports":   "a count of distinct ports from 2 to 1000",
	"within":  "a window from 1s to 1d, such as 60s",
	"bantime": "a ban length from 1s to 24d, such as 1h",
}

// parsePortscan reads 'guard portscan [on|off] [ports N] [within D]
// [bantime D]' (the 'guard' word is consumed already).
func (p *parser) parsePortscan() (Statement, error) {
	kw, _ := p.next()
	ps := DefaultPortscan
	ps.Enabled, ps.Pos = true, p.posOf(kw)
	if t, ok := p.peek(); ok && (strings.EqualFold(t.Text, "on") || strings.EqualFold(t.Text, "off")) {
		p.next()
		ps.Enabled = strings.EqualFold(t.Text, "on")
	}
	seen := map[string]bool{}
	for {
		name, ok := p.next()
		if !ok {
			break
		}
		key := strings.ToLower(name.Text)
		want, known := portscanSettings[key]
		if !known {
			return Statement{}, p.errAt(name, "unknown portscan setting '%s': expected ports, within or bantime (e.g. 'guard portscan ports 10 within 60s bantime 1h')", name.Text)
		}
		if seen[key] {
			return Statement{}, p.errAt(name, "'%s' given twice", key)
		}
		seen[key] = true
		v, ok := p.next()
		if !ok {
			return Statement{}, p.errEnd("'%s' needs %s", key, want)
		}
		bad := p.errAt(v, "invalid %s '%s': expected %s", key, v.Text, want)
		switch key {
		case "ports":
			n, err := strconv.Atoi(v.Text)
			if err != nil || n < 2 || n > 1000 {
				return Statement{}, bad
			}
			ps.Ports = n
		case "within":
			d, err := ParseDuration(v.Text)
			if err != nil || d < time.Second || d > 24*time.Hour || d%time.Second != 0 {
				return Statement{}, bad
			}
			ps.Within = d
		case "bantime":
			// ipset timeouts stop at 2147483 seconds (24.8 days).
			d, err := ParseDuration(v.Text)
			if err != nil || d < time.Second || d > 24*24*time.Hour || d%time.Second != 0 {
				return Statement{}, bad
			}
			ps.BanTime = d
		}
	}
	return Statement{Kind: StmtPortscan, Portscan: ps}, nil
}

// addBlocklist adds a list to the policy, refusing a second list of the
// same name.
func addBlocklist(p *Policy, bl Blocklist) error {
	for _, o := range p.Blocklists {
		if o.Name == bl.Name {
			return &Error{Pos: bl.Pos, Msg: fmt.Sprintf("blocklist '%s' is defined twice (first at line %d)", bl.Name, o.Pos.Line)}
		}
	}
	p.Blocklists = append(p.Blocklists, bl)
	return nil
}

// Blocklist returns the list of that name, if the policy has one.
func (p *Policy) Blocklist(name string) (*Blocklist, bool) {
	for i := range p.Blocklists {
		if p.Blocklists[i].Name == name {
			return &p.Blocklists[i], true
		}
	}
	return nil, false
}
