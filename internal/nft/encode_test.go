package nft

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/rulesettest"
)

// acceptedLines are the left sides of policy/testdata/accept.txt: every
// rule form the parser takes, the rule shapes the renderer makes of them.
func acceptedLines(t *testing.T) []string {
	data, err := os.ReadFile("../policy/testdata/accept.txt")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		line, _, ok := strings.Cut(l, " => ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	return out
}

// compileLines compiles the lines that compile together (each alone
// first: a line another makes invalid is left out).
func compileLines(t *testing.T, lines []string) *ruleset.Ruleset {
	var ok []string
	for _, l := range lines {
		if _, err := policy.NewDocument("moat.conf", []byte(l+"\n")).Policy(policy.ParseServices([]byte("ssh 22/tcp\n"))); err == nil {
			ok = append(ok, l)
		}
	}
	return compile(t, strings.Join(ok, "\n")+"\n")
}

// encoderCases are the rulesets whose every rule shape the encoder must
// write as nft does: the renderer's golden policy (all rule kinds, both
// families, gates, meters, logs, rejects), every accepted policy line,
// and the benchmark's policy.
func encoderCases(t *testing.T) map[string]*ruleset.Ruleset {
	return map[string]*ruleset.Ruleset{
		"golden":   goldenRuleset(t),
		"accepted": compileLines(t, acceptedLines(t)),
		"bench":    compile(t, "default deny incoming\ndeny from 192.0.2.1\ndeny from 2001:db8::1\nallow 22/tcp\nallow 8080/tcp\nlimit ssh\ndeny from 198.51.100.0/25\n"),
		"routed":   compile(t, "default allow routed\nroute deny in on eth1 to 192.0.2.0/25\nreject 53/udp\nreject out 53\nallow in on lo0 from 2001:db8::/33\nallow log-all 2000:2100/tcp\n"),
		// Port sets with ranges: merged, touching, from port 0, to 65535.
		"ranges": compile(t, "allow 80,1000:2000/tcp\nallow 1:2,3:4,13/udp\nallow 1:10,65000:65535/tcp\nallow 5:9,7:12,20/tcp\nallow out 100:200,300/udp\nallow 65535,1/tcp\n"),
		// Edges: a range to 65535, the lowest and highest ports, a
		// 15-character interface name and a wildcard,
		// comments of the most bytes and of characters nft is given
		// escaped (Go's %q, as knftables writes them), source and
		// destination ports of one protocol and of two (th).
		"edges": compile(t, "allow 65000:65535/tcp\nallow 1/udp\nallow 65535/tcp\nallow in on abcdefghijklmno to any port 80 proto tcp\n"+
			"allow in on e+ to any port 81 proto tcp\n"+
			"allow 82/tcp comment '"+strings.Repeat("é", 50)+"'\nallow 83/tcp comment 'zero\u200bwidth'\nallow 84/tcp comment 'no\u00a0break'\n"+
			"allow 85/tcp comment 'x\u2028y'\n"+
			"allow from any port 53 to any port 5353\nallow from any port 1000:2000 to any port 53 proto udp\nallow proto tcp from any port 7 to any port 8\n"+
			"deny out to 2001:db8::/32 port 1:65535 proto tcp\nallow from 2001:db8::/33 port 80,443 proto tcp\n"),
	}
}

// TestEncoderMatchesNft loads each case's rules once through `nft -f`
// and once through the encoder, into two namespaces that hold the same
// table without rules, and compares what the kernel holds: every rule's
// expressions and user data, every set (the anonymous ones too) and its
// elements, every chain, byte for byte (handles aside), and `nft list
// table`. Then it rewrites each chain the way a patch does (flushed and
// refilled in one transaction) both ways, and compares again.
func TestEncoderMatchesNft(t *testing.T) {
	for name, rs := range encoderCases(t) {
		t.Run(name, func(t *testing.T) { encoderMatchesNft(t, name, rs) })
	}
}

// encoderMatchesNft is TestEncoderMatchesNft's comparison for one ruleset.
func encoderMatchesNft(t *testing.T, name string, rs *ruleset.Ruleset) {
	d := want(rs)
	// The rules the encoder takes; the golden policy's must all be.
	enc := &ruleEncoder{b: &batch{}}
	var skipped []string
	kept := &desired{comment: d.comment, sets: d.sets}
	for _, c := range d.chains {
		kc := &wantChain{chain: c.chain, hash: c.hash}
		for _, r := range c.rules {
			if err := enc.rule(c.chain.Name, r.Rule, *r.Comment); err != nil {
				if !errors.Is(err, errUnencodable) {
					t.Fatal(err)
				}
				skipped = append(skipped, r.Rule+": "+err.Error())
				continue
			}
			kc.rules = append(kc.rules, r)
		}
		kept.chains = append(kept.chains, kc)
	}
	t.Logf("%d rules not encodable (through nft): %s", len(skipped), strings.Join(skipped, "\n"))
	if name == "golden" && len(skipped) > 0 {
		t.Errorf("golden rules not encodable: %q", skipped)
	}
	// The edges are encoded, but for the comments nft is given
	// escaped and a source port range before a destination port.
	if name == "edges" && len(skipped) != 4 {
		t.Errorf("edges not encodable: %q, want the three escaped comments and the port range", skipped)
	}
	empty := &desired{comment: d.comment, sets: d.sets}
	for _, c := range d.chains {
		empty.chains = append(empty.chains, &wantChain{chain: c.chain, hash: c.hash})
	}
	script := func(d *desired) string {
		fake := knftables.NewFake(knftables.InetFamily, TableName)
		return fullPlan(newPlan(fake.NewTransaction, true), d, nil).Script()
	}
	rA, nsA := kernelNS(t)
	rB, nsB := kernelNS(t)
	ctx := context.Background()
	if _, err := rA.run(ctx, []byte(script(kept)), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if _, err := rB.run(ctx, []byte(script(empty)), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if err := nsB.Do(func() error { return enc.b.send(0) }); err != nil {
		t.Fatal(err)
	}
	compareKernels(t, "loaded", rA, rB, nsA.Do, nsB.Do)

	// A patch: each chain flushed and refilled, in one transaction.
	var text strings.Builder
	pb := &ruleEncoder{b: &batch{}}
	for _, c := range kept.chains {
		text.WriteString("flush chain inet " + TableName + " " + c.chain.Name + "\n")
		pb.b.flushChain(c.chain.Name)
	}
	for _, c := range kept.chains {
		for _, r := range c.rules {
			tx := knftables.NewFake(knftables.InetFamily, TableName).NewTransaction()
			tx.Add(r)
			text.WriteString(tx.String())
			if err := pb.rule(c.chain.Name, r.Rule, *r.Comment); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := rA.run(ctx, []byte(text.String()), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if err := nsB.Do(func() error { return pb.b.send(0) }); err != nil {
		t.Fatal(err)
	}
	compareKernels(t, "patched", rA, rB, nsA.Do, nsB.Do)
}

// compareKernels compares moat's table in two namespaces.
func compareKernels(t *testing.T, when string, rA, rB *recorder, doA, doB func(func() error) error) {
	t.Helper()
	dump := func(do func(func() error) error) map[string][]string {
		out := map[string][]string{}
		err := do(func() error {
			for what, typ := range map[string]uint16{"rules": unix.NFT_MSG_GETRULE, "sets": unix.NFT_MSG_GETSET, "chains": unix.NFT_MSG_GETCHAIN} {
				objs, err := rawDump(typ, "")
				if err != nil {
					return err
				}
				out[what] = objs
			}
			for _, s := range out["sets"] {
				name := setNameOf(s)
				els, err := rawDump(unix.NFT_MSG_GETSETELEM, name)
				if err != nil {
					return err
				}
				out["elements of "+name] = els
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	a, b := dump(doA), dump(doB)
	if len(a["rules"]) == 0 {
		t.Fatal("no rules read back")
	}
	keys := func(m map[string][]string) []string {
		var k []string
		for key := range m {
			k = append(k, key)
		}
		slices.Sort(k)
		return k
	}
	if !slices.Equal(keys(a), keys(b)) {
		t.Fatalf("%s: objects differ: %q and %q", when, keys(a), keys(b))
	}
	for _, k := range keys(a) {
		if len(a[k]) != len(b[k]) {
			t.Errorf("%s: %s: %d through nft, %d encoded", when, k, len(a[k]), len(b[k]))
			continue
		}
		for i := range a[k] {
			if a[k][i] != b[k][i] {
				t.Errorf("%s: %s %d differs:\nnft:     %s\nencoded: %s", when, k, i, a[k][i], b[k][i])
			}
		}
	}
	la, lb := listTable(t, rA), listTable(t, rB)
	if la != lb {
		t.Errorf("%s: nft list table differs:\nnft:\n%s\nencoded:\n%s", when, la, lb)
	}
}

// setNameOf reads NFTA_SET_NAME (2) from a rawDump line.
func setNameOf(line string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "2="); ok {
			b := make([]byte, len(v)/2)
			for i := range b {
				b[i] = unhex(v[2*i])<<4 | unhex(v[2*i+1])
			}
			return strings.TrimRight(string(b), "\x00")
		}
	}
	return ""
}

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	default:
		return c - '0'
	}
}

// TestKernelEncodedPatches applies a run of ordinary edits twice, in two
// namespaces: once as moat does (changed chains written over netlink by
// the encoder, in one transaction with the set changes and the record)
// and once with every changed chain through nft, as before the encoder.
// After each edit the kernels hold the same, byte for byte; the encoder's
// edits start no nft; an edit with a rule the encoder does not know goes
// whole through nft.
func TestKernelEncodedPatches(t *testing.T) {
	enc, viaNft := newNLKernel(t), newNLKernel(t)
	viaNft.be.noEncode = true
	base := "deny from 192.0.2.1\nallow 22/tcp\n"
	steps := []struct {
		policy  string
		encoded bool // sent without nft
	}{
		{"default deny incoming\n" + base, false}, // the first apply: the table through nft
		{"default deny incoming\n" + base + "allow 8080/tcp\n", true},
		{"default deny incoming\n" + base, true},
		{"default deny incoming\n" + base + "deny from 203.0.113.0/24\nreject 53\n", true},
		{"default deny incoming\n" + base + "deny from 203.0.113.0/24\nreject 53\nallow in on eth0 log to any port 6000:6007 proto udp\n", true},
		{"default allow incoming\n" + base + "deny from 203.0.113.0/24\nreject 53\n", true},
		{"default allow incoming\n" + base + "deny from 203.0.113.0/24\ndeny out 25/tcp\nallow from 2001:db8::/48 to any port 22 proto tcp\n", true},
		// A port set with ranges: an interval set, encoded.
		{"default allow incoming\n" + base + "deny from 203.0.113.0/24\nallow 1:2,3:4/tcp\n", true},
		// A source and a destination address: not encoded, the whole
		// change through nft.
		{"default allow incoming\n" + base + "deny from 203.0.113.0/24\nallow 1:2,3:4/tcp\nallow from 198.51.100.0/24 to 192.0.2.1\n", false},
		{"default deny incoming\n" + base + "allow 1:2,3:4/tcp\nallow 8080/tcp\nallow from 198.51.100.0/24 to 192.0.2.1\n", false},
		{"default deny incoming\n" + base + "allow 8080/tcp\n", true},
		// Sets gained and lost in a patch: a first rate limit (its two
		// sets), a first `deny from` of a family (a policy set, filled),
		// and both gone again.
		{"default deny incoming\n" + base + "allow 8080/tcp\nlimit ssh\n", true},
		{"default deny incoming\n" + base + "allow 8080/tcp\nlimit ssh\ndeny from 2001:db8:1::/48\ndeny from 2001:db8:3::1\n", true},
		{"default deny incoming\n" + base + "limit 2222/tcp rate 3/10s\ndeny from 2001:db8:1::/48\n", true},
		{"default deny incoming\n" + base + "allow 8080/tcp\n", true},
	}
	for i, s := range steps {
		rs := compile(t, s.policy)
		var chainsBefore map[string]string
		if i > 0 {
			chainsBefore = chainBlocks(enc.table())
		}
		before := len(enc.rec.inputs)
		enc.apply(rs)
		viaNft.apply(rs)
		ran := len(enc.rec.inputs) > before
		if ran == s.encoded {
			t.Errorf("step %d: nft ran %v, want %v (%q)", i, ran, !s.encoded, s.policy)
		}
		// LastCommitChains names every chain the patch changed (the
		// fingerprint takes the others from its record).
		wrote, ok := enc.be.LastCommitChains()
		if ok != s.encoded {
			t.Errorf("step %d: LastCommitChains ok %v, want %v", i, ok, s.encoded)
		}
		if ok {
			chainsAfter := chainBlocks(enc.table())
			for name, text := range chainsAfter {
				if chainsBefore[name] != text && !slices.Contains(wrote, name) {
					t.Errorf("step %d: chain %s changed, LastCommitChains names %q only:\n%s\n->\n%s", i, name, wrote, chainsBefore[name], text)
				}
			}
			if len(chainsAfter) != len(chainsBefore) {
				t.Errorf("step %d: a netlink patch added or removed a chain", i)
			}
		}
		compareKernels(t, fmt.Sprintf("step %d", i), enc.rec, viaNft.rec, enc.do, viaNft.do)
		if _, _, ok := enc.be.LastCommit(); !ok {
			t.Errorf("step %d: no commit tracked", i)
		}
		// The element store holds the policy sets the kernel has, no
		// other (a set a patch deleted leaves no entry).
		for _, k := range []*nlKernel{enc, viaNft} {
			var wantSets, got []string
			for _, s := range want(rs).sets {
				if s.kind == policySet {
					wantSets = append(wantSets, "nft-set."+s.set.Name)
				}
			}
			entries, err := os.ReadDir(k.store.Path)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				got = append(got, e.Name())
			}
			slices.Sort(wantSets)
			if !slices.Equal(got, wantSets) {
				t.Errorf("step %d: element store holds %q, want %q", i, got, wantSets)
			}
		}
	}
}

// A rule added by hand to a chain an encoded edit does not rewrite, after
// the edit read the generation and before its transaction is sent (where
// e2e's TestHandChangeDuringCommand adds it from inside nft on the nft
// path): the kernel refuses the transaction (its generation moved), the
// edit is planned again and committed over netlink, the hand rule stays,
// and the commit does not vouch for it: the generation it reports before
// it is the one after the hand change, not the one the command verified.
func TestKernelEncodedEditAfterHandChange(t *testing.T) {
	k := newNLKernel(t)
	k.apply(compile(t, "default deny incoming\nallow 22/tcp\nallow 80/tcp\n"))
	var verified uint32
	if err := k.do(func() (err error) { verified, err = Generation(); return err }); err != nil {
		t.Fatal(err)
	}
	hand := 0
	k.be.beforeSend = func() {
		if hand == 0 {
			hand++
			if _, err := execrun.Exec(context.Background(), []byte("insert rule inet moat output ip daddr 192.0.2.2 tcp sport 80 drop\n"), "nft", "-f", "-"); err != nil {
				t.Error(err)
			}
		}
	}
	n := len(k.rec.inputs)
	k.apply(compile(t, "default deny incoming\nallow 22/tcp\nallow 80/tcp\nallow 8080/tcp\n"))
	if hand != 1 || len(k.rec.inputs) != n {
		t.Errorf("%d hand changes, %d nft runs (want 1 and none)", hand, len(k.rec.inputs)-n)
	}
	before, after, ok := k.be.LastCommit()
	if !ok || before == verified || after != before+1 {
		t.Errorf("last commit %d -> %d (%v), verified at %d: the commit vouches for the hand change", before, after, ok, verified)
	}
	table := k.table()
	if !strings.Contains(table, "ip daddr 192.0.2.2 tcp sport 80 drop") || !strings.Contains(table, "tcp dport 8080") {
		t.Errorf("the hand rule or the edit is missing:\n%s", table)
	}
}

// FuzzEncodeRule: the encoder never panics on any rule text or comment,
// and takes or refuses it whole (a refused rule adds nothing to the
// batch).
func FuzzEncodeRule(f *testing.F) {
	rs := rulesettest.CompileFile(f, "testdata/golden.policy", "auth 113/tcp\n")
	for _, c := range want(rs).chains {
		for _, r := range c.rules {
			f.Add(r.Rule, *r.Comment)
		}
	}
	f.Add(`ip saddr != @x tcp sport 1 tcp dport { 2, 3 } update @s { ip saddr limit rate over 1/day burst 1 packets }`, "")
	f.Add(`iifname "a*" oifname != "b" reject with tcp reset`, "c")
	f.Fuzz(func(t *testing.T, text, comment string) {
		e := &ruleEncoder{b: &batch{}}
		err := e.rule("input", text, comment)
		if err != nil && len(e.b.msgs) != 0 {
			t.Fatalf("refused %q (%v) but wrote %d messages", text, err, len(e.b.msgs))
		}
		if err != nil && !errors.Is(err, errUnencodable) {
			t.Fatalf("%q: %v", text, err)
		}
	})
}

// An encoded edit of a chain of 6,000 rules: one transaction of about
// 6,000 messages (3 MB), whose acks overflow a socket's default receive
// buffer. The kernel takes it whole; the acks are all read (a lost ack
// made the edit look refused although it was committed: planned again,
// it found nothing to do and was not tracked as this backend's commit).
func TestKernelEncodedEditLarge(t *testing.T) {
	k := newNLKernel(t)
	var b strings.Builder
	b.WriteString("default deny incoming\n")
	for i := 0; i < 6000; i++ {
		fmt.Fprintf(&b, "allow from 198.51.%d.%d to any port %d proto tcp\n", i/250, i%250+1, 1000+i)
	}
	k.apply(compile(t, b.String()))
	n := len(k.rec.inputs)
	k.apply(compile(t, b.String()+"allow 22/tcp\n"))
	if len(k.rec.inputs) != n {
		t.Error("the edit went through nft")
	}
	var now uint32
	if err := k.do(func() (err error) { now, err = Generation(); return err }); err != nil {
		t.Fatal(err)
	}
	if before, after, ok := k.be.LastCommit(); !ok || after != now || after != before+1 {
		t.Errorf("last commit %d -> %d (%v), generation now %d: the edit's transaction was not tracked", before, after, ok, now)
	}
	if !strings.Contains(k.table(), "tcp dport 22 ") {
		t.Error("the edit is not in the kernel")
	}
}

// chainBlocks splits `nft -s list table` into its chains' text by name.
func chainBlocks(table string) map[string]string {
	out := map[string]string{}
	name := ""
	for line := range strings.Lines(table) {
		switch {
		case strings.HasPrefix(line, "\tchain "):
			name = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(line), "chain "), " {")
		case name != "" && line == "\t}\n":
			name = ""
		case name != "":
			out[name] += line
		}
	}
	return out
}
