// Package drift tells whether moat's rules in the kernel are still what
// moat loaded: it reads the layout of moat's table (nftables) or chains
// (iptables) — each chain's rules by their origin tag and verdict, chain
// policies and hooks, the jumps into moat's chains — and compares it with
// the layout of the script moat would load for the applied policy. A rule
// added, removed, reordered or given another verdict by hand ('nft add
// rule inet moat ...', 'iptables -I MOAT-INPUT ...'), a changed chain
// policy or a lost jump all show; counters, bans and rate-limit state do
// not count.
package drift

import (
	"bufio"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/termtext"
)

// Rule is one kernel rule as drift sees it.
type Rule struct {
	Tag     string // origin ID from the rule's comment ("L3", "builtin:icmp"); "" when it has none
	Verdict string // accept, drop, reject, return, log, jump ...; "" when it has none
	// Body is the whole rule as the kernel lists it (without counters),
	// when read from a kernel; "" from a script. Two kernels' layouts are
	// compared on it too (a rule changed in place keeps tag and verdict).
	Body string
}

func (r Rule) String() string {
	tag := r.Tag
	if tag == "" {
		tag = "a rule without moat's tag"
	}
	if r.Verdict == "" {
		return tag
	}
	return tag + " (" + r.Verdict + ")"
}

// Chain is one of moat's chains.
type Chain struct {
	Head  string // nftables: "hook input priority 0 policy drop"; iptables: ""
	Rules []Rule
}

// Layout is moat's rules in the kernel, or in a script.
type Layout struct {
	// Chains by name: "input" (nftables), "ip MOAT-INPUT" (iptables).
	Chains map[string]*Chain
	// Jumps present into moat's chains: "ip INPUT" (iptables only).
	Jumps map[string]bool
	// JumpConds are the conditions of those jumps that have one ("-m
	// conntrack ! --ctstate RELATED,ESTABLISHED"), by the same key (of
	// the first, when a chain has several).
	JumpConds map[string]string
	// JumpsMore counts the jumps beyond the first from one chain.
	JumpsMore map[string]int
	// Sets are the addresses of moat's policy sets (not bans, not
	// rate-limit state), by set name as the kernel knows it.
	Sets map[string]*addrs
	// Loaded are policy sets not read from the kernel, by name: the
	// nft.RangesHash of what moat loaded into them (ReadNftLoaded).
	Loaded map[string]string
	// Dormant: a table holding moat's rules carries the dormant flag ('nft
	// add table inet moat { flags dormant; }'; for iptables-nft, ip filter
	// and the others: one hand change that touches no chain, rule or set):
	// none of its base chains filters.
	Dormant bool
	// Hidden are rules of moat's iptables-nft chains holding nftables
	// expressions iptables-save does not show (ipt.HiddenRules).
	Hidden []string
	// Odd describes chains of iptables-nft's tables under names
	// iptables-save cannot print (ipt.OddChains): the text of the
	// tables is not read then, and the layout holds nothing else.
	Odd []string
}

func newLayout() *Layout {
	return &Layout{Chains: map[string]*Chain{}, Jumps: map[string]bool{}, JumpConds: map[string]string{}, JumpsMore: map[string]int{}, Sets: map[string]*addrs{}}
}

func (l *Layout) set(name string) *addrs {
	s, ok := l.Sets[name]
	if !ok {
		s = &addrs{}
		l.Sets[name] = s
	}
	return s
}

func (l *Layout) chain(name string) *Chain {
	c, ok := l.Chains[name]
	if !ok {
		c = &Chain{}
		l.Chains[name] = c
	}
	return c
}

// Empty says that moat has nothing loaded.
func (l *Layout) Empty() bool { return len(l.Chains) == 0 }

var verdicts = []string{"accept", "drop", "reject", "return", "jump", "goto", "queue"}

