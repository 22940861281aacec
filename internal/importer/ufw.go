// Package importer turns the state of other firewall tools (ufw,
// fail2ban) into moat policy lines, naming what it cannot carry over.
package importer

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/termtext"
)

// Result is an imported policy: its lines, and notes on what could not be
// carried over or needs the admin's attention.
type Result struct {
	Lines []string
	Notes []string
}

// Text is the policy file: a header, the notes as comments, the lines.
func (r *Result) Text(source string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# moat policy imported from %s by 'moat import'.\n", source)
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "# NOTE: %s\n", n)
	}
	for _, l := range r.Lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// UFWSource says where ufw's state is.
type UFWSource struct {
	Dir      string // ufw's configuration: user.rules, user6.rules, ufw.conf
	Defaults string // /etc/default/ufw (default policies, IPV6)
}

// maxStateFile bounds what is read from another tool's files.
const maxStateFile = 16 << 20

func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read only
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if st.Size() > maxStateFile {
		return nil, fmt.Errorf("%s: %d bytes is more than the %d read", path, st.Size(), maxStateFile)
	}
	data := make([]byte, st.Size())
	if _, err := f.ReadAt(data, 0); err != nil && st.Size() > 0 {
		return nil, err
	}
	return data, nil
}

// shellVars reads KEY=VALUE lines (ufw.conf, /etc/default/ufw).
func shellVars(data []byte) map[string]string {
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		vars[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
	}
	return vars
}

// maxNoteValue bounds the bytes of another tool's value that a note
// quotes.
const maxNoteValue = 64

// quoteValue is a value read from ufw's files as a note quotes it: Go
// quoted (no raw control character, carriage return or bidi override
// reaches the terminal or the '# NOTE:' line of the policy file) and cut
// to maxNoteValue bytes, so that the note stays within a policy line's
// 4096 bytes.
func quoteValue(v string) string {
	if c, cut := termtext.Cut(v, maxNoteValue); cut {
		return strconv.Quote(c) + fmt.Sprintf("... (%d bytes)", len(v))
	}
	return strconv.Quote(v)
}

// tuple is one '### tuple ###' line of user.rules or user6.rules.
type tuple struct {
	route            bool
	action, log      string
	proto            string
	dport, dst       string
	sport, src       string
	dapp, sapp       string
	dir, inIf, outIf string
	comment          string
	line             int
	file             string
}

// key is the tuple with 'any' addresses spelled alike in both families,
// to pair the IPv4 and IPv6 twins of one ufw rule.
func (t tuple) key() string {
	return strings.Join([]string{fmt.Sprint(t.route), t.action, t.log, t.proto, t.dport, anyAddr(t.dst), t.sport,
		anyAddr(t.src), t.dapp, t.sapp, t.dir, t.inIf, t.outIf, t.comment}, "|")
}

func anyAddr(a string) string {
	if a == "0.0.0.0/0" || a == "::/0" {
		return "any"
	}
	return a
}

func (t tuple) hasAddr() bool { return anyAddr(t.dst) != "any" || anyAddr(t.src) != "any" }

// parseTuples reads the tuple lines of one rules file.
func parseTuples(file string, data []byte) ([]tuple, []string) {
	var out []tuple
	var notes []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		rest, ok := strings.CutPrefix(sc.Text(), "### tuple ###")
		if !ok {
			continue
		}
		t, msg := parseTuple(strings.Fields(rest))
		if msg != "" {
			notes = append(notes, fmt.Sprintf("%s:%d: not imported: %s", file, n, msg))
			continue
		}
		t.line, t.file = n, file
		out = append(out, t)
	}
	return out, notes
}

