package ipt

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/setstore"
)

// countingBackend is a Backend on the real tools that counts the
// programs it starts.
func countingBackend(t *testing.T, progs map[string]int) *Backend {
	return &Backend{Netlink: true, IpsetNetlink: true, Elements: setstore.Dir{Path: t.TempDir(), Prefix: "ipt-set."},
		Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
			progs[name]++
			return execrun.Exec(ctx, stdin, name, args...)
		}}
}

// moatLines are moat's lines of iptables-save and ip6tables-save.
func moatLines(t *testing.T, ctx context.Context) map[policy.Family][]string {
	t.Helper()
	out := map[policy.Family][]string{}
	for _, f := range families {
		save, err := execrun.Exec(ctx, nil, f.save)
		if err != nil {
			t.Fatal(err)
		}
		out[f.fam] = parseSave(save).lines
	}
	return out
}

// A rule change on iptables-nft is one nf_tables transaction written
// over netlink, both families and MOAT-GEN's record at once: no
// iptables-restore runs, the generation moves by one. iptables-save
// lists exactly what iptables-restore writes for the same rules (the
// drift check's text, 'explain'), MOAT-GEN's record reads as the new
// generation in both families, no rule is hidden from iptables-save,
// and the fingerprint taken afterwards is the one read back from the
// kernel.
func TestKernelRulesNetlink(t *testing.T) {
	ns := labtest.NS(t, "moatrulesnl")
	ctx := context.Background()
	progs := map[string]int{}
	b := countingBackend(t, progs)
	head := "default deny incoming\nallow 22/tcp\ndeny from 198.51.100.0/24\ndeny from 2001:db8:5::/48\n"
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		if err := b.Apply(ctx, compile(t, head)); err != nil {
			t.Fatal(err)
		}
		for i, extra := range []string{
			"allow 8080/tcp\n",
			"allow 8080/tcp\nallow from 203.0.113.0/24 to any port 53 proto udp\nlimit 2222/tcp\n",
			"allow 8081/tcp\n",
		} {
			clear(progs)
			rs := compile(t, head+extra)
			if err := b.Apply(ctx, rs); err != nil {
				t.Fatal(err)
			}
			if progs["iptables-restore"]+progs["ip6tables-restore"] != 0 {
				t.Errorf("change %d ran %v, want no restore", i, progs)
			}
			g0, commits, _, known := b.LastApply()
			if now, err := nftGeneration(); err != nil || !known || commits != 1 || now != g0+1 {
				t.Errorf("change %d: generation %d, want %d+1 (one transaction): commits %d, known %v (%v)", i, now, g0, commits, known, err)
			}
			names := SetNames(rs)
			gen := generation(rs, names, contentsOf(rs, names))
			st, err := (&Backend{Run: execrun.Exec}).readChains(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.gen[policy.FamilyV4] != gen || st.gen[policy.FamilyV6] != gen {
				t.Errorf("change %d: MOAT-GEN reads %q %q, want %q", i, st.gen[policy.FamilyV4], st.gen[policy.FamilyV6], gen)
			}
			if split := splitOf(st); split != "" {
				t.Errorf("change %d: %s", i, split)
			}
			if hidden, err := HiddenRules(); err != nil || len(hidden) > 0 {
				t.Errorf("change %d: hidden rules %q (%v)", i, hidden, err)
			}
			// The fingerprint the command records is the kernel's.
			fp, err := b.Fingerprint(ctx)
			if err != nil {
				t.Fatal(err)
			}
			fresh, err := (&Backend{Run: execrun.Exec, Netlink: true, IpsetNetlink: true, Elements: b.Elements, KeyDir: b.KeyDir}).Fingerprint(ctx)
			if err != nil || fp != fresh {
				t.Errorf("change %d: fingerprint after the apply %s, read anew %s (%v)", i, fp, fresh, err)
			}
			// What iptables-restore writes for the same rules lists the same.
			ours := moatLines(t, ctx)
			oldEnc := newXtEncoder
			newXtEncoder = func() (xtEncoder, error) { return nil, errXtUnsupported }
			err = (&Backend{Run: execrun.Exec, Netlink: true, IpsetNetlink: true, Full: true}).Apply(ctx, rs)
			newXtEncoder = oldEnc
			if err != nil {
				t.Fatal(err)
			}
			if theirs := moatLines(t, ctx); !equalLines(ours, theirs) {
				t.Errorf("change %d: iptables-save of the rules written over netlink:\n%s\nby iptables-restore:\n%s", i,
					strings.Join(ours[policy.FamilyV4], "\n")+"\n"+strings.Join(ours[policy.FamilyV6], "\n"),
					strings.Join(theirs[policy.FamilyV4], "\n")+"\n"+strings.Join(theirs[policy.FamilyV6], "\n"))
			}
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func equalLines(a, b map[policy.Family][]string) bool {
	for _, f := range families {
		if !slices.Equal(a[f.fam], b[f.fam]) {
			return false
		}
	}
	return true
}

// The fallbacks: a line the encoder does not write, a rule inserted by
// hand between moat's read and its transaction (the kernel refuses the
// transaction at the generation it read), a transaction refused: the
// change goes through iptables-restore whole, and LastApply does not
// vouch for a generation another change moved.
func TestKernelRulesNetlinkFallback(t *testing.T) {
	ns := labtest.NS(t, "moatrulesfb")
	ctx := context.Background()
	progs := map[string]int{}
	b := countingBackend(t, progs)
	head := "default deny incoming\nallow 22/tcp\n"
	oldEnc, oldSend := newXtEncoder, sendRules
	t.Cleanup(func() { newXtEncoder, sendRules = oldEnc, oldSend })
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		if err := b.Apply(ctx, compile(t, head)); err != nil {
			t.Fatal(err)
		}
		for i, c := range []struct {
			name   string
			refuse bool // the encoder refuses every line
			hand   bool // a rule inserted by hand just before the send
			fail   bool // the kernel refuses the transaction
		}{
			{name: "unsupported", refuse: true},
			{name: "hand change", hand: true},
			{name: "refused", fail: true},
		} {
			newXtEncoder = oldEnc
			if c.refuse {
				newXtEncoder = func() (xtEncoder, error) {
					enc, err := oldEnc()
					if err != nil {
						return nil, err
					}
					return refusingEncoder{enc}, nil
				}
			}
			sent := 0
			sendRules = func(txn *rulesTxn, gen uint32) error {
				sent++
				if c.hand {
					if out, err := execrun.Exec(ctx, nil, "iptables", "-I", "MOAT-INPUT", "1", "-p", "tcp", "--dport", "80", "-j", "DROP"); err != nil {
						t.Fatal(err, string(out))
					}
				}
				if c.fail {
					return errors.New("refused")
				}
				return oldSend(txn, gen)
			}
			clear(progs)
			rs := compile(t, head+"allow "+string(rune('1'+i))+"000/tcp\n")
			if err := b.Apply(ctx, rs); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if progs["iptables-restore"] == 0 || progs["ip6tables-restore"] == 0 {
				t.Errorf("%s: ran %v, want both restores", c.name, progs)
			}
			if (sent > 0) == c.refuse {
				t.Errorf("%s: %d transactions sent", c.name, sent)
			}
			before, commits, _, known := b.LastApply()
			now, err := nftGeneration()
			if err != nil {
				t.Fatal(err)
			}
			if c.hand && known && now == before+commits {
				t.Errorf("%s: LastApply vouches for generation %d (%d+%d) after a hand change", c.name, now, before, commits)
			}
			if !c.hand && (!known || now != before+commits) {
				t.Errorf("%s: generation %d, LastApply %d+%d known %v", c.name, now, before, commits, known)
			}
			names := SetNames(rs)
			gen := generation(rs, names, contentsOf(rs, names))
			st, err := (&Backend{Run: execrun.Exec}).readChains(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.gen[policy.FamilyV4] != gen || st.gen[policy.FamilyV6] != gen || splitOf(st) != "" {
				t.Errorf("%s: MOAT-GEN reads %q %q, want %q (%s)", c.name, st.gen[policy.FamilyV4], st.gen[policy.FamilyV6], gen, splitOf(st))
			}
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// refusingEncoder refuses every line (ErrUnsupported).
type refusingEncoder struct{ xtEncoder }

func (refusingEncoder) encode(uint8, string) ([]xtRule, error) { return nil, errXtUnsupported }

// A first apply is one transaction too, into tables that are there
// (another tool's rules in them) or not: moat's chains made, their
// rules, the jumps inserted first into the built-in chains, MOAT-GEN,
// and the tables and built-in chains missing made as iptables-nft makes
// them. iptables-save then lists what a first apply through
// iptables-restore lists (the other tool's rules after moat's jumps),
// nft the same tables and base chains; 'disable' (Remove) leaves the
// other tool's rules.
func TestKernelRulesNetlinkFirstApply(t *testing.T) {
	ctx := context.Background()
	rs := compile(t, "default deny incoming\nallow 22/tcp\ndeny from 198.51.100.0/24\nallow out 53\n")
	oldEnc := newXtEncoder
	t.Cleanup(func() { newXtEncoder = oldEnc })
	// apply applies rs in a namespace of its own, with the other tool's
	// rules first (others), through iptables-restore or over netlink
	// (nl), and returns every rule iptables-save lists and the tables and
	// chains nft lists.
	apply := func(others, nl bool) (rules, chains []string) {
		ns := labtest.NS(t, "moatrulesfirst")
		progs := map[string]int{}
		err := ns.Do(func() error {
			if legacyTables() {
				t.Skip("legacy x_tables loaded here")
			}
			if others {
				for _, tool := range []string{"iptables", "ip6tables"} {
					for _, args := range [][]string{{"-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT"}, {"-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "9", "-j", "ACCEPT"}} {
						if out, err := execrun.Exec(ctx, nil, tool, args...); err != nil {
							t.Fatal(err, string(out))
						}
					}
				}
			}
			newXtEncoder = oldEnc
			if !nl {
				newXtEncoder = func() (xtEncoder, error) { return nil, errXtUnsupported }
			}
			b := countingBackend(t, progs)
			if err := b.Apply(ctx, rs); err != nil {
				t.Fatal(err)
			}
			newXtEncoder = oldEnc
			restores := progs["iptables-restore"] + progs["ip6tables-restore"]
			if nl != (restores == 0) {
				t.Errorf("others %v, netlink %v: ran %v", others, nl, progs)
			}
			if nl {
				g0, commits, _, known := b.LastApply()
				if now, err := nftGeneration(); err != nil || !known || commits != 1 || now != g0+1 || !b.LastApplyFresh() {
					t.Errorf("others %v: generation %d, want %d+1: commits %d, known %v, fresh %v (%v)", others, now, g0, commits, known, b.LastApplyFresh(), err)
				}
				if split, err := b.Split(ctx); err != nil || split != "" {
					t.Errorf("others %v: split %q (%v)", others, split, err)
				}
			}
			for _, f := range families {
				save, err := execrun.Exec(ctx, nil, f.save)
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range strings.Split(string(save), "\n") {
					if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, ":") || strings.HasPrefix(l, "*") {
						rules = append(rules, l)
					}
				}
			}
			out, err := execrun.Exec(ctx, nil, "nft", "list", "ruleset")
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(string(out), "\n") {
				if l = strings.TrimSpace(l); strings.HasPrefix(l, "table ") || strings.HasPrefix(l, "chain ") || strings.HasPrefix(l, "type ") {
					chains = append(chains, l)
				}
			}
			if err := b.Remove(ctx); err != nil {
				t.Fatal(err)
			}
			for _, f := range families {
				save, err := execrun.Exec(ctx, nil, f.save)
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				if others {
					n = 2
				}
				if strings.Contains(string(save), "MOAT-") || strings.Count(string(save), "--dport 9 -j ACCEPT") != n {
					t.Errorf("others %v, netlink %v: after Remove:\n%s", others, nl, save)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return rules, chains
	}
	for _, others := range []bool{true, false} {
		rules, chains := apply(others, false)
		nlRules, nlChains := apply(others, true)
		if !slices.Equal(rules, nlRules) {
			t.Errorf("others %v: iptables-save over netlink:\n%s\nthrough iptables-restore:\n%s", others, strings.Join(nlRules, "\n"), strings.Join(rules, "\n"))
		}
		if !slices.Equal(chains, nlChains) {
			t.Errorf("others %v: nft's tables and chains over netlink:\n%s\nthrough iptables-restore:\n%s", others, strings.Join(nlChains, "\n"), strings.Join(chains, "\n"))
		}
	}
}

// Jumps changed by hand (one made plain, a second one added, another
// tool's rule put before moat's) are put back over netlink too, in the
// same transaction: the first jump replaced where it stands, the others
// deleted. iptables-save then lists what iptables-restore's deletes and
// insert (writeJump) leave.
func TestKernelRulesNetlinkJumpsRepaired(t *testing.T) {
	ctx := context.Background()
	rs := compile(t, "default deny incoming\nallow 22/tcp\ndeny from 198.51.100.0/24\ndeny from 2001:db8:7::/48\n")
	oldEnc := newXtEncoder
	t.Cleanup(func() { newXtEncoder = oldEnc })
	hand := [][]string{
		{"iptables", "-t", "raw", "-R", "PREROUTING", "1", "-j", "MOAT-PREROUTING"},
		{"iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "9", "-j", "ACCEPT"},
		{"ip6tables", "-A", "INPUT", "-j", "MOAT-INPUT"},
		{"ip6tables", "-I", "INPUT", "1", "-p", "udp", "--dport", "9", "-j", "ACCEPT"},
		{"ip6tables", "-A", "INPUT", "-p", "udp", "--dport", "10", "-j", "ACCEPT"},
		{"ip6tables", "-A", "INPUT", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED", "-j", "MOAT-INPUT"},
	}
	run := func(nl bool) []string {
		ns := labtest.NS(t, "moatrulesjump")
		var rules []string
		err := ns.Do(func() error {
			if legacyTables() {
				t.Skip("legacy x_tables loaded here")
			}
			progs := map[string]int{}
			b := countingBackend(t, progs)
			if err := b.Apply(ctx, rs); err != nil {
				t.Fatal(err)
			}
			for _, args := range hand {
				if out, err := execrun.Exec(ctx, nil, args[0], args[1:]...); err != nil {
					t.Fatal(err, string(out))
				}
			}
			newXtEncoder = oldEnc
			if !nl {
				newXtEncoder = func() (xtEncoder, error) { return nil, errXtUnsupported }
			}
			clear(progs)
			b.Full = true
			err := b.Apply(ctx, rs)
			newXtEncoder = oldEnc
			if err != nil {
				t.Fatal(err)
			}
			if restores := progs["iptables-restore"] + progs["ip6tables-restore"]; nl != (restores == 0) {
				t.Errorf("netlink %v: ran %v", nl, progs)
			}
			if nl {
				// The reload's "changing" mark (its sets are loaded whole),
				// then the transaction.
				g0, commits, _, known := b.LastApply()
				if now, err := nftGeneration(); err != nil || !known || commits != 2 || now != g0+2 {
					t.Errorf("generation %d, want %d+2: commits %d, known %v (%v)", now, g0, commits, known, err)
				}
			}
			for _, f := range families {
				save, err := execrun.Exec(ctx, nil, f.save)
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range strings.Split(string(save), "\n") {
					if strings.HasPrefix(l, "-A ") {
						rules = append(rules, l)
					}
				}
			}
			return b.Remove(ctx)
		})
		if err != nil {
			t.Fatal(err)
		}
		return rules
	}
	want, got := run(false), run(true)
	if !slices.Equal(got, want) {
		t.Errorf("iptables-save over netlink:\n%s\nthrough iptables-restore:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, l := range []string{"-A INPUT -p udp -m udp --dport 9 -j ACCEPT", "-A INPUT -p udp -m udp --dport 10 -j ACCEPT"} {
		if !slices.Contains(got, l) {
			t.Errorf("the other tool's %q gone:\n%s", l, strings.Join(got, "\n"))
		}
	}
}

// MOAT-GEN deleted by hand from one family, then a change of sets and
// rules: Apply restores the "changing" mark into a new MOAT-GEN (the
// chain its read did not find), then the transaction declares the chain
// again, which must empty it as iptables-restore would (it appended the
// record after the mark, left behind: a kill of a first enable in
// TestKillDuringFirstEnable left that state).
func TestKernelRulesNetlinkChainMadeMeanwhile(t *testing.T) {
	ns := labtest.NS(t, "moatrulesgen")
	ctx := context.Background()
	progs := map[string]int{}
	b := countingBackend(t, progs)
	head := "default deny incoming\nallow 22/tcp\n"
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		if err := b.Apply(ctx, compile(t, head+denyList(5, -1))); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"iptables", "-F", GenChain}, {"iptables", "-X", GenChain}} {
			if out, err := execrun.Exec(ctx, nil, args[0], args[1:]...); err != nil {
				t.Fatal(err, string(out))
			}
		}
		rs := compile(t, head+"allow 8080/tcp\n"+denyList(6, 2))
		if err := b.Apply(ctx, rs); err != nil {
			t.Fatal(err)
		}
		names := SetNames(rs)
		c := contentsOf(rs, names)
		want := genRuleLines("*filter\n" + genChainRules(generation(rs, names, c), rulesHash(rs, names), c))
		for _, f := range families {
			save, err := execrun.Exec(ctx, nil, f.save, "-t", "filter")
			if err != nil {
				t.Fatal(err)
			}
			if got := genRuleLines(string(save)); !slices.Equal(got, want) {
				t.Errorf("%s MOAT-GEN:\n%s\nwant:\n%s", f.fam, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A chain named as a built-in one that is not iptables' built-in (a
// regular chain INPUT, which no packet goes through, or a base chain at
// another priority or hook), made before the first enable: the
// transaction inserted moat's jump into it and Apply said nothing,
// leaving IPv4 or IPv6 unfiltered behind an "active" moat, where
// iptables-restore refuses such a chain for its built-in (CHAIN_ADD:
// Operation not supported). Now the change goes through
// iptables-restore, which refuses it as before; no jump into moat's
// chain is left in a chain that sees no packet.
func TestKernelRulesNetlinkBuiltinNotBase(t *testing.T) {
	ctx := context.Background()
	rs := compile(t, "default deny incoming\nallow 22/tcp\n")
	oldEnc := newXtEncoder
	t.Cleanup(func() { newXtEncoder = oldEnc })
	cases := []struct {
		name string
		nft  [][]string // made before the first enable
	}{
		{"ip regular INPUT", [][]string{{"add", "table", "ip", "filter"}, {"add", "chain", "ip", "filter", "INPUT"}}},
		{"ip6 regular OUTPUT", [][]string{{"add", "table", "ip6", "filter"}, {"add", "chain", "ip6", "filter", "OUTPUT"}}},
		{"ip raw regular PREROUTING", [][]string{{"add", "table", "ip", "raw"}, {"add", "chain", "ip", "raw", "PREROUTING"}}},
		{"ip INPUT at priority 10", [][]string{{"add", "table", "ip", "filter"}, {"add", "chain", "ip", "filter", "INPUT", "{ type filter hook input priority 10; }"}}},
		{"ip6 INPUT at the output hook", [][]string{{"add", "table", "ip6", "filter"}, {"add", "chain", "ip6", "filter", "INPUT", "{ type filter hook output priority 0; }"}}},
	}
	for _, c := range cases {
		for _, nl := range []bool{false, true} {
			ns := labtest.NS(t, "moatrulesbase")
			err := ns.Do(func() error {
				if legacyTables() {
					t.Skip("legacy x_tables loaded here")
				}
				for _, args := range c.nft {
					if out, err := execrun.Exec(ctx, nil, "nft", args...); err != nil {
						t.Fatal(err, string(out))
					}
				}
				newXtEncoder = oldEnc
				if !nl {
					newXtEncoder = func() (xtEncoder, error) { return nil, errXtUnsupported }
				}
				b := countingBackend(t, map[string]int{})
				err := b.Apply(ctx, rs)
				newXtEncoder = oldEnc
				if err == nil {
					t.Errorf("%s (netlink %v): applied without an error", c.name, nl)
				}
				out, lerr := execrun.Exec(ctx, nil, "nft", "list", "ruleset")
				if lerr != nil {
					t.Fatal(lerr)
				}
				// A jump into moat's chain from a chain that is not a
				// base chain (no "hook" line in its block).
				for _, block := range strings.Split(string(out), "chain ")[1:] {
					if strings.Contains(block, "jump MOAT-") && !strings.Contains(block, " hook ") {
						t.Errorf("%s (netlink %v): a jump into moat's chain in a chain no packet goes through:\n%s", c.name, nl, out)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A transaction whose answer is lost (ENOBUFS: committed or not, whole)
// makes Apply start again from a new read, through iptables-restore:
// committed, that read finds the change made and nothing is restored;
// not committed, the restores make it. Either way the rules and the
// record are the new ones in both families, and LastApply does not
// vouch for the lost transaction (it starts at the generation after).
func TestKernelRulesNetlinkAckLost(t *testing.T) {
	ns := labtest.NS(t, "moatrulesack")
	ctx := context.Background()
	progs := map[string]int{}
	b := countingBackend(t, progs)
	head := "default deny incoming\nallow 22/tcp\n"
	oldSend := sendRules
	t.Cleanup(func() { sendRules = oldSend })
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		if err := b.Apply(ctx, compile(t, head)); err != nil {
			t.Fatal(err)
		}
		for i, committed := range []bool{true, false} {
			sent := 0
			var g0 uint32
			sendRules = func(txn *rulesTxn, gen uint32) error {
				sent++
				g0 = gen
				if committed {
					if err := oldSend(txn, gen); err != nil {
						t.Fatal(err)
					}
				}
				return fmt.Errorf("nftables: transaction's acks lost, committed or not: %w", unix.ENOBUFS)
			}
			clear(progs)
			rs := compile(t, head+"allow "+string(rune('5'+i))+"000/tcp\n")
			if err := b.Apply(ctx, rs); err != nil {
				t.Fatalf("committed %v: %v", committed, err)
			}
			restores := progs["iptables-restore"] + progs["ip6tables-restore"]
			if sent != 1 || committed != (restores == 0) {
				t.Errorf("committed %v: %d sent, then %v", committed, sent, progs)
			}
			before, _, _, _ := b.LastApply()
			if committed && before == g0 {
				t.Errorf("committed %v: LastApply starts at %d, the generation the lost transaction was sent at", committed, before)
			}
			names := SetNames(rs)
			gen := generation(rs, names, contentsOf(rs, names))
			st, err := (&Backend{Run: execrun.Exec}).readChains(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.gen[policy.FamilyV4] != gen || st.gen[policy.FamilyV6] != gen || splitOf(st) != "" {
				t.Errorf("committed %v: MOAT-GEN reads %q %q, want %q (%s)", committed, st.gen[policy.FamilyV4], st.gen[policy.FamilyV6], gen, splitOf(st))
			}
			if jumps := strings.Count(strings.Join(moatLines(t, ctx)[policy.FamilyV4], "\n"), "-j MOAT-INPUT"); jumps != 1 {
				t.Errorf("committed %v: %d jumps into MOAT-INPUT", committed, jumps)
			}
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}
