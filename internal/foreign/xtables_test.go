package foreign

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	gnft "github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// A family whose only iptables-nft table is a filter table proven moat's
// alone is not read: no iptables -V, no iptables-save, no nft listing of
// it. The other family, another table, or a failed proof read as before.
func TestDetectOverSkipsMoatOnlyFilter(t *testing.T) {
	noLegacy(t)
	var ran []string
	run := func(_ context.Context, _ []byte, name string, args ...string) ([]byte, error) {
		ran = append(ran, strings.Join(append([]string{name}, args...), " "))
		switch name {
		case "iptables":
			return []byte("iptables v1.8.9 (nf_tables)\n"), nil
		case "ip6tables-save":
			return []byte("*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j REJECT\nCOMMIT\n"), nil
		case "iptables-save":
			return []byte("*filter\n:INPUT DROP [0:0]\nCOMMIT\n"), nil
		}
		return nil, errors.New("unexpected " + name)
	}
	has := func(string) bool { return true }
	tables := func() ([][2]string, error) {
		return [][2]string{{"inet", "moat"}, {"ip", "filter"}, {"ip", "raw"}, {"ip6", "filter"}, {"ip6", "raw"}}, nil
	}
	proven := map[string]bool{"ip": true, "ip6": true}
	var asked []string
	onlyMoat := func(fam string) (bool, error) {
		asked = append(asked, fam)
		return proven[fam], nil
	}
	got, err := DetectOver(context.Background(), run, has, tables, onlyMoat)
	if err != nil || len(got) != 0 || len(ran) != 0 {
		t.Fatalf("both families moat's alone: got %v, %v; ran %q", got, err, ran)
	}
	proven["ip6"] = false
	ran = nil
	got, err = DetectOver(context.Background(), run, has, tables, onlyMoat)
	if err != nil || len(got) != 1 || strings.Join(ran, "; ") != "iptables -V; ip6tables-save" {
		t.Fatalf("IPv6 not proven: got %v, %v; ran %q", got, err, ran)
	}
	// Without the proof, or when it fails, both are read.
	for _, o := range []func(string) (bool, error){nil, func(string) (bool, error) { return true, errors.New("netlink") }} {
		ran = nil
		got, err = DetectOver(context.Background(), run, has, tables, o)
		if err != nil || len(got) != 2 || strings.Join(ran, "; ") != "iptables -V; iptables-save; ip6tables-save" {
			t.Fatalf("no proof: got %v, %v; ran %q", got, err, ran)
		}
	}
	// Another iptables-nft table of the family (nat: Docker): not asked.
	asked, ran = nil, nil
	tables = func() ([][2]string, error) {
		return [][2]string{{"inet", "moat"}, {"ip", "filter"}, {"ip", "nat"}, {"ip6", "filter"}}, nil
	}
	proven["ip6"] = true
	if _, err := DetectOver(context.Background(), run, has, tables, onlyMoat); err != nil || slices.Contains(asked, "ip") || strings.Join(ran, "; ") != "iptables -V; iptables-save" {
		t.Fatalf("with a nat table: asked %q, ran %q, %v", asked, ran, err)
	}
}