func parseTuple(f []string) (tuple, string) {
	var t tuple
	if len(f) > 0 && strings.HasPrefix(f[len(f)-1], "comment=") {
		raw, err := hex.DecodeString(strings.TrimPrefix(f[len(f)-1], "comment="))
		if err != nil {
			return t, "bad comment encoding"
		}
		t.comment = string(raw)
		f = f[:len(f)-1]
	}
	for _, w := range f {
		// The lines and notes made from the fields reach the terminal
		// and the policy file.
		if w != termtext.Printable(w) {
			return t, fmt.Sprintf("field %s holds control characters", quoteValue(w))
		}
	}
	switch len(f) {
	case 7:
		t.dir = f[6]
	case 9:
		t.dapp, t.sapp, t.dir = f[6], f[7], f[8]
	default:
		return t, fmt.Sprintf("expected 7 or 9 fields, found %d", len(f))
	}
	act := f[0]
	if a, ok := strings.CutPrefix(act, "route:"); ok {
		t.route, act = true, a
	}
	t.action, t.log, _ = strings.Cut(act, "_")
	switch t.action {
	case "allow", "deny", "reject", "limit":
	default:
		return t, fmt.Sprintf("unknown action %s", quoteValue(f[0]))
	}
	switch t.log {
	case "", "log", "log-all":
	default:
		return t, fmt.Sprintf("unknown logging %s", quoteValue(f[0]))
	}
	t.proto, t.dport, t.dst, t.sport, t.src = f[1], f[2], f[3], f[4], f[5]
	for _, app := range []*string{&t.dapp, &t.sapp} {
		if *app == "-" {
			*app = ""
		}
		// ufw escapes spaces in profile names as %20.
		*app = strings.ReplaceAll(*app, "%20", " ")
	}
	for _, part := range strings.Split(t.dir, "!") {
		d, iface, _ := strings.Cut(part, "_")
		switch d {
		case "in":
			t.inIf = iface
		case "out":
			t.outIf = iface
		default:
			return t, fmt.Sprintf("unknown direction %s", quoteValue(t.dir))
		}
	}
	t.dir, _, _ = strings.Cut(t.dir, "_")
	return t, ""
}

// words turns a tuple into moat's rule words; family "" keeps 'any'
// addresses as any, "4"/"6" writes them as 0.0.0.0/0 or ::/0 so the rule
// stays in one family.
func (t tuple) words(family string) ([]string, []string) {
	var w, notes []string
	if t.route {
		w = append(w, "route")
	}
	w = append(w, t.action)
	if t.route {
		if t.inIf != "" {
			w = append(w, "in", "on", t.inIf)
		}
		if t.outIf != "" {
			w = append(w, "out", "on", t.outIf)
		}
	} else {
		w = append(w, t.dir)
		if t.inIf != "" {
			w = append(w, "on", t.inIf)
		} else if t.outIf != "" {
			w = append(w, "on", t.outIf)
		}
	}
	if t.log != "" {
		w = append(w, t.log)
	}
	if t.proto != "any" && t.dapp == "" && t.sapp == "" {
		w = append(w, "proto", t.proto)
	}
	addr := func(a string) string {
		if anyAddr(a) != "any" {
			return a
		}
		switch family {
		case "4":
			return "0.0.0.0/0"
		case "6":
			return "::/0"
		}
		return "any"
	}
	clause := func(word, a, port, app string, always bool) {
		a = addr(a)
		if a == "any" && port == "any" && app == "" && !always {
			return
		}
		w = append(w, word, a)
		if app != "" {
			w = append(w, "app", app)
		} else if port != "any" {
			w = append(w, "port", port)
		}
	}
	clause("from", t.src, t.sport, t.sapp, false)
	// At least one clause: 'allow in to any' rather than 'allow in'.
	clause("to", t.dst, t.dport, t.dapp, addr(t.src) == "any" && t.sport == "any" && t.sapp == "")
	if c := t.comment; c != "" {
		clean := policy.CleanComment(c)
		if clean != c {
			notes = append(notes, fmt.Sprintf("%s:%d: the comment lost characters moat does not allow in comments (quotes, backslashes, '`', '$', control characters, bidirectional controls, bytes past the first 100)", t.file, t.line))
		}
		if clean != "" {
			w = append(w, "comment", clean)
		}
	}
	return w, notes
}

