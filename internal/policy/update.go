package policy

import (
	"strings"
)

// MatchKey is the canonical form of what a rule matches: direction,
// interfaces, protocol, addresses, ports and family, but not its action,
// logging, rate or comment. Two rules with the same MatchKey compete for
// exactly the same packets, and only the first can ever decide; ufw then
// updates the existing rule instead of adding a dead one.
func (r Rule) MatchKey() string {
	var b strings.Builder
	b.WriteString(string(r.Direction))
	for _, s := range []string{r.InIface, r.OutIface, r.Proto,
		AddrString(r.From), r.FromPort.String(), AddrString(r.To), r.ToPort.String(), string(r.Family)} {
		b.WriteByte('|')
		b.WriteString(s)
	}
	return b.String()
}

// FindMatch returns the number (1-based) of the first rule that matches
// the same packets as r, with that rule, or 0. As in ufw, a rule naming an
// application profile matches only a rule naming the same profiles: 'allow
// OpenSSH' is a rule of its own next to 'limit ssh' (and does not replace
// it, dropping the rate limit).
func (d *Document) FindMatch(r Rule, svc Services) (int, Rule) {
	want := r.MatchKey()
	var match Rule
	n := d.eachMayEqual(&r, svc, func(_ int, got Rule) bool {
		if got.MatchKey() == want && got.FromApp == r.FromApp && got.ToApp == r.ToApp {
			match = got
			return true
		}
		return false
	})
	return n, match
}

// ReplaceRule writes line in place of rule number n (1-based), keeping the
// old line's indentation and '#' comment, and returns the old rule text.
func (d *Document) ReplaceRule(n int, line string) (string, error) {
	idx := d.ruleLines()
	if n < 1 || n > len(idx) {
		_, err := d.DeleteRule(n) // the same message for a bad number
		return "", err
	}
	at := idx[n-1]
	old := d.Lines[at]
	text := ruleText(old)
	start := strings.Index(old, text)
	if start < 0 {
		d.Lines[at] = line
		return strings.TrimSpace(old), nil
	}
	d.Lines[at] = old[:start] + line + old[start+len(text):]
	return text, nil
}

// MoveRule takes rule n (1-based) out and puts line before rule at, as
// numbered once n is out. The old
// line's '#' comment goes with it, as ReplaceRule keeps it; the old rule
// text is returned.
func (d *Document) MoveRule(n, at int, line string) (string, error) {
	idx := d.ruleLines()
	if n < 1 || n > len(idx) {
		return d.DeleteRule(n) // the same message for a bad number
	}
	old := d.Lines[idx[n-1]]
	text := ruleText(old)
	if start := strings.Index(old, text); start >= 0 {
		if trail := old[start+len(text):]; strings.TrimSpace(trail) != "" {
			line += trail
		}
	}
	if _, err := d.DeleteRule(n); err != nil {
		return "", err
	}
	if err := d.InsertRule(at, line); err != nil {
		return "", err
	}
	return text, nil
}
