package policy

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
)

// A command that edits a 100,000-line policy used to parse every line
// two or three times: the search for the rule to replace or delete, the
// numbering of rules, then the whole policy to validate and apply. The
// document now keeps what each line parsed to (parsed), so each line is
// parsed once per command.
//
// The cache can never give what a fresh parse would not: a line is
// reused only if its text is the very text parsed, at the same index of
// a document with the same name, service names and application profiles
// (the only inputs of a line's parse besides its number, which is set
// again on every use). The cache holds the very maps it was parsed with
// (not their addresses, which a map allocated after the old one was freed
// could take over), so another map is always seen as another; the maps
// are not changed in place once given to a Document. Edits made through the Document's methods keep the
// cache in step; any other change of Lines (another length) drops it.

// lineKind is what a line parsed to.
type lineKind uint8

const (
	lineBlank   lineKind = iota // blank or comment only
	lineRule                    // a valid rule: its rules are in parsed.rules
	lineOther                   // a valid statement that is not a rule
	lineBadRule                 // invalid, but starts with a rule word (numbered as a rule)
	lineBad                     // invalid
)

// parsed is the document's lines parsed: kinds[i] and rules.texts[i]
// for line i; the rules of the rule lines, in order, in rules (nrules[i]
// of them for line i: more than one for a profile with several
// protocols), those fastRule read compact.
type parsed struct {
	name   string
	svc    Services // the maps parsed with, held so no other map can take their address
	apps   Apps
	kinds  []lineKind
	nrules []uint8
	rules  ruleStore
}

// sameMap reports whether a and b are the very same map (or both nil):
// the cache is valid for the very services and profiles it was built
// with. The cache holds the map it compares with, so that map is alive
// and no other map can be at its address.
func sameMap[M ~map[K]V, K comparable, V any](a, b M) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// isRuleWord reports the words that start a rule.
func isRuleWord(w string) bool {
	switch w {
	case "allow", "deny", "reject", "limit", "route":
		return true
	}
	return false
}

// parseOne parses line i for the cache, adding its rules to rules.
func (d *Document) parseOne(i int, svc Services, rules *ruleStore) lineKind {
	if f, ok := fastParse(d.Lines[i]); ok {
		if e, ok := rules.fastEnt(f, i+1); ok {
			rules.ents = append(rules.ents, e)
		} else {
			r, _ := fastRule(d.Lines[i], Pos{File: d.Name, Line: i + 1})
			rules.add(r, true)
		}
		return lineRule
	}
	st, ok, err := lineStatement(d, i, svc)
	switch {
	case err != nil:
		if toks, lerr := Lex(d.Lines[i]); lerr == nil && len(toks) > 0 && isRuleWord(strings.ToLower(toks[0].Text)) {
			return lineBadRule
		}
		return lineBad
	case !ok:
		return lineBlank
	case st.Kind == StmtRule:
		rules.add(st.Rule, false)
		for _, r := range st.More {
			rules.add(r, false)
		}
		return lineRule
	}
	return lineOther
}

// index returns the document parsed with svc, parsing only what is not
// cached already.
func (d *Document) index(svc Services) *parsed {
	c := d.cache
	if c == nil || c.name != d.Name || !sameMap(c.svc, svc) || !sameMap(c.apps, d.Apps) || len(c.rules.texts) != len(d.Lines) {
		c = &parsed{name: d.Name, svc: svc, apps: d.Apps,
			kinds: make([]lineKind, len(d.Lines), len(d.Lines)+lineSlack), nrules: make([]uint8, len(d.Lines), len(d.Lines)+lineSlack),
			rules: ruleStore{name: d.Name, texts: make([]string, len(d.Lines), len(d.Lines)+lineSlack), ents: make([]ruleEnt, 0, len(d.Lines)+lineSlack)}}
		for i := range d.Lines {
			n := c.rules.len()
			c.rules.texts[i] = d.Lines[i]
			c.kinds[i] = d.parseOne(i, svc, &c.rules)
			c.nrules[i] = uint8(c.rules.len() - n)
		}
		d.cache = c
		return c
	}
	k := 0 // index in rules of line i's first rule
	for i, line := range d.Lines {
		n := int(c.nrules[i])
		if line != c.rules.texts[i] {
			c.rules.texts[i] = line
			fresh := ruleStore{name: c.rules.name, texts: c.rules.texts}
			c.kinds[i] = d.parseOne(i, svc, &fresh)
			ents := make([]ruleEnt, len(fresh.ents))
			for j, e := range fresh.ents {
				if e.flags&entWhole != 0 {
					e = c.rules.wholeEnt(fresh.whole[e.line])
				}
				ents[j] = e
			}
			c.rules.ents = slices.Replace(c.rules.ents, k, k+n, ents...)
			c.nrules[i], n = uint8(len(ents)), len(ents)
		}
		for j := k; j < k+n; j++ {
			c.rules.setLine(j, i+1)
		}
		k += n
	}
	return c
}