// ParseNftScript reads the layout of a script as the nft backend renders
// it ('moat show').
func ParseNftScript(script string) *Layout {
	l := newLayout()
	sc := bufio.NewScanner(strings.NewReader(script))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "add set inet moat "):
			name, spec, _ := strings.Cut(strings.TrimPrefix(line, "add set inet moat "), " ")
			if policySetSpec(spec) {
				s := l.set(name)
				if _, elems, ok := strings.Cut(spec, "elements = {"); ok {
					elems, _, _ = strings.Cut(elems, "}")
					s.addText(elems)
				}
			}
		case strings.HasPrefix(line, "add element inet moat "):
			name, spec, _ := strings.Cut(strings.TrimPrefix(line, "add element inet moat "), " ")
			if s, ok := l.Sets[name]; ok {
				s.addText(strings.Trim(spec, "{} "))
			}
		case strings.HasPrefix(line, "add chain inet moat "):
			name, spec, _ := strings.Cut(strings.TrimPrefix(line, "add chain inet moat "), " ")
			l.chain(name).Head = nftHead(spec)
		case strings.HasPrefix(line, "add rule inet moat "):
			rest := strings.TrimPrefix(line, "add rule inet moat ")
			name, body, _ := strings.Cut(rest, " ")
			r := Rule{}
			if i := strings.LastIndex(body, ` comment "`); i >= 0 {
				r.Tag = ruleset.OriginID(strings.TrimSuffix(body[i+len(` comment "`):], `"`))
				body = body[:i]
			}
			for _, w := range strings.Fields(body) {
				if slices.Contains(verdicts, w) {
					r.Verdict = w
				}
			}
			c := l.chain(name)
			c.Rules = append(c.Rules, r)
		}
	}
	return l
}

// nftHead normalizes "{ type filter hook input priority 0 ; policy drop ; }".
func nftHead(spec string) string {
	f := strings.Fields(strings.NewReplacer("{", " ", "}", " ", ";", " ").Replace(spec))
	var hook, prio, pol string
	for i := 0; i+1 < len(f); i++ {
		switch f[i] {
		case "hook":
			hook = f[i+1]
		case "priority":
			prio = f[i+1]
		case "policy":
			pol = f[i+1]
		}
	}
	if prio == "filter" {
		prio = "0"
	}
	if hook == "" {
		return ""
	}
	return fmt.Sprintf("hook %s priority %s policy %s", hook, prio, pol)
}

// ParseNftJSON reads the layout of `nft -j list table inet moat`.
func ParseNftJSON(data []byte) (*Layout, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("read nft -j output: %w", err)
	}
	l := newLayout()
	for _, obj := range doc.Nftables {
		if raw, ok := obj["table"]; ok {
			var tb struct {
				Flags json.RawMessage `json:"flags"`
			}
			if err := json.Unmarshal(raw, &tb); err != nil {
				return nil, fmt.Errorf("read nft table: %w", err)
			}
			// nft writes one flag as a string, several as a list.
			l.Dormant = strings.Contains(string(tb.Flags), `"dormant"`)
		}
		if raw, ok := obj["set"]; ok {
			var s struct {
				Name  string            `json:"name"`
				Flags []string          `json:"flags"`
				Elem  []json.RawMessage `json:"elem"`
			}
			if err := json.Unmarshal(raw, &s); err != nil {
				return nil, fmt.Errorf("read nft set: %w", err)
			}
			if slices.Contains(s.Flags, "interval") && !slices.Contains(s.Flags, "timeout") && !slices.Contains(s.Flags, "dynamic") {
				set := l.set(s.Name)
				for _, e := range s.Elem {
					set.addJSON(e)
				}
			}
		}
		if raw, ok := obj["chain"]; ok {
			var c struct {
				Name, Hook, Policy string
				Prio               json.Number `json:"prio"`
			}
			if err := json.Unmarshal(raw, &c); err != nil {
				return nil, fmt.Errorf("read nft chain: %w", err)
			}
			head := ""
			if c.Hook != "" {
				head = fmt.Sprintf("hook %s priority %s policy %s", c.Hook, c.Prio, c.Policy)
			}
			l.chain(c.Name).Head = head
		}
		if raw, ok := obj["rule"]; ok {
			var r struct {
				Chain   string                       `json:"chain"`
				Comment string                       `json:"comment"`
				Expr    []map[string]json.RawMessage `json:"expr"`
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				return nil, fmt.Errorf("read nft rule: %w", err)
			}
			rule := Rule{Tag: ruleset.OriginID(r.Comment)}
			for _, e := range r.Expr {
				for k := range e {
					if slices.Contains(verdicts, k) {
						rule.Verdict = k
					}
				}
			}
			c := l.chain(r.Chain)
			c.Rules = append(c.Rules, rule)
		}
	}
	return l, nil
}

