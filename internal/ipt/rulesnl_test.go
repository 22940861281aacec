package ipt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/policy"
)

// fakeEncoder encodes every line but those holding refuse; it records
// what it was asked.
type fakeEncoder struct {
	refuse string
	lines  []string
	closed bool
}

func (e *fakeEncoder) encode(proto uint8, line string) ([]xtRule, error) {
	e.lines = append(e.lines, fmt.Sprintf("%d %s", proto, line))
	if e.refuse != "" && strings.Contains(line, e.refuse) {
		return nil, fmt.Errorf("%w: fake", errXtUnsupported)
	}
	return []xtRule{{exprs: []byte{0, 0, 0, 0}, udata: []byte("c")}}, nil
}

func (e *fakeEncoder) close() error { e.closed = true; return nil }

// twoRules encodes every line as two rules (as a line with two
// multiport lists is).
type twoRules struct{}

func (twoRules) encode(uint8, string) ([]xtRule, error) {
	return []xtRule{{exprs: []byte{0, 0, 0, 0}}, {exprs: []byte{0, 0, 0, 0}}}, nil
}
func (twoRules) close() error { return nil }

// The transaction does what iptables-restore --noflush does with the
// same scripts: a declared chain is flushed where it exists and made
// where it does not, each rule appended in order, MOAT-GEN's record
// written as writeGen writes it; a line it cannot write (a jump in a
// built-in chain, a line the encoder refuses) fails it whole.
func TestBuildRulesTxn(t *testing.T) {
	rs := compileText(t, "default deny incoming\nallow 22/tcp\ndeny from 198.51.100.0/24\n")
	names := SetNames(rs)
	c := contentsOf(rs, names)
	gen := generation(rs, names, c)
	// Jumps there: no jump line.
	jumps := map[policy.Family]map[string]Jump{}
	st := &state{jumps: jumps}
	scripts := map[policy.Family]string{}
	for _, f := range families {
		jumps[f.fam] = map[string]Jump{}
		for _, ch := range rs.Chains {
			cond, _ := jumpCond(rs, ch, f.fam, names)
			jumps[f.fam][builtinChain[ch.Hook]] = Jump{Cond: cond, Pos: 1}
		}
		if !(&Backend{}).jumpsComplete(rs, st, f.fam, names) {
			t.Fatal("jumps incomplete")
		}
		scripts[f.fam] = renderTables(rs, f.fam, jumps[f.fam], names, gen, c, tables)
	}
	has := map[policy.Family]map[string]bool{
		policy.FamilyV4: {"MOAT-INPUT": true, "MOAT-PREROUTING": true, GenChain: true},
		policy.FamilyV6: {"MOAT-INPUT": true, GenChain: true},
	}
	enc := &fakeEncoder{}
	plan := func(scripts map[policy.Family]string, builtins map[string]bool) map[policy.Family]nlFamilyPlan {
		p := map[policy.Family]nlFamilyPlan{}
		for f, s := range scripts {
			p[f] = nlFamilyPlan{script: s, builtins: builtins}
		}
		return p
	}
	txn, err := buildRulesTxn(plan(scripts, nil), has, enc)
	if err != nil {
		t.Fatal(err)
	}
	if txn.x.Len() != len(txn.ops) {
		t.Fatalf("%d messages, %d ops", txn.x.Len(), len(txn.ops))
	}
	var want []string
	for i, f := range families {
		fam := nlFamilies[i].name
		table := ""
		for _, l := range strings.Split(scripts[f.fam], "\n") {
			switch {
			case strings.HasPrefix(l, "*"):
				table = l[1:]
			case strings.HasPrefix(l, ":"):
				name, _, _ := strings.Cut(l[1:], " ")
				if !has[f.fam][name] {
					want = append(want, fam+" chain "+table+" "+name)
				}
				want = append(want, fam+" flush "+table+" "+name)
			case strings.HasPrefix(l, "-A "):
				want = append(want, fam+" add "+table+" "+l)
			case l == "" || l == "COMMIT":
			default:
				t.Fatalf("line %q", l)
			}
		}
	}
	if !slices.Equal(txn.ops, want) {
		t.Errorf("ops:\n%s\nwant:\n%s", strings.Join(txn.ops, "\n"), strings.Join(want, "\n"))
	}
	for _, op := range []string{"ip flush filter MOAT-INPUT", "ip6 chain raw MOAT-PREROUTING", "ip6 flush raw MOAT-PREROUTING", "ip6 flush filter MOAT-GEN"} {
		if !slices.Contains(txn.ops, op) {
			t.Errorf("no %q in %q", op, txn.ops)
		}
	}
	// The encoder is asked for moat's rules, never MOAT-GEN's record.
	for _, l := range enc.lines {
		if strings.Contains(l, GenChain) {
			t.Errorf("encoder asked for %q", l)
		}
	}
	if !slices.ContainsFunc(enc.lines, func(l string) bool { return strings.HasPrefix(l, fmt.Sprint(unix.NFPROTO_IPV6)+" -A MOAT-INPUT") }) {
		t.Errorf("no IPv6 line encoded as IPv6: %q", enc.lines)
	}

	// Refused lines: the whole transaction is refused.
	if _, err := buildRulesTxn(plan(scripts, nil), has, &fakeEncoder{refuse: "--dport 22"}); !errors.Is(err, errXtUnsupported) {
		t.Errorf("a refused line: %v", err)
	}
	// A jump inserted first into a built-in chain: at the head; the
	// table and the built-in chain made first where they are not there,
	// as iptables-nft makes them.
	first := "*raw\n:MOAT-PREROUTING - [0:0]\n-I PREROUTING 1 -m set --match-set moat-early6 src -j MOAT-PREROUTING\nCOMMIT\n" +
		"*filter\n:MOAT-INPUT - [0:0]\n-I INPUT 1 -j MOAT-INPUT\nCOMMIT\n"
	for _, c := range []struct {
		builtins map[string]bool
		want     []string
	}{
		{map[string]bool{"raw": true, "raw PREROUTING": true, "filter": true, "filter INPUT": true}, []string{
			"ip6 chain raw MOAT-PREROUTING", "ip6 flush raw MOAT-PREROUTING", "ip6 insert raw -A PREROUTING -m set --match-set moat-early6 src -j MOAT-PREROUTING",
			"ip6 chain filter MOAT-INPUT", "ip6 flush filter MOAT-INPUT", "ip6 insert filter -A INPUT -j MOAT-INPUT"}},
		{map[string]bool{"filter": true, "filter OUTPUT": true}, []string{
			"ip6 table raw", "ip6 chain raw MOAT-PREROUTING", "ip6 flush raw MOAT-PREROUTING", "ip6 base raw PREROUTING", "ip6 insert raw -A PREROUTING -m set --match-set moat-early6 src -j MOAT-PREROUTING",
			"ip6 chain filter MOAT-INPUT", "ip6 flush filter MOAT-INPUT", "ip6 base filter INPUT", "ip6 insert filter -A INPUT -j MOAT-INPUT"}},
	} {
		ins, err := buildRulesTxn(map[policy.Family]nlFamilyPlan{policy.FamilyV6: {script: first, builtins: c.builtins}}, nil, &fakeEncoder{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ins.ops, c.want) || ins.x.Len() != len(c.want) {
			t.Errorf("insert with %v:\n%q\nwant\n%q", c.builtins, ins.ops, c.want)
		}
	}
	// Not knowing what is there: no insert.
	if _, err := buildRulesTxn(map[policy.Family]nlFamilyPlan{policy.FamilyV6: {script: first}}, nil, &fakeEncoder{}); !errors.Is(err, errXtUnsupported) {
		t.Errorf("insert without the built-ins read: %v", err)
	}
	for _, bad := range []string{
		"*filter\n-I INPUT 2 -j MOAT-INPUT\nCOMMIT\n",
		"*filter\n-I INPUT 1 -j DROP\nCOMMIT\n",
		"*filter\n-I MOAT-INPUT 1 -j DROP\nCOMMIT\n",
		"*filter\n-D INPUT -j MOAT-INPUT\nCOMMIT\n",
		"*nat\n:MOAT-INPUT - [0:0]\nCOMMIT\n",
		"-A MOAT-INPUT -j DROP\n",
		"*filter\n-X MOAT-INPUT\nCOMMIT\n",
	} {
		if _, err := buildRulesTxn(map[policy.Family]nlFamilyPlan{policy.FamilyV4: {script: bad, builtins: map[string]bool{"filter": true, "filter INPUT": true}}}, has, &fakeEncoder{}); !errors.Is(err, errXtUnsupported) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// writeRulesNetlink sends at the generation the chains were read at plus
// Apply's own commits; without it known, with the encoder refusing a
// line, or with the kernel refusing, nothing is sent or nothing was
// committed, and Apply restores; a lost answer makes LastApply unknown.
func TestWriteRulesNetlink(t *testing.T) {
	plan := map[policy.Family]nlFamilyPlan{
		policy.FamilyV4: {script: "*filter\n:MOAT-INPUT - [0:0]\n-A MOAT-INPUT -j DROP\nCOMMIT\n", whole: true},
	}
	st := &state{has: map[policy.Family]map[string]bool{policy.FamilyV4: {"MOAT-INPUT": true}}, readGen: 40, readGenOK: true}
	oldEnc, oldSend := newXtEncoder, sendRules
	t.Cleanup(func() { newXtEncoder, sendRules = oldEnc, oldSend })
	var enc *fakeEncoder
	newXtEncoder = func() (xtEncoder, error) { enc = &fakeEncoder{}; return enc, nil }
	var sentAt []uint32
	var sendErr error
	sendRules = func(txn *rulesTxn, gen uint32) error {
		sentAt = append(sentAt, gen)
		return sendErr
	}
	for _, tc := range []struct {
		name    string
		track   commitTrack
		unread  bool
		refuse  string
		sendErr error
		ok      nlOutcome
		sent    []uint32
		known   bool
		commits uint32
	}{
		{name: "committed", track: commitTrack{known: true, before: 40, commits: 1}, ok: nlCommitted, sent: []uint32{41}, known: true, commits: 2},
		{name: "generation unknown", track: commitTrack{before: 40}, known: false},
		{name: "read at another generation", track: commitTrack{known: true, before: 39}, known: true},
		{name: "read unknown", track: commitTrack{known: true, before: 40}, unread: true, known: true},
		{name: "encoder refuses", track: commitTrack{known: true, before: 40}, refuse: "DROP", known: true},
		{name: "generation moved", track: commitTrack{known: true, before: 40}, sendErr: errors.New("nftables: the ruleset changed meanwhile"), sent: []uint32{40}, known: true},
		{name: "answer lost", track: commitTrack{known: true, before: 40}, sendErr: fmt.Errorf("acks lost: %w", unix.ENOBUFS), sent: []uint32{40}, ok: nlUnknown, known: false},
	} {
		sentAt, sendErr = nil, tc.sendErr
		newXtEncoder = func() (xtEncoder, error) { enc = &fakeEncoder{refuse: tc.refuse}; return enc, nil }
		b := &Backend{track: tc.track}
		s := *st
		s.readGenOK = !tc.unread
		if got := b.writeRulesNetlink(&s, plan); got != tc.ok {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.ok)
		}
		if !slices.Equal(sentAt, tc.sent) {
			t.Errorf("%s: sent at %v, want %v", tc.name, sentAt, tc.sent)
		}
		if b.track.known != tc.known {
			t.Errorf("%s: known %v, want %v", tc.name, b.track.known, tc.known)
		}
		if tc.ok == nlCommitted && b.track.commits != tc.commits {
			t.Errorf("%s: commits %d, want %d", tc.name, b.track.commits, tc.commits)
		}
		if enc != nil && len(enc.lines) > 0 && !enc.closed {
			t.Errorf("%s: encoder left open", tc.name)
		}
	}
}

// Jumps of another form are replaced where the first stood (by its
// handle) and the others deleted, as writeJump's deletes and insert
// leave them; a count of jumps that is not the kernel's is no
// transaction.
func TestBuildRulesTxnReplacesJumps(t *testing.T) {
	script := "*filter\n:MOAT-INPUT - [0:0]\n-D INPUT -j MOAT-INPUT\n-D INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n" +
		"-I INPUT 3 -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\nCOMMIT\n"
	has := map[policy.Family]map[string]bool{policy.FamilyV4: {"MOAT-INPUT": true}}
	builtins := map[string]bool{"filter": true, "filter INPUT": true}
	txn, err := buildRulesTxn(map[policy.Family]nlFamilyPlan{policy.FamilyV4: {script: script, builtins: builtins,
		jumps: map[string][]uint64{"filter INPUT": {7, 9}}}}, has, &fakeEncoder{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ip flush filter MOAT-INPUT", "ip replace filter -A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT", "ip delete filter INPUT 9"}
	if !slices.Equal(txn.ops, want) || txn.x.Len() != len(want) {
		t.Errorf("ops %q, want %q", txn.ops, want)
	}
	// A jump the encoder makes two rules of: one handle replaces one
	// rule, and inserted one by one they would stand reversed.
	if _, err := buildRulesTxn(map[policy.Family]nlFamilyPlan{policy.FamilyV4: {script: script, builtins: builtins,
		jumps: map[string][]uint64{"filter INPUT": {7, 9}}}}, has, twoRules{}); !errors.Is(err, errXtUnsupported) {
		t.Errorf("a replaced jump of two rules: %v", err)
	}
	first := "*filter\n:MOAT-INPUT - [0:0]\n-I INPUT 1 -j MOAT-INPUT\nCOMMIT\n"
	if _, err := buildRulesTxn(map[policy.Family]nlFamilyPlan{policy.FamilyV4: {script: first, builtins: builtins}}, has, twoRules{}); !errors.Is(err, errXtUnsupported) {
		t.Errorf("an inserted jump of two rules: %v", err)
	}
	for _, jumps := range []map[string][]uint64{nil, {"filter INPUT": {7}}, {"filter INPUT": {7, 9, 11}}} {
		if _, err := buildRulesTxn(map[policy.Family]nlFamilyPlan{policy.FamilyV4: {script: script, builtins: builtins, jumps: jumps}}, has, &fakeEncoder{}); !errors.Is(err, errXtUnsupported) {
			t.Errorf("handles %v: %v", jumps, err)
		}
	}
}

// Only iptables-nft's own tools (xtables-nft-multi) let moat write
// their rules itself: the legacy tools, a wrapper, a missing tool do not.
func TestNftTools(t *testing.T) {
	nftMulti, err1 := exec.LookPath("xtables-nft-multi")
	legacyMulti, err2 := exec.LookPath("xtables-legacy-multi")
	if err1 != nil || err2 != nil {
		t.Skip("xtables-nft-multi or xtables-legacy-multi not installed")
	}
	for _, c := range []struct {
		name   string
		v4, v6 string // a symlink's target, or "script"
		want   bool
	}{
		{"nft", nftMulti, nftMulti, true},
		{"legacy", legacyMulti, legacyMulti, false},
		{"one legacy", nftMulti, legacyMulti, false},
		{"wrapper", "script", nftMulti, false},
		{"missing", nftMulti, "", false},
		// iptables-nft of a version xtenc's bytes are not proven against
		// (Debian 13's): its own restore writes the change.
		{"newer nft", "1.8.11", "1.8.11", false},
		{"one newer", nftMulti, "1.8.11", false},
		{"proven copy", "1.8.9", "1.8.9", true},
	} {
		dir := t.TempDir()
		for prog, target := range map[string]string{"iptables-restore": c.v4, "ip6tables-restore": c.v6} {
			p := filepath.Join(dir, prog)
			switch target {
			case "1.8.9", "1.8.11":
				// xtables-nft-multi's file with that version string.
				data, err := os.ReadFile(nftMulti)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Contains(data, []byte("\x001.8.9 (nf_tables)\x00")) {
					t.Skip("xtables-nft-multi is not 1.8.9")
				}
				data = bytes.ReplaceAll(data, []byte("\x001.8.9"), []byte("\x00"+target))
				bin := filepath.Join(dir, target, "xtables-nft-multi")
				if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(bin, data, 0o755); err != nil && !os.IsExist(err) {
					t.Fatal(err)
				}
				if err := os.Symlink(bin, p); err != nil {
					t.Fatal(err)
				}
			case "":
			case "script":
				if err := os.WriteFile(p, []byte("#!/bin/sh\nexec "+nftMulti+" \"$@\"\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			default:
				// Through a link of its own, as /etc/alternatives.
				if err := os.Symlink(target, p+".alt"); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(p+".alt", p); err != nil {
					t.Fatal(err)
				}
			}
		}
		t.Setenv("PATH", dir)
		if got := nftTools(); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// holdsVersion finds the version string whole: not the tail of another
// version, not without its NUL.
func TestHoldsVersion(t *testing.T) {
	v := "1.8.9 (nf_tables)"
	for _, c := range []struct {
		data string
		want bool
	}{
		{"\x001.8.9 (nf_tables)\x00", true},
		{"1.8.9 (nf_tables)\x00rest", true},
		{"x\x00" + "11.8.9 (nf_tables)\x00", false},
		{"v1.8.9 (nf_tables)\x00", true},
		{"2.1.8.9 (nf_tables)\x00\x001.8.9 (nf_tables)\x00", true},
		{"\x001.8.9 (nf_tables)", false},
		{"\x001.8.9 (nf_tables)-rc1\x00", false},
		{"\x001.8.11 (nf_tables)\x00", false},
		{"", false},
	} {
		if got := holdsVersion([]byte(c.data), v); got != c.want {
			t.Errorf("%q: %v, want %v", c.data, got, c.want)
		}
		// Read in pieces (readerHoldsVersion): the same answer wherever
		// the pieces' boundaries fall.
		carry := len(v) + 1
		for pad := 0; pad <= 2*carry+1; pad++ {
			data := strings.Repeat("z", pad) + c.data
			want := holdsVersion([]byte(data), v)
			for size := 2*carry + 1; size <= 3*carry+3; size++ {
				if got := readerHoldsVersion(strings.NewReader(data), v, size); got != want {
					t.Errorf("%q after %d bytes, in pieces of %d: %v, want %v", c.data, pad, size, got, want)
				}
			}
		}
	}
	// The program on this machine: the same answer as read whole.
	if path, err := exec.LookPath("xtables-nft-multi"); err == nil {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = f.Close() }() // read only
		if got, want := readerHoldsVersion(f, v, 32<<10), holdsVersion(data, v); got != want {
			t.Errorf("%s: %v in pieces, %v whole", path, got, want)
		}
	}
}

// recordHandler keeps the records logged through it, their attributes
// as text.
type recordHandler struct{ recs *[]map[string]string }

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message, "level": r.Level.String()}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	*h.recs = append(*h.recs, m)
	return nil
}
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }

// reasonEncoder refuses every line with reason.
type reasonEncoder struct{ reason string }

func (e reasonEncoder) encode(uint8, string) ([]xtRule, error) {
	return nil, fmt.Errorf("%w: %s", errXtUnsupported, e.reason)
}
func (reasonEncoder) close() error { return nil }

// A change that goes through iptables-restore says why in the debug log
// of the Backend's Log: the line the encoder refused (its family, chain
// and the encoder's reason), or the encoder that did not open.
func TestNetlinkFallbackLogged(t *testing.T) {
	oldEnc, oldSend := newXtEncoder, sendRules
	t.Cleanup(func() { newXtEncoder, sendRules = oldEnc, oldSend })
	sendRules = func(*rulesTxn, uint32) error { t.Error("sent a transaction the encoder refused"); return nil }
	line := "-A MOAT-INPUT -m owner --uid-owner 0 -j DROP"
	plan := map[policy.Family]nlFamilyPlan{
		policy.FamilyV6: {script: "*filter\n:MOAT-INPUT - [0:0]\n" + line + "\nCOMMIT\n", whole: true},
	}
	st := &state{has: map[policy.Family]map[string]bool{policy.FamilyV6: {"MOAT-INPUT": true}}, readGen: 40, readGenOK: true}
	reason := "match \"owner\"\n not in the list"
	for _, tc := range []struct {
		name string
		open func() (xtEncoder, error)
		want map[string]string
	}{
		{name: "line refused", open: func() (xtEncoder, error) { return reasonEncoder{reason}, nil },
			want: map[string]string{"family": "ip6", "table": "filter", "chain": "MOAT-INPUT", "line": line, "reason": errXtUnsupported.Error() + ": " + reason}},
		{name: "encoder not open", open: func() (xtEncoder, error) { return nil, errors.New("ipset indexes: " + reason) },
			want: map[string]string{"reason": "ipset indexes: " + reason}},
	} {
		var recs []map[string]string
		newXtEncoder = tc.open
		b := &Backend{track: commitTrack{known: true, before: 40}, Log: slog.New(recordHandler{&recs})}
		s := *st
		if got := b.writeRulesNetlink(&s, plan); got != nlNotSent {
			t.Errorf("%s: %v, want not sent", tc.name, got)
		}
		if len(recs) != 1 {
			t.Fatalf("%s: logged %v, want one record", tc.name, recs)
		}
		if recs[0]["level"] != "DEBUG" || !strings.Contains(recs[0]["msg"], "iptables-restore") {
			t.Errorf("%s: logged %q at %s, want a debug message naming iptables-restore", tc.name, recs[0]["msg"], recs[0]["level"])
		}
		for k, v := range tc.want {
			if recs[0][k] != v {
				t.Errorf("%s: %s=%q, want %q (all: %v)", tc.name, k, recs[0][k], v, recs[0])
			}
		}
	}
}