// cachedRuleLines is ruleLines from the cache, if there is a valid one.
func (d *Document) cachedRuleLines() ([]int, bool) {
	c := d.cache
	if c == nil || c.name != d.Name || !sameMap(c.apps, d.Apps) || len(c.rules.texts) != len(d.Lines) {
		return nil, false
	}
	idx := make([]int, 0, len(c.rules.ents))
	for i, line := range d.Lines {
		if line != c.rules.texts[i] {
			return nil, false
		}
		if c.kinds[i] == lineRule || c.kinds[i] == lineBadRule {
			idx = append(idx, i)
		}
	}
	return idx, true
}

// firstRule returns the index in c.rules.ents of line i's first rule.
func (c *parsed) firstRule(i int) int {
	k := 0
	for _, n := range c.nrules[:i] {
		k += int(n)
	}
	return k
}

// insertLine keeps the cache in step with a line inserted at index at
// (parsed when next needed).
func (d *Document) insertLine(at int, line string) {
	c := d.cache
	if c == nil || len(c.rules.texts) != len(d.Lines) {
		d.cache = nil
		return
	}
	// A text that cannot be the line's: index parses it.
	c.rules.texts = slices.Insert(c.rules.texts, at, line+"\n")
	c.kinds = slices.Insert(c.kinds, at, lineBad)
	c.nrules = slices.Insert(c.nrules, at, 0)
}

// deleteLine keeps the cache in step with the line at index at removed.
func (d *Document) deleteLine(at int) {
	c := d.cache
	if c == nil || len(c.rules.texts) != len(d.Lines) {
		d.cache = nil
		return
	}
	k := c.firstRule(at)
	c.rules.ents = slices.Delete(c.rules.ents, k, k+int(c.nrules[at]))
	c.rules.texts = slices.Delete(c.rules.texts, at, at+1)
	c.kinds = slices.Delete(c.kinds, at, at+1)
	c.nrules = slices.Delete(c.nrules, at, at+1)
}

// fastRule parses the commonest line of a large policy, 'ACTION from
// ADDR' or 'ACTION to ADDR' (a blocklist written as rules), without the
// lexer and the general parser: it gives exactly what they give
// (FuzzFastRule), or ok false, and then the general parser reads the line
// and reports what is wrong with it. Only lowercase allow, deny and
// reject, printable ASCII words and a valid address take this path.
func fastRule(line string, pos Pos) (r Rule, ok bool) {
	f, ok := fastParse(line)
	if !ok {
		return Rule{}, false
	}
	r = Rule{Action: f.action, Direction: In, Proto: "any", Pos: pos, Family: familyOf(f.addr), Text: strings.TrimSpace(line)}
	r.Pos.Col = f.col
	if f.to {
		r.To = f.addr
	} else {
		r.From = f.addr
	}
	return r, true
}

// fastLine is what fastParse read: the action, the address, which side
// it is on, and the column of the first word.
type fastLine struct {
	action Action
	addr   netip.Prefix
	to     bool
	col    int
}

// fastParse is fastRule's reading of line, without building the Rule.
func fastParse(line string) (f fastLine, ok bool) {
	if len(line) > maxLineLen {
		return f, false
	}
	var words [3]string
	var cols [3]int
	n := 0
	for i := 0; i < len(line); {
		c := line[i]
		if c == ' ' || c == '\t' || c == '\r' {
			i++
			continue
		}
		if n == len(words) {
			return f, false
		}
		start := i
		for i < len(line) && line[i] != ' ' && line[i] != '\t' && line[i] != '\r' {
			c := line[i]
			if c <= 0x20 || c >= 0x7f || c == '\'' || c == '"' || c == '#' {
				return f, false
			}
			i++
		}
		words[n], cols[n] = line[start:i], start+1
		n++
	}
	if n != len(words) || (words[1] != "from" && words[1] != "to") {
		return f, false
	}
	switch Action(words[0]) {
	case Allow:
		f.action = Allow
	case Deny:
		f.action = Deny
	case Reject:
		f.action = Reject
	default:
		return f, false
	}
	addr, _, msg := parseAddrAt(words[2])
	if msg != "" || !addr.IsValid() {
		return f, false
	}
	f.addr, f.to, f.col = addr, words[1] == "to", cols[0]
	return f, true
}