// ImportUFW reads ufw's state and returns the equivalent moat policy.
// IPv4 and IPv6 twins of one ufw rule become one rule; the order of each
// family is kept; rules that name application profiles keep the name.
func ImportUFW(src UFWSource) (*Result, error) {
	res := &Result{}
	v4data, err := readSmall(filepath.Join(src.Dir, "user.rules"))
	if err != nil {
		return nil, fmt.Errorf("import ufw: %w", err)
	}
	v6data, err := readSmall(filepath.Join(src.Dir, "user6.rules"))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("import ufw: %w", err)
	}
	defs := map[string]string{}
	if src.Defaults != "" {
		data, err := readSmall(src.Defaults)
		switch {
		case err == nil:
			defs = shellVars(data)
		case os.IsNotExist(err):
			res.Notes = append(res.Notes, fmt.Sprintf("%s is missing: ufw's default policies are unknown; moat's defaults apply (deny incoming, allow outgoing)", src.Defaults))
		default:
			return nil, fmt.Errorf("import ufw: %w", err)
		}
	}
	conf := map[string]string{}
	if data, err := readSmall(filepath.Join(src.Dir, "ufw.conf")); err == nil {
		conf = shellVars(data)
	}

	ipv6 := !strings.EqualFold(defs["IPV6"], "no")
	for _, d := range []struct{ key, dir string }{
		{"DEFAULT_INPUT_POLICY", "incoming"}, {"DEFAULT_OUTPUT_POLICY", "outgoing"}, {"DEFAULT_FORWARD_POLICY", "routed"},
	} {
		v, ok := defs[d.key]
		if !ok {
			continue
		}
		act := map[string]string{"DROP": "deny", "REJECT": "reject", "ACCEPT": "allow"}[strings.ToUpper(v)]
		if act == "" {
			res.Notes = append(res.Notes, fmt.Sprintf("%s: unknown %s %s: not imported", src.Defaults, d.key, quoteValue(v)))
			continue
		}
		res.Lines = append(res.Lines, fmt.Sprintf("default %s %s", act, d.dir))
	}
	if v := defs["DEFAULT_APPLICATION_POLICY"]; v != "" && !strings.EqualFold(v, "SKIP") {
		res.Notes = append(res.Notes, fmt.Sprintf("DEFAULT_APPLICATION_POLICY=%s is not carried over: moat adds no rules when a profile is installed", quoteValue(v)))
	}
	if strings.EqualFold(conf["ENABLED"], "yes") {
		res.Notes = append(res.Notes, "ufw is enabled: run 'ufw disable' before 'moat enable', so that one firewall decides")
	}
	// ufw's logging levels are moat's ('moat logging'); ufw.conf has no
	// LOGLEVEL until 'ufw logging' sets one, and then "off" is moat's
	// default.
	if lv := strings.ToLower(conf["LOGLEVEL"]); lv != "" && lv != "off" {
		if lv == "on" {
			lv = "low"
		}
		switch lv {
		case "low", "medium", "high", "full":
			res.Lines = append(res.Lines, "logging "+lv)
		default:
			res.Notes = append(res.Notes, fmt.Sprintf("ufw's LOGLEVEL=%s is not a level (off, low, medium, high, full): not imported", quoteValue(conf["LOGLEVEL"])))
		}
	}
	res.Notes = append(res.Notes, "ufw's before.rules and after.rules (ping allowed, DHCP, mDNS, UPnP, your own additions) are not imported: moat has its own built-ins ('moat show'); ping follows the policy, add 'allow proto icmp from any' and 'allow proto ipv6-icmp from any' to keep it")

	v4, notes := parseTuples(filepath.Join(src.Dir, "user.rules"), v4data)
	res.Notes = append(res.Notes, notes...)
	var v6 []tuple
	if ipv6 {
		v6, notes = parseTuples(filepath.Join(src.Dir, "user6.rules"), v6data)
		res.Notes = append(res.Notes, notes...)
	} else if len(bytes.TrimSpace(v6data)) > 0 {
		res.Notes = append(res.Notes, "IPV6=no: ufw does not filter IPv6, and its IPv6 rules are not imported; moat filters IPv6 like IPv4 (its defaults apply)")
	}
	emit := func(t tuple, family string) {
		w, notes := t.words(family)
		res.Notes = append(res.Notes, notes...)
		line := policy.QuoteArgs(w)
		// ufw keeps a profile of several protocols (CIFS: udp and
		// tcp) as one tuple a protocol, side by side; moat's rule
		// names the profile once and covers all its ports.
		if (t.dapp != "" || t.sapp != "") && len(res.Lines) > 0 && res.Lines[len(res.Lines)-1] == line {
			return
		}
		res.Lines = append(res.Lines, line)
	}
	// Pair the twins, keeping each family's order: IPv6-only rules before a
	// pair are written before it.
	j := 0
	for _, t := range v4 {
		k := -1
		if !t.hasAddr() {
			for x := j; x < len(v6); x++ {
				if !v6[x].hasAddr() && v6[x].key() == t.key() {
					k = x
					break
				}
			}
		}
		if k < 0 {
			emit(t, famOf(t, "4"))
			continue
		}
		for ; j < k; j++ {
			emit(v6[j], famOf(v6[j], "6"))
		}
		emit(t, "")
		j = k + 1
	}
	for ; j < len(v6); j++ {
		emit(v6[j], famOf(v6[j], "6"))
	}
	return res, nil
}

// famOf pins an unpaired rule without addresses to its family.
func famOf(t tuple, fam string) string {
	if t.hasAddr() {
		return ""
	}
	return fam
}