// ParseIptScript reads the layout of the iptables-restore input the ipt
// backend renders ('moat show').
func ParseIptScript(script string) *Layout {
	l := newLayout()
	tmpNames := map[string]*addrs{}
	fam := ""
	sc := bufio.NewScanner(strings.NewReader(script))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# iptables-restore"):
			fam = "ip"
		case strings.HasPrefix(line, "# ip6tables-restore"):
			fam = "ip6"
		case strings.HasPrefix(line, "# ipset restore"):
			fam = "ipset"
		case strings.HasPrefix(line, "# "):
			fam = ""
		case fam == "ipset":
			ipsetLine(l, line, tmpNames)
		case fam != "":
			iptLine(l, fam, line, false)
		}
	}
	return l
}

// ipsetLine reads the ipset restore input of a policy set: filled under a
// temporary name, then renamed or swapped to its own.
func ipsetLine(l *Layout, line string, tmp map[string]*addrs) {
	f := strings.Fields(line)
	switch {
	case len(f) == 3 && f[0] == "add":
		s, ok := tmp[f[1]]
		if !ok {
			s = &addrs{}
			tmp[f[1]] = s
		}
		s.addText(f[2])
	case len(f) == 3 && (f[0] == "rename" || f[0] == "swap"):
		if s, ok := tmp[f[1]]; ok {
			l.Sets[f[2]] = s
		}
	}
}

// bookkeeping says whether a chain only records what moat loaded (nothing
// jumps to it).
func bookkeeping(chain string) bool {
	return chain == "moat_sync" || strings.HasSuffix(chain, " MOAT-GEN")
}

// sessionSet says whether a set holds the SSH sessions live when moat
// applied (the protected sets): the script rendered now cannot know them,
// so their addresses are not compared.
func sessionSet(name string) bool {
	name = strings.TrimPrefix(name, "moat-")
	return name == ruleset.ProtectSet4 || name == ruleset.ProtectSet6
}

// earlyList says whether a set is one of iptables' early lists (an
// ipset list:set whose members are the names of the sets the raw jump
// sends to moat's drops).
func earlyList(name string) bool { return name == "moat-early4" || name == "moat-early6" }

// earlyDiff says how an early list's members got differ from want, in
// any order (a list:set tests each member: the order decides nothing):
// "" when they are the same sets.
func earlyDiff(want, got []string) string {
	var parts []string
	for _, m := range want {
		if !slices.Contains(got, m) {
			parts = append(parts, "-"+m+" (its sources are no longer dropped)")
		}
	}
	for _, m := range got {
		if !slices.Contains(want, m) {
			parts = append(parts, "+"+m)
		}
	}
	return strings.Join(parts, ", ")
}

// ParseIpsetList reads `ipset list NAME` into l.Sets[name].
func ParseIpsetList(l *Layout, name string, data []byte) {
	s := l.set(name)
	members := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "Members:") {
			members = true
			continue
		}
		if members && strings.TrimSpace(line) != "" {
			word, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
			if strings.TrimSpace(rest) != "" {
				// A flag (nomatch: a hole in the network that holds
				// the address), a timeout, a comment: moat loads plain
				// networks only, so this member is compared as text.
				s.bad = append(s.bad, strings.TrimSpace(line))
				continue
			}
			s.addText(word)
		}
	}
}

// ParseIptSave reads the layout of `iptables-save` (v4) and
// `ip6tables-save` (v6): moat's chains of the filter and raw tables.
func ParseIptSave(v4, v6 []byte) *Layout {
	l := newLayout()
	for fam, data := range map[string][]byte{"ip": v4, "ip6": v6} {
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			iptLine(l, fam, sc.Text(), true)
		}
	}
	return l
}

// iptLine reads one line; body keeps the whole line with each rule (a
// kernel's listing, not a script).
func iptLine(l *Layout, fam, line string, body bool) {
	f := strings.Fields(line)
	switch {
	case strings.HasPrefix(line, ":MOAT-"):
		l.chain(fam + " " + strings.TrimPrefix(f[0], ":"))
	case len(f) >= 3 && (f[0] == "-A" || f[0] == "-I") && strings.HasPrefix(f[1], "MOAT-"):
		r := Rule{Tag: ruleset.OriginID(ipt.CommentOf(line))}
		if body {
			r.Body = fam + " " + line
		}
		if i := slices.Index(f, "-j"); i >= 0 && i+1 < len(f) {
			r.Verdict = strings.ToLower(f[i+1])
		}
		c := l.chain(fam + " " + f[1])
		c.Rules = append(c.Rules, r)
	case len(f) >= 3 && (f[0] == "-A" || f[0] == "-I") && f[len(f)-2] == "-j" && f[len(f)-1] == "MOAT-"+f[1]:
		// A jump into moat's chain from a built-in one, of one of moat's
		// forms (a script inserts it: "-I INPUT 1 ...").
		rest := f[2:]
		if f[0] == "-I" {
			if _, err := strconv.Atoi(f[2]); err != nil {
				return
			}
			rest = f[3:]
		}
		spec := "-A " + f[1] + " " + strings.Join(rest, " ")
		if builtin, cond, ok := ipt.ParseJump(spec); ok {
			key := fam + " " + builtin
			switch {
			case l.Jumps[key]:
				l.JumpsMore[key]++
			case cond != "":
				l.JumpConds[key] = cond
			}
			l.Jumps[key] = true
		}
	}
}

