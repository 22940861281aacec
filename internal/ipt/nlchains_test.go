package ipt

import (
	"context"
	"hash"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
)

// The fingerprint read over netlink (iptables-nft) is the same for the
// same rules written again (new handles) and after traffic (counters),
// and differs after every kind of hand change to moat's chains, their
// jumps and the sets they use: a rule inserted or appended with
// iptables or ip6tables, a native nftables rule (one iptables-save
// shows as moat's own), a rule's set swapped for another, a jump
// deleted or added, a chain added, MOAT-GEN's record edited, a member
// added to a set. Each change undone (by hand or by a whole rewrite),
// the fingerprint is the first one again. None of it runs iptables-save.
func TestKernelNetlinkFingerprint(t *testing.T) {
	ns := labtest.NS(t, "moatnlfp")
	ctx := context.Background()
	saves := 0
	b := &Backend{Netlink: true, IpsetNetlink: true, Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		if strings.HasSuffix(name, "tables-save") {
			saves++
		}
		return execrun.Exec(ctx, stdin, name, args...)
	}}
	rs := compile(t, "default deny incoming\ndefault reject outgoing\nlogging medium\nallow 22/tcp\nlimit 2222/tcp\n"+
		"allow from 192.0.2.0/24 to any port 80 proto tcp\nreject 25/tcp\nallow 1000:2000/udp\nallow out 53\n"+
		"allow in on lo\nguard portscan ports 10 within 60s bantime 1h\n"+denyList(3, -1))
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		run := func(args ...string) {
			t.Helper()
			// A program started right after an Apply in this process
			// (ipset destroy of a set the rewrite stopped using) finds the
			// set free once Apply's sockets are closed (nft.CloseLater);
			// between commands, the process's exit closes them.
			nft.WaitClosed()
			if out, err := execrun.Exec(ctx, nil, args[0], args[1:]...); err != nil {
				t.Fatalf("%q: %v %s", args, err, out)
			}
		}
		if err := b.Apply(ctx, rs); err != nil {
			t.Fatal(err)
		}
		print := func() string {
			t.Helper()
			b.track = commitTrack{} // read the kernel, not what Apply loaded
			k, err := b.FingerprintKernel(ctx)
			if err != nil || k.Fingerprint == "" {
				t.Fatalf("fingerprint: %q %v", k.Fingerprint, err)
			}
			return k.Fingerprint
		}
		saves = 0
		fp0 := print()
		if saves != 0 {
			t.Errorf("the fingerprint ran iptables-save %d times", saves)
		}
		// Traffic through moat's rules (loopback, both families).
		for _, a := range []string{"127.0.0.1:9", "[::1]:9"} {
			if c, err := net.DialTimeout("tcp", a, 300*time.Millisecond); err == nil {
				_ = c.Close()
			}
		}
		if fp := print(); fp != fp0 {
			t.Errorf("traffic (counters) changed the fingerprint")
		}
		b.Full = true
		if err := b.Apply(ctx, rs); err != nil {
			t.Fatal(err)
		}
		b.Full = false
		if fp := print(); fp != fp0 {
			t.Errorf("the same rules written again changed the fingerprint")
		}
		port22 := func(fam string) string {
			t.Helper()
			out, err := execrun.Exec(ctx, nil, "nft", "-a", "list", "chain", fam, "filter", "MOAT-INPUT")
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, "tcp dport 22 ") {
					return l[strings.LastIndex(l, " ")+1:]
				}
			}
			t.Fatalf("no rule for port 22:\n%s", out)
			return ""
		}
		type change struct {
			name       string
			do, undo   [][]string
			rewriteFix bool // a whole rewrite undoes it
		}
		for _, c := range []change{
			{name: "iptables -I", do: [][]string{{"iptables", "-I", "MOAT-INPUT", "3", "-p", "tcp", "--dport", "9999", "-j", "RETURN"}},
				undo: [][]string{{"iptables", "-D", "MOAT-INPUT", "3"}}},
			{name: "ip6tables -A", do: [][]string{{"ip6tables", "-A", "MOAT-OUTPUT", "-j", "RETURN"}},
				undo: [][]string{{"ip6tables", "-D", "MOAT-OUTPUT", "-j", "RETURN"}}},
			{name: "a rule's comment", do: [][]string{{"iptables", "-R", "MOAT-FORWARD", "1", "-m", "comment", "--comment", "default:forwarx", "-j", "RETURN"}},
				rewriteFix: true},
			{name: "nft add rule", do: [][]string{{"nft", "add", "rule", "ip", "filter", "MOAT-INPUT", "tcp", "dport", "7777", "accept"}},
				rewriteFix: true},
			{name: "nft rule iptables-save shows as moat's", do: [][]string{
				{"nft", "add", "set", "ip", "filter", "hs", "{ type ipv4_addr; }"},
				{"nft", "replace", "rule", "ip", "filter", "MOAT-INPUT", "handle", "HANDLE4", "ip", "saddr", "!=", "@hs", "tcp", "dport", "22", "counter", "return", "comment", "L3"},
			}, undo: [][]string{{"REWRITE"}, {"nft", "delete", "set", "ip", "filter", "hs"}}},
			{name: "another set", do: [][]string{
				{"ipset", "create", "handset", "hash:net"},
				{"iptables", "-t", "raw", "-R", "MOAT-PREROUTING", "1", "!", "-i", "lo", "-m", "set", "--match-set", "handset", "src", "-m", "set", "!", "--match-set", "moat-protect4", "src", "-m", "addrtype", "!", "--dst-type", "UNICAST", "-m", "comment", "--comment", "builtin:ban", "-j", "DROP"},
			}, undo: [][]string{{"REWRITE"}, {"ipset", "destroy", "handset"}}},
			{name: "a jump deleted", do: [][]string{{"iptables", "-D", "FORWARD", "-j", "MOAT-FORWARD"}}, rewriteFix: true},
			// moat's jumps carry conditions: each is part of the print.
			// (Not a form of moat's: a rewrite leaves it, as any rule of
			// another's; put back by hand.)
			{name: "a jump's condition changed", do: [][]string{{"iptables", "-R", "INPUT", "1", "-m", "conntrack", "!", "--ctstate", "NEW,RELATED,ESTABLISHED", "-j", "MOAT-INPUT"}},
				undo: [][]string{{"iptables", "-R", "INPUT", "1", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED", "-j", "MOAT-INPUT"}}},
			{name: "a jump made plain", do: [][]string{{"ip6tables", "-t", "raw", "-R", "PREROUTING", "1", "-j", "MOAT-PREROUTING"}},
				rewriteFix: true},
			{name: "a second jump", do: [][]string{{"ip6tables", "-A", "INPUT", "-j", "MOAT-INPUT"}},
				undo: [][]string{{"ip6tables", "-D", "INPUT", "2"}}},
			{name: "a chain", do: [][]string{{"iptables", "-N", "MOAT-EXTRA"}}, undo: [][]string{{"iptables", "-X", "MOAT-EXTRA"}}},
			{name: "MOAT-GEN", do: [][]string{{"iptables", "-A", "MOAT-GEN", "-m", "comment", "--comment", "moat:set moat-x 1", "-j", "RETURN"}},
				rewriteFix: true},
			{name: "a protected member", do: [][]string{{"ipset", "add", "moat-protect4", "203.0.113.9"}},
				undo: [][]string{{"ipset", "del", "moat-protect4", "203.0.113.9"}}},
		} {
			for _, args := range c.do {
				for i, a := range args {
					args[i] = strings.ReplaceAll(a, "HANDLE4", port22("ip"))
				}
				run(args...)
			}
			if fp := print(); fp == fp0 {
				t.Errorf("%s: the fingerprint did not change", c.name)
			}
			undo := c.undo
			if c.rewriteFix {
				undo = [][]string{{"REWRITE"}}
			}
			for _, args := range undo {
				if args[0] == "REWRITE" {
					b.Full = true
					if err := b.Apply(ctx, rs); err != nil {
						t.Fatalf("%s: rewrite: %v", c.name, err)
					}
					b.Full = false
					continue
				}
				run(args...)
			}
			if fp := print(); fp != fp0 {
				t.Errorf("%s undone: the fingerprint is not the first one", c.name)
			}
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// With legacy x_tables tools (iptables-legacy), moat's chains are not in
// nftables: no generation tracks them and netlink cannot read them. The
// backend reads them with iptables-save as before: the fingerprint
// covers them, a hand change shows, and nothing is predicted.
func TestKernelLegacyToolsOldPath(t *testing.T) {
	ns := labtest.NS(t, "moatlegacy")
	ctx := context.Background()
	for _, p := range []string{"iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-save", "ip6tables-legacy-restore"} {
		if _, err := execrun.Exec(ctx, nil, "which", p); err != nil {
			t.Skipf("no %s", p)
		}
	}
	saves := 0
	legacy := func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		if strings.HasSuffix(name, "tables-save") {
			saves++
		}
		if strings.HasPrefix(name, "ip6tables-") || strings.HasPrefix(name, "iptables-") {
			name = strings.Replace(name, "tables-", "tables-legacy-", 1)
		}
		return execrun.Exec(ctx, stdin, name, args...)
	}
	b := &Backend{Netlink: true, IpsetNetlink: true, Run: legacy}
	// The tools are the legacy ones (Run): moat writes no rule itself.
	old := nftTools
	nftTools = func() bool { return false }
	t.Cleanup(func() { nftTools = old })
	rs := compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(3, -1))
	err := ns.Do(func() error {
		if err := b.Apply(ctx, rs); err != nil {
			t.Fatal(err)
		}
		if !legacyTables() || b.InNftables() {
			t.Fatal("the legacy tools made no legacy table")
		}
		if _, _, _, known := b.LastApply(); known {
			t.Error("an Apply through legacy tables says its commits are known")
		}
		saves = 0
		fp0, err := b.Fingerprint(ctx)
		if err != nil || fp0 == "" || saves == 0 {
			t.Fatalf("fingerprint %q (%v), %d saves: want one read with iptables-save", fp0, err, saves)
		}
		out, err := execrun.Exec(ctx, nil, "iptables-legacy-save")
		if err != nil || !strings.Contains(string(out), "-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n") || !strings.Contains(string(out), "moat:gen") {
			t.Fatalf("iptables-legacy-save does not list moat's chains (%v):\n%s", err, out)
		}
		if nft, _ := execrun.Exec(ctx, nil, "nft", "list", "ruleset"); strings.Contains(string(nft), "MOAT-") {
			t.Errorf("moat's chains in nftables with the legacy tools:\n%s", nft)
		}
		if out, err := execrun.Exec(ctx, nil, "iptables-legacy", "-I", "MOAT-INPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN"); err != nil {
			t.Fatal(err, string(out))
		}
		if fp, err := b.Fingerprint(ctx); err != nil || fp == fp0 {
			t.Errorf("a rule added with iptables-legacy: fingerprint %q (%v), unchanged", fp, err)
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// predictState follows what an iptables-restore --noflush of moat's own
// scripts does (a declared chain emptied, MOAT-GEN's record replaced,
// a jump inserted, or one of another form replaced: TestPredictStateJumps)
// and refuses a script with anything else, so a
// prediction never stands for a restore it cannot follow.
func TestPredictState(t *testing.T) {
	v4 := families[0].fam
	orig := &state{jumps: map[policy.Family]map[string]Jump{v4: {"INPUT": {Pos: 1}}}, has: map[policy.Family]map[string]bool{v4: {"MOAT-INPUT": true, GenChain: true}},
		gen: map[policy.Family]string{v4: "old"}, sets: map[string]bool{}, lines: map[policy.Family][]string{v4: {":MOAT-INPUT"}},
		held: map[policy.Family]contents{v4: {"moat-a": "h1", "moat-b": "h2"}}, rules: map[policy.Family]string{v4: "r1"}}
	script := "*raw\n:MOAT-PREROUTING - [0:0]\n-A MOAT-PREROUTING -j DROP\n-I PREROUTING 1 -j MOAT-PREROUTING\nCOMMIT\n" +
		"*filter\n:MOAT-INPUT - [0:0]\n" + genChainRules("new", "r2", contents{"moat-b": "h3"}) + "-A MOAT-INPUT -j RETURN\n-I OUTPUT 1 -j MOAT-OUTPUT\nCOMMIT\n"
	st := predictState(orig, map[policy.Family][]string{v4: {script}})
	if st == nil {
		t.Fatal("moat's own script refused")
	}
	want := map[string]bool{"MOAT-INPUT": true, GenChain: true, "MOAT-PREROUTING": true}
	if !reflect.DeepEqual(st.has[v4], want) || !reflect.DeepEqual(st.jumps[v4], map[string]Jump{"INPUT": {Pos: 1}, "PREROUTING": {Pos: 1}, "OUTPUT": {Pos: 1}}) ||
		st.gen[v4] != "new" || st.rules[v4] != "r2" || !reflect.DeepEqual(st.held[v4], contents{"moat-b": "h3"}) || !st.noLines || st.lines[v4] != nil {
		t.Errorf("predicted %+v", st)
	}
	if orig.gen[v4] != "old" || len(orig.held[v4]) != 2 || orig.noLines {
		t.Errorf("the state read was changed: %+v", orig)
	}
	// The jump deleted (writeJump deletes every jump, then inserts):
	// none left.
	if st := predictState(orig, map[policy.Family][]string{v4: {"*filter\n-D INPUT -j MOAT-INPUT\nCOMMIT\n"}}); st == nil || len(st.jumps[v4]) != 0 {
		t.Errorf("a deletion of the jump predicted %+v", st)
	}
	for _, bad := range []string{
		"*filter\n-D INPUT -j MOAT-INPUT\n-D INPUT -j MOAT-INPUT\nCOMMIT\n",
		"*filter\n-X MOAT-INPUT\nCOMMIT\n",
		"*nat\n:MOAT-INPUT - [0:0]\nCOMMIT\n",
		":MOAT-INPUT - [0:0]\n",
		"*filter\n:OTHER - [0:0]\nCOMMIT\n",
		"*filter\n-A INPUT -j ACCEPT\nCOMMIT\n",
		"*filter\n-I INPUT 0 -j MOAT-INPUT\nCOMMIT\n",
		"*filter\n-I INPUT 1 -s 192.0.2.9/32 -j MOAT-INPUT\nCOMMIT\n",
		"*filter\n-D INPUT ! -i lo -j MOAT-INPUT\nCOMMIT\n",
		"*filter\n-I INPUT 1 -j MOAT-OUTPUT\nCOMMIT\n",
	} {
		if st := predictState(orig, map[policy.Family][]string{v4: {bad}}); st != nil {
			t.Errorf("%q predicted: %+v", bad, st)
		}
	}
}

// The rule parsing of a netlink dump takes any bytes without a panic.
func FuzzNlRule(f *testing.F) {
	f.Add("immediate", []byte{8, 0, 1, 0, 0, 0, 0, 0, 16, 0, 2, 0, 12, 0, 2, 0, 8, 0, 1, 0, 0xff, 0xff, 0xff, 0xfd}, "INPUT")
	f.Add("match", []byte{8, 0, 1, 0, 's', 'e', 't', 0, 8, 0, 2, 0, 0, 0, 0, 4, 6, 0, 3, 0, 1, 0}, "MOAT-INPUT")
	f.Add("target", []byte{8, 0, 1, 0, 'S', 'E', 'T', 0, 8, 0, 2, 0, 0, 0, 0, 3, 16, 0, 3, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff}, "MOAT-INPUT")
	f.Fuzz(func(t *testing.T, name string, data []byte, chain string) {
		r := nlRule{chain: chain, exprs: []nlExpr{{name: "counter"}, {name: name, data: data}}}
		_ = r.isJumpToMoat()
		r.setIndexes(map[uint16]bool{})
		_, _, _ = immediateVerdict(data)
	})
}

// When moat's chains cannot be read over netlink, the fingerprint reads
// them with iptables-save anew: never the state predicted from moat's
// scripts, which has no lines and would leave the chains out. A rule
// added by hand then changes it.
func TestKernelNetlinkFingerprintFallback(t *testing.T) {
	ns := labtest.NS(t, "moatnlfb")
	ctx := context.Background()
	saves := 0
	run := func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		if strings.HasSuffix(name, "tables-save") {
			saves++
		}
		return execrun.Exec(ctx, stdin, name, args...)
	}
	b := &Backend{Netlink: true, IpsetNetlink: true, Run: run}
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		if err := b.Apply(ctx, compile(t, "default deny incoming\nallow 22/tcp\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Fingerprint(ctx); err != nil {
			t.Fatal(err)
		}
		// A rule change: the chains are predicted, without lines.
		if err := b.Apply(ctx, compile(t, "default deny incoming\nallow 22/tcp\nallow 80/tcp\n")); err != nil {
			t.Fatal(err)
		}
		if b.track.after == nil || b.track.after.st == nil || !b.track.after.st.noLines {
			t.Fatal("a rule change left no predicted state")
		}
		defer func(h func(context.Context, hash.Hash) (nlChainsRead, error)) { hashChains = h }(hashChains)
		hashChains = func(context.Context, hash.Hash) (nlChainsRead, error) { return nlChainsRead{}, errIpsetNetlink }
		saves = 0
		fp, err := b.Fingerprint(ctx)
		if err != nil || fp == "" || saves != 2 {
			t.Fatalf("fingerprint without netlink: %q (%v), %d saves, want the chains read (2)", fp, err, saves)
		}
		fresh := &Backend{Netlink: true, IpsetNetlink: true, Run: run}
		if again, err := fresh.Fingerprint(ctx); err != nil || again != fp {
			t.Errorf("read anew: %q (%v), want %q", again, err, fp)
		}
		if out, err := execrun.Exec(ctx, nil, "iptables", "-A", "MOAT-INPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN"); err != nil {
			t.Fatal(err, string(out))
		}
		if after, err := (&Backend{Netlink: true, IpsetNetlink: true, Run: run}).Fingerprint(ctx); err != nil || after == fp {
			t.Errorf("a rule added by hand: %q (%v), unchanged", after, err)
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestKernelSaveIncompatible: an nftables rule iptables cannot read,
// added by hand with nft anywhere in iptables-nft's filter table (here in
// a chain of its own), makes iptables-save print "# Table `filter' is
// incompatible, use 'nft' tool." instead of the table, and exit 0. Read as
// a table without moat's chains, it made every apply take moat's chains
// for absent (a first enable: another jump into MOAT-INPUT each time, the
// full comparison skipped), status report an apply "interrupted between
// the two families", and the snapshot a --confirm change rolls back to
// hold none of moat's filter chains. It is an error that says why.
func TestKernelSaveIncompatible(t *testing.T) {
	ns := labtest.NS(t, "moatsaveinc")
	ctx := context.Background()
	rs := compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(3, -1))
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		b := &Backend{Netlink: true, IpsetNetlink: true, Run: execrun.Exec}
		if err := b.Apply(ctx, rs); err != nil {
			t.Fatal(err)
		}
		if out, err := execrun.Exec(ctx, nil, "nft", "add", "chain", "ip", "filter", "ADVIPT"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		if out, err := execrun.Exec(ctx, nil, "nft", "add", "rule", "ip", "filter", "ADVIPT", "socket", "transparent", "1", "accept"); err != nil {
			t.Skipf("no socket expression here: %v %s", err, out)
		}
		out, err := execrun.Exec(ctx, nil, "iptables-save", "-t", "filter")
		if err != nil || !strings.Contains(string(out), "incompatible") {
			t.Skipf("iptables-save prints the table here: %v\n%s", err, out)
		}
		nb := &Backend{Netlink: true, IpsetNetlink: true, Run: execrun.Exec}
		if st, err := nb.readChains(ctx); err == nil || !strings.Contains(err.Error(), "list table ip filter") ||
			!strings.Contains(err.Error(), `in chain "ADVIPT" (nftables expression socket)`) {
			t.Errorf("moat's chains read from an incompatible table: %v (state %v)", err, st)
		}
		if _, err := nb.Snapshot(ctx); err == nil {
			t.Error("a snapshot taken from an incompatible table")
		}
		if err := nb.Apply(ctx, rs); err == nil {
			t.Error("an apply over an incompatible table")
		}
		if out, err := execrun.Exec(ctx, nil, "nft", "list", "chain", "ip", "filter", "INPUT"); err != nil || strings.Count(string(out), "jump MOAT-INPUT") != 1 {
			t.Errorf("INPUT:\n%s%v", out, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
