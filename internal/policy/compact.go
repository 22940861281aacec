package policy

import (
	"iter"
	"net/netip"
	"strings"
)

// A policy of 100,000 lines is mostly 'deny from ADDR'. Held as Rules, each
// is 328 bytes with 14 pointers the garbage collector scans: 33 MB at
// 100,000, most of what moat held while compiling and loading such a
// policy. A ruleStore holds a rule that fastRule read ('ACTION from|to
// ADDR') in 24 bytes without a pointer, and builds the whole Rule when
// asked: everything else of it follows from its line (the text, the
// column) and from the file's name. Other rules are held whole.
// TestCompactSameAsFastRule and FuzzCompactRule check that the rule built
// is the rule fastRule read.

// ruleEnt is one rule of a ruleStore.
type ruleEnt struct {
	addr [16]byte // the address, as netip.Addr.As16 gives it
	// line is the rule's line (1-based) for a compact rule, its index in
	// whole for a rule held whole.
	line  int32
	bits  uint8
	flags uint8
}

const (
	entWhole       = 1 << iota // held whole: line is the index in whole
	entV4                      // the address is IPv4 (else IPv6)
	entTo                      // the address is the destination (else the source)
	entActionShift = iota
)

// entActions are the actions a compact rule can have, by number.
var entActions = [...]Action{Allow, Deny, Reject}

// ruleStore is a list of rules in order, those fastRule reads compact.
type ruleStore struct {
	name  string   // the file the rules were read from (Pos.File)
	texts []string // the lines, by index (a compact rule's text is its line's)
	ents  []ruleEnt
	whole []Rule
}

// compactEnt returns r as a compact entry, if r is exactly what
// rule(that entry) builds: what fastRule gives for the line texts[line-1].
func (s *ruleStore) compactEnt(r *Rule) (ruleEnt, bool) {
	pfx, to := r.From, false
	if !pfx.IsValid() {
		pfx, to = r.To, true
	}
	return s.fastEnt(fastLine{action: r.Action, addr: pfx, to: to}, r.Pos.Line)
}

// fastEnt is the compact entry of what fastParse read from line (1-based).
func (s *ruleStore) fastEnt(f fastLine, line int) (ruleEnt, bool) {
	var e ruleEnt
	act := -1
	for i, a := range entActions {
		if f.action == a {
			act = i
		}
	}
	if act < 0 || !f.addr.IsValid() || f.addr.Addr().Zone() != "" {
		return e, false
	}
	if f.to {
		e.flags = entTo
	}
	if f.addr.Addr().Is4() {
		e.flags |= entV4
	}
	e.flags |= uint8(act) << entActionShift
	e.addr, e.bits, e.line = f.addr.Addr().As16(), uint8(f.addr.Bits()), int32(line)
	if int(e.line) != line || e.line < 1 || int(e.line) > len(s.texts) {
		return e, false
	}
	return e, true
}

// add appends r, read by fastRule from line r.Pos.Line (compact) or not.
func (s *ruleStore) add(r Rule, fast bool) {
	if fast {
		if e, ok := s.compactEnt(&r); ok {
			s.ents = append(s.ents, e)
			return
		}
	}
	s.ents = append(s.ents, s.wholeEnt(r))
}

// wholeEnt puts r in whole and returns its entry.
func (s *ruleStore) wholeEnt(r Rule) ruleEnt {
	s.whole = append(s.whole, r)
	return ruleEnt{line: int32(len(s.whole) - 1), flags: entWhole}
}

// len is the number of rules.
func (s *ruleStore) len() int { return len(s.ents) }

// isBlank is fastRule's blank.
func isBlank(c byte) bool { return c == ' ' || c == '\t' || c == '\r' }

// prefix is a compact entry's network.
func (e *ruleEnt) prefix() netip.Prefix {
	a := netip.AddrFrom16(e.addr)
	if e.flags&entV4 != 0 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, int(e.bits))
}

// rule builds rule i.
func (s *ruleStore) rule(i int) Rule {
	if e := &s.ents[i]; e.flags&entWhole != 0 {
		return s.whole[e.line]
	}
	var r Rule
	s.fill(i, &r)
	return r
}

// fill builds compact rule i into *r, in place (a copy of a built Rule
// cost as much as building it).
func (s *ruleStore) fill(i int, r *Rule) {
	e := &s.ents[i]
	line := s.texts[e.line-1]
	col := 0
	for col < len(line) && isBlank(line[col]) {
		col++
	}
	pfx := e.prefix()
	fam := FamilyV6
	if e.flags&entV4 != 0 {
		fam = FamilyV4
	}
	*r = Rule{Action: entActions[e.flags>>entActionShift], Direction: In, Proto: "any",
		Pos: Pos{File: s.name, Line: int(e.line), Col: col + 1}, Family: fam, Text: strings.TrimSpace(line)}
	if e.flags&entTo != 0 {
		r.To = pfx
	} else {
		r.From = pfx
	}
}