// Compare lists how got (the kernel) differs from want (what moat loaded),
// in words, most telling first; nil when they agree.
func Compare(want, got *Layout) []string {
	if len(got.Odd) > 0 {
		return slices.Clone(got.Odd)
	}
	var out []string
	if got.Dormant && !want.Dormant {
		out = append(out, "a table holding moat's rules was made dormant: none of its chains filters")
	}
	if len(want.Hidden) == 0 {
		out = append(out, got.Hidden...)
	}
	names := map[string]bool{}
	for n := range want.Chains {
		names[n] = true
	}
	for n := range got.Chains {
		names[n] = true
	}
	var sorted []string
	for n := range names {
		sorted = append(sorted, n)
	}
	slices.Sort(sorted)
	for _, n := range sorted {
		w, g := want.Chains[n], got.Chains[n]
		switch {
		case g == nil:
			out = append(out, fmt.Sprintf("chain %s is missing", n))
			continue
		case w == nil:
			out = append(out, fmt.Sprintf("chain %s was added (moat does not make it)", n))
			continue
		}
		if w.Head != g.Head {
			out = append(out, fmt.Sprintf("chain %s: %s, moat loaded %s", n, orNone(g.Head), orNone(w.Head)))
		}
		out = append(out, compareRules(n, w.Rules, g.Rules)...)
	}
	var setNames []string
	for n := range want.Sets {
		setNames = append(setNames, n)
	}
	slices.Sort(setNames)
	for _, n := range setNames {
		g, ok := got.Sets[n]
		if !ok {
			out = append(out, fmt.Sprintf("set %s is missing", n))
			continue
		}
		if earlyList(n) {
			if d := earlyDiff(want.Sets[n].bad, g.bad); d != "" {
				out = append(out, fmt.Sprintf("set %s holds other sets than moat loaded: %s", n, d))
			}
			continue
		}
		if d := want.Sets[n].diff(g); d != "" && !sessionSet(n) {
			out = append(out, fmt.Sprintf("set %s holds other addresses than moat loaded: %s", n, d))
		}
	}
	var jumps []string
	for j := range want.Jumps {
		fam, builtin, _ := strings.Cut(j, " ")
		prog := map[string]string{"ip": "iptables", "ip6": "ip6tables"}[fam]
		switch {
		case !got.Jumps[j]:
			jumps = append(jumps, fmt.Sprintf("%s chain %s no longer jumps to MOAT-%s", prog, builtin, builtin))
		case got.JumpConds[j] != want.JumpConds[j]:
			jumps = append(jumps, fmt.Sprintf("%s chain %s jumps to MOAT-%s %s, moat loaded %s", prog, builtin, builtin, jumpWhen(got.JumpConds[j]), jumpWhen(want.JumpConds[j])))
		}
		if n := got.JumpsMore[j]; n > 0 && want.JumpsMore[j] == 0 {
			jumps = append(jumps, fmt.Sprintf("%s chain %s jumps to MOAT-%s %d times, moat loaded one jump", prog, builtin, builtin, n+1))
		}
	}
	slices.Sort(jumps)
	out = append(out, jumps...)
	for i := range out {
		out[i] = termtext.Printable(out[i])
	}
	return out
}

// jumpWhen says when a jump of condition cond jumps.
func jumpWhen(cond string) string {
	if cond == "" {
		return "for every packet"
	}
	return "only where " + strconv.Quote(cond)
}

func orNone(s string) string {
	if s == "" {
		return "no hook"
	}
	return s
}