// On the real kernel: moat's iptables chains alone (filter and raw) are
// proven moat's, and anything an admin adds outside them (a DROP policy, a
// drop rule, a conditional jump, another chain, in either table, a rule in
// ip6tables only) is not, for that family; whatever the proof says, DetectOver finds what Detect
// (iptables-save) finds.
func TestXtablesOnlyMoatKernel(t *testing.T) {
	ns := moatKernel(t, "default deny incoming\nallow 22/tcp\ndeny from 192.0.2.0/24\n")
	ctx := context.Background()
	run := labtest.Runner(ns)
	has := func(string) bool { return true }
	check := func(name string, want4, want6 bool) {
		t.Helper()
		var got4, got6 bool
		var full, fast []Finding
		err := ns.Do(func() error {
			var err error
			if got4, err = XtablesOnlyMoat("ip"); err != nil {
				return err
			}
			if got6, err = XtablesOnlyMoat("ip6"); err != nil {
				return err
			}
			if full, err = Detect(ctx, execrun.Exec, has); err != nil {
				return err
			}
			fast, err = DetectOver(ctx, execrun.Exec, has, nft.ListTables, XtablesOnlyMoat)
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got4 != want4 || got6 != want6 {
			t.Errorf("%s: moat's alone: IPv4 %v, IPv6 %v; want %v, %v", name, got4, got6, want4, want6)
		}
		if a, b := findings(full), findings(fast); a != b {
			t.Errorf("%s: iptables-save finds:\n%s\nthe fast path:\n%s", name, a, b)
		}
	}
	check("moat alone", true, true)
	for _, c := range []struct {
		name         string
		cmd          []string
		undo         []string
		want4, want6 bool
		in, undoIn   string // the commands' standard input
	}{
		{"INPUT policy DROP", []string{"iptables", "-P", "INPUT", "DROP"}, []string{"iptables", "-P", "INPUT", "ACCEPT"}, false, true, "", ""},
		{"a drop rule in INPUT", []string{"iptables", "-A", "INPUT", "-s", "198.51.100.7", "-j", "DROP"}, []string{"iptables", "-D", "INPUT", "-s", "198.51.100.7", "-j", "DROP"}, false, true, "", ""},
		{"a conditional jump to moat", []string{"iptables", "-I", "INPUT", "-p", "tcp", "-j", "MOAT-INPUT"}, []string{"iptables", "-D", "INPUT", "-p", "tcp", "-j", "MOAT-INPUT"}, false, true, "", ""},
		// moat's jumps carry conditions (ipt.ParseJump): the same jump
		// with another condition is not moat's.
		{"INPUT jumps to moat for new connections only", []string{"iptables-restore", "--noflush"}, []string{"iptables-restore", "--noflush"}, false, true,
			"*filter\n-I INPUT 1 -m conntrack ! --ctstate NEW,RELATED,ESTABLISHED -j MOAT-INPUT\n-D INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\nCOMMIT\n",
			"*filter\n-I INPUT 1 -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n-D INPUT -m conntrack ! --ctstate NEW,RELATED,ESTABLISHED -j MOAT-INPUT\nCOMMIT\n"},
		{"raw PREROUTING jumps to moat except from eth0", []string{"ip6tables-restore", "--noflush"}, []string{"ip6tables-restore", "--noflush"}, true, false,
			"*raw\n-I PREROUTING 1 ! -i eth0 -j MOAT-PREROUTING\n-D PREROUTING -m set --match-set moat-early6 src -j MOAT-PREROUTING\nCOMMIT\n",
			"*raw\n-I PREROUTING 1 -m set --match-set moat-early6 src -j MOAT-PREROUTING\n-D PREROUTING ! -i eth0 -j MOAT-PREROUTING\nCOMMIT\n"},
		// The raw jump gated by another set, or by the early list's
		// destination, or by the other family's early list name on a
		// set of another kind, is not moat's.
		{"raw PREROUTING jumps to moat for sources in the protected set", []string{"ip6tables-restore", "--noflush"}, []string{"ip6tables-restore", "--noflush"}, true, false,
			"*raw\n-I PREROUTING 1 -m set --match-set moat-protect6 src -j MOAT-PREROUTING\n-D PREROUTING -m set --match-set moat-early6 src -j MOAT-PREROUTING\nCOMMIT\n",
			"*raw\n-I PREROUTING 1 -m set --match-set moat-early6 src -j MOAT-PREROUTING\n-D PREROUTING -m set --match-set moat-protect6 src -j MOAT-PREROUTING\nCOMMIT\n"},
		{"raw PREROUTING jumps to moat for destinations in the early list", []string{"iptables-restore", "--noflush"}, []string{"iptables-restore", "--noflush"}, false, true,
			"*raw\n-I PREROUTING 1 -m set --match-set moat-early4 dst -j MOAT-PREROUTING\n-D PREROUTING -m set --match-set moat-early4 src -j MOAT-PREROUTING\nCOMMIT\n",
			"*raw\n-I PREROUTING 1 -m set --match-set moat-early4 src -j MOAT-PREROUTING\n-D PREROUTING -m set --match-set moat-early4 dst -j MOAT-PREROUTING\nCOMMIT\n"},
		{"raw PREROUTING jumps to moat for sources not in the early list", []string{"iptables-restore", "--noflush"}, []string{"iptables-restore", "--noflush"}, false, true,
			"*raw\n-I PREROUTING 1 -m set ! --match-set moat-early4 src -j MOAT-PREROUTING\n-D PREROUTING -m set --match-set moat-early4 src -j MOAT-PREROUTING\nCOMMIT\n",
			"*raw\n-I PREROUTING 1 -m set --match-set moat-early4 src -j MOAT-PREROUTING\n-D PREROUTING -m set ! --match-set moat-early4 src -j MOAT-PREROUTING\nCOMMIT\n"},
		{"another chain", []string{"iptables", "-N", "other"}, []string{"iptables", "-X", "other"}, false, true, "", ""},
		{"an ip6tables REJECT in OUTPUT", []string{"ip6tables", "-A", "OUTPUT", "-j", "REJECT"}, []string{"ip6tables", "-D", "OUTPUT", "-j", "REJECT"}, true, false, "", ""},
		{"FORWARD jumps to moat's INPUT chain", []string{"iptables", "-A", "FORWARD", "-j", "MOAT-INPUT"}, []string{"iptables", "-D", "FORWARD", "-j", "MOAT-INPUT"}, false, true, "", ""},
		{"a drop rule in raw PREROUTING", []string{"iptables", "-t", "raw", "-I", "PREROUTING", "-s", "198.51.100.7", "-j", "DROP"}, []string{"iptables", "-t", "raw", "-D", "PREROUTING", "-s", "198.51.100.7", "-j", "DROP"}, false, true, "", ""},
		{"ip6tables raw PREROUTING policy DROP", []string{"ip6tables", "-t", "raw", "-P", "PREROUTING", "DROP"}, []string{"ip6tables", "-t", "raw", "-P", "PREROUTING", "ACCEPT"}, true, false, "", ""},
		{"another chain in raw", []string{"ip6tables", "-t", "raw", "-N", "other"}, []string{"ip6tables", "-t", "raw", "-X", "other"}, true, false, "", ""},
		// A base chain named like moat's, made with nft (iptables-save
		// cannot show it): it drops every IPv4 packet.
		{"a MOAT- base chain with policy drop", []string{"nft", "add", "chain", "ip", "filter", "MOAT-EVIL", "{ type filter hook input priority -5; policy drop; }"}, []string{"nft", "delete", "chain", "ip", "filter", "MOAT-EVIL"}, false, true, "", ""},
		// A MOAT-* chain moat does not make in that table (raw has no
		// MOAT-OUTPUT) is someone else's: its drop counts.
		{"raw OUTPUT jumps to a MOAT-OUTPUT of raw that drops", []string{"iptables-restore", "--noflush"}, []string{"iptables-restore", "--noflush"}, false, true,
			"*raw\n:MOAT-OUTPUT - [0:0]\n-A MOAT-OUTPUT -d 198.51.100.9 -j DROP\n-A OUTPUT -j MOAT-OUTPUT\nCOMMIT\n",
			"*raw\n-D OUTPUT -j MOAT-OUTPUT\n-F MOAT-OUTPUT\n-X MOAT-OUTPUT\nCOMMIT\n"},
		// A mangle table is not moat's: DetectOver does not ask (the
		// proof looks at filter and raw), iptables-save reads it.
		{"a drop rule in mangle", []string{"iptables", "-t", "mangle", "-A", "PREROUTING", "-s", "198.51.100.8", "-j", "DROP"}, []string{"iptables", "-t", "mangle", "-D", "PREROUTING", "-s", "198.51.100.8", "-j", "DROP"}, true, true, "", ""},
	} {
		if out, err := run(ctx, []byte(c.in), c.cmd[0], c.cmd[1:]...); err != nil {
			t.Fatalf("%s: %v\n%s", c.name, err, out)
		}
		check(c.name, c.want4, c.want6)
		// The chains named like moat's that are not: the fast path names
		// them.
		named := map[string]string{"MOAT-OUTPUT of raw": "iptables raw chain MOAT-OUTPUT: 1 DROP/REJECT rule",
			"MOAT- base chain": "chain MOAT-EVIL (hook input, priority -5): policy drop"}
		for key, want := range named {
			if !strings.Contains(c.name, key) {
				continue
			}
			var got []Finding
			err := ns.Do(func() error {
				var err error
				got, err = DetectOver(ctx, execrun.Exec, has, nft.ListTables, XtablesOnlyMoat)
				return err
			})
			if err != nil || !strings.Contains(findings(got), want) {
				t.Errorf("%s: not named: %v\n%s", c.name, err, findings(got))
			}
		}
		if out, err := run(ctx, []byte(c.undoIn), c.undo[0], c.undo[1:]...); err != nil {
			t.Fatalf("undo %s: %v\n%s", c.name, err, out)
		}
		check("after undoing "+c.name, true, true)
	}
}

func findings(f []Finding) string {
	var s []string
	for _, x := range f {
		s = append(s, x.String())
	}
	return strings.Join(s, "\n")
}

// A base chain named like iptables' built-in chain but on another hook or
// priority (made with nft) is not it.
func TestBuiltinChainHook(t *testing.T) {
	accept := gnft.ChainPolicyAccept
	for _, c := range []struct {
		table, name string
		hook        *gnft.ChainHook
		prio        *gnft.ChainPriority
		want        bool
	}{
		{"filter", "INPUT", gnft.ChainHookInput, gnft.ChainPriorityFilter, true},
		{"raw", "PREROUTING", gnft.ChainHookPrerouting, gnft.ChainPriorityRaw, true},
		{"filter", "INPUT", gnft.ChainHookOutput, gnft.ChainPriorityFilter, false},
		{"filter", "INPUT", gnft.ChainHookInput, gnft.ChainPriorityMangle, false},
		{"raw", "PREROUTING", gnft.ChainHookPrerouting, gnft.ChainPriorityFilter, false},
	} {
		ch := &gnft.Chain{Name: c.name, Hooknum: c.hook, Priority: c.prio, Policy: &accept}
		if got := builtinChain(ch, c.table, moatTables[c.table]); got != c.want {
			t.Errorf("%s %s hook %d priority %d: %v, want %v", c.table, c.name, *c.hook, *c.prio, got, c.want)
		}
	}
}

// moat's jump from INPUT given by hand, over netlink, an expression
// google/nftables cannot decode (it dropped it without a word: the rule
// read as moat's jump) is not moat's: the tables are read with
// iptables-save.
func TestXtablesOnlyMoatUndecodedExpr(t *testing.T) {
	ns := moatKernel(t, "default deny incoming\nallow 22/tcp\n")
	var before, after bool
	if err := ns.Do(func() error {
		var err error
		if before, err = XtablesOnlyMoat("ip"); err != nil {
			return err
		}
		if err := labtest.ReplaceRuleRaw(unix.NFPROTO_IPV4, "filter", func(chain string, _ uint64, _ []byte, _ []string) bool {
			return chain == "INPUT"
		}, labtest.BeforeVerdict(labtest.RawExpr{Name: "last"})); err != nil {
			return err
		}
		after, err = XtablesOnlyMoat("ip")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !before || after {
		t.Errorf("moat's alone: %v before, %v with last in moat's jump; want true, false", before, after)
	}
}

// moatKernel runs the test in parallel in a network namespace of its own
// (as root: in CI without root it fails, elsewhere it is skipped) where
// moat's iptables backend applied the policy conf, and gives that
// namespace.
func moatKernel(t *testing.T, conf string) *lab.NS {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run this test as root")
		}
		t.Skip("needs root for a network namespace")
	}
	t.Parallel()
	ns := labtest.NS(t, "moatfx")
	p, err := policy.NewDocument("moat.conf", []byte(conf)).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&ipt.Backend{Run: labtest.Runner(ns)}).Apply(context.Background(), ruleset.Compile(p)); err != nil {
		t.Fatal(err)
	}
	return ns
}