// setLine moves rule i to line (1-based).
func (s *ruleStore) setLine(i, line int) {
	e := &s.ents[i]
	if e.flags&entWhole != 0 {
		s.whole[e.line].Pos.Line = line
		return
	}
	e.line = int32(line)
}

// mayEqual is mayEqual(rule(i), r) without building rule i.
func (s *ruleStore) mayEqual(i int, r *Rule) bool {
	e := &s.ents[i]
	if e.flags&entWhole != 0 {
		return mayEqual(&s.whole[e.line], r)
	}
	if r.Direction != In || r.Proto != "any" || len(r.ToPort) != 0 || len(r.FromPort) != 0 {
		return false
	}
	if e.flags&entTo != 0 {
		return !r.From.IsValid() && r.To == e.prefix()
	}
	return !r.To.IsValid() && r.From == e.prefix()
}

// AddrRule is what an address-only rule says, read without building the
// whole Rule (ok false: rule i is another kind; ask Rule(i)).
type AddrRule struct {
	Action Action
	Prefix netip.Prefix
	To     bool // Prefix is the destination (else the source)
	Line   int
}

// NumRules is how many rules the policy has.
func (p *Policy) NumRules() int {
	if p.store != nil {
		return p.store.len()
	}
	return len(p.rules)
}

// Rule returns rule i (0-based) of the policy, in order.
func (p *Policy) Rule(i int) Rule {
	if p.store != nil {
		return p.store.rule(i)
	}
	return p.rules[i]
}

// RulePtr is Rule(i) without a copy where the policy holds the rule
// whole: a pointer to it, which the caller must not change; else the rule
// built into *scratch, and scratch.
func (p *Policy) RulePtr(i int, scratch *Rule) *Rule {
	if p.store == nil {
		return &p.rules[i]
	}
	if e := &p.store.ents[i]; e.flags&entWhole != 0 {
		return &p.store.whole[e.line]
	}
	p.store.fill(i, scratch)
	return scratch
}

// compactEnt is rule i's compact entry, nil when p holds the rule whole.
func (p *Policy) compactEnt(i int) *ruleEnt {
	if p.store == nil {
		return nil
	}
	if e := &p.store.ents[i]; e.flags&entWhole == 0 {
		return e
	}
	return nil
}

// RuleDirection is rule i's Direction, without building the rule.
func (p *Policy) RuleDirection(i int) Direction {
	if p.compactEnt(i) != nil {
		return In
	}
	var scratch Rule
	return p.RulePtr(i, &scratch).Direction
}

// RuleSeq yields every rule whole, in order, one at a time.
func (p *Policy) RuleSeq() iter.Seq2[int, Rule] {
	return func(yield func(int, Rule) bool) {
		for i := range p.NumRules() {
			if !yield(i, p.Rule(i)) {
				return
			}
		}
	}
}

// AllRules returns every rule whole, in order (for small policies and
// tests: at 100,000 rules this is 33 MB).
func (p *Policy) AllRules() []Rule {
	out := make([]Rule, p.NumRules())
	for i := range out {
		out[i] = p.Rule(i)
	}
	return out
}

// CompactAddrRule returns rule i as an AddrRule when the policy holds it
// compact: an 'ACTION from|to ADDR' line, direction in, any protocol and
// port, no interface, log, comment or rate.
func (p *Policy) CompactAddrRule(i int) (AddrRule, bool) {
	if p.store == nil {
		return AddrRule{}, false
	}
	e := &p.store.ents[i]
	if e.flags&entWhole != 0 {
		return AddrRule{}, false
	}
	return AddrRule{Action: entActions[e.flags>>entActionShift], Prefix: e.prefix(), To: e.flags&entTo != 0, Line: int(e.line)}, true
}

// RuleText is rule i's Text, without building the rule.
func (p *Policy) RuleText(i int) string {
	if e := p.compactEnt(i); e != nil {
		return strings.TrimSpace(p.store.texts[e.line-1])
	}
	return p.Rule(i).Text
}

// Whole is a copy of p that holds its rules whole (the same rules: the
// tests compare what readers make of the two forms).
func (p *Policy) Whole() *Policy {
	q := *p
	q.rules, q.store = p.AllRules(), nil
	return &q
}

// SetRules makes rules the policy's rules, held whole (a policy built in
// code; a policy read from a document is built by its parse).
func (p *Policy) SetRules(rules []Rule) {
	p.rules, p.store = rules, nil
}

// RulesOnly is a policy with p's rules and nothing else set.
func (p *Policy) RulesOnly() *Policy {
	return &Policy{rules: p.rules, store: p.store}
}

// ReleaseRules drops the policy's rules (NumRules is 0 after).
func (p *Policy) ReleaseRules() {
	p.rules, p.store = nil, nil
}