// compareRules says how a chain's rules differ: rules added, missing, or
// changed, by their tags.
func compareRules(chain string, want, got []Rule) []string {
	if slices.Equal(want, got) {
		return nil
	}
	// Bodies count only when both sides have them (two kernels), and not
	// in the chains no packet goes through (moat_sync, MOAT-GEN): their
	// hashes cover the protected sets, whose addresses are the sessions
	// logged in at the apply, which a scratch kernel cannot know.
	bodies := hasBodies(want) && hasBodies(got) && !bookkeeping(chain)
	origWant, origGot := want, got
	want, got = withoutBodies(want), withoutBodies(got)
	if slices.Equal(want, got) {
		if !bodies {
			return nil
		}
		var changed []string
		for i := range origWant {
			if origWant[i].Body != origGot[i].Body {
				r := origWant[i].String()
				if names := undecodedNames(origGot[i].Body); len(names) > 0 {
					r += " (its nftables expressions now: " + strings.Join(names, ", ") + ")"
				}
				changed = append(changed, r)
			}
		}
		return []string{fmt.Sprintf("chain %s: %s changed in place (tag and verdict kept): %s", chain, plural(len(changed), "rule"), short(changed))}
	}
	count := func(rs []Rule) map[Rule]int {
		m := map[Rule]int{}
		for _, r := range rs {
			m[r]++
		}
		return m
	}
	wc, gc := count(want), count(got)
	var out []string
	var added, missing []string
	for _, r := range got {
		if gc[r] > wc[r] {
			added = append(added, r.String())
			gc[r]--
		}
	}
	gc = count(got)
	for _, r := range want {
		if wc[r] > gc[r] {
			missing = append(missing, r.String())
			wc[r]--
		}
	}
	if len(added) > 0 {
		out = append(out, fmt.Sprintf("chain %s has %s moat did not load: %s", chain, plural(len(added), "rule"), short(added)))
	}
	if len(missing) > 0 {
		out = append(out, fmt.Sprintf("chain %s lacks %s moat loaded: %s", chain, plural(len(missing), "rule"), short(missing)))
	}
	if len(out) == 0 {
		out = append(out, fmt.Sprintf("chain %s holds moat's rules in another order", chain))
	}
	return out
}

// undecodedNames is the names of the expressions of a rule read raw
// (undecodedBody: google/nftables could not decode one of them, which
// the admin is shown), in order; nil for any other body.
func undecodedNames(body string) []string {
	i := strings.LastIndex(body, " undecoded[") // appended last
	if i < 0 {
		return nil
	}
	raw := body[i+len(" undecoded["):]
	var out []string
	for raw != "" && raw[0] == '"' {
		q, err := strconv.QuotedPrefix(raw)
		if err != nil {
			break
		}
		name, _ := strconv.Unquote(q)
		shown := strconv.QuoteToASCII(name) // the kernel's text: never raw on a terminal
		out = append(out, shown[1:len(shown)-1])
		raw = raw[len(q):]
		// its data (hex, or none), then the next
		_, raw, _ = strings.Cut(raw, " ")
		for raw != "" && raw[0] != '"' {
			_, raw, _ = strings.Cut(raw, " ")
		}
	}
	return out
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// short names the first four distinct items, in order, and counts the
// other distinct ones. One pass with a set: a chain of 100,000 rules
// flushed by hand lacks 100,000 distinct tags, and a search of the list
// kept for each (as it was) took n²/2 string compares, tens of seconds
// of every command and status.
func short(items []string) string {
	seen := make(map[string]bool, len(items))
	var first []string
	n := 0
	for _, s := range items {
		if seen[s] {
			continue
		}
		seen[s] = true
		if n++; n <= 4 {
			first = append(first, s)
		}
	}
	if n > 4 {
		return strings.Join(first, ", ") + fmt.Sprintf(" and %d more", n-4)
	}
	return strings.Join(first, ", ")
}

// Missing returns the tags of rules that want has and got lacks (in any
// chain): the policy lines whose rules are gone from the kernel.
func Missing(want, got *Layout) map[string]bool {
	out := map[string]bool{}
	if len(got.Odd) > 0 {
		return out // not read
	}
	for name, w := range want.Chains {
		have := map[string]int{}
		if g := got.Chains[name]; g != nil {
			for _, r := range g.Rules {
				have[r.Tag]++
			}
		}
		for _, r := range w.Rules {
			if have[r.Tag] > 0 {
				have[r.Tag]--
			} else if r.Tag != "" {
				out[r.Tag] = true
			}
		}
	}
	return out
}

func hasBodies(rs []Rule) bool {
	for _, r := range rs {
		if r.Body == "" {
			return false
		}
	}
	return len(rs) > 0
}

func withoutBodies(rs []Rule) []Rule {
	out := make([]Rule, len(rs))
	for i, r := range rs {
		r.Body = ""
		out[i] = r
	}
	return out
}
