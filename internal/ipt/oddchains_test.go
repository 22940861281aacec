package ipt

import (
	"context"
	"strings"
	"testing"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/labtest"
)

// addOddChains makes, over netlink in ns, chains of ip and ip6 filter
// whose names iptables-save prints as lines of their own (a rule of
// MOAT-INPUT accepting everything, a chain of moat's), and in INPUT of
// each a jump to one of them (its text as forged).
func addOddChains(t *testing.T, ns *lab.NS, names ...string) {
	t.Helper()
	if err := ns.Do(func() error {
		c, err := gnft.New()
		if err != nil {
			return err
		}
		for _, fam := range []gnft.TableFamily{gnft.TableFamilyIPv4, gnft.TableFamilyIPv6} {
			tbl := &gnft.Table{Name: "filter", Family: fam}
			for _, n := range names {
				c.AddChain(&gnft.Chain{Name: n, Table: tbl})
			}
			c.AddRule(&gnft.Rule{Table: tbl, Chain: &gnft.Chain{Name: "INPUT", Table: tbl}, Exprs: []expr.Any{
				&expr.Verdict{Kind: expr.VerdictJump, Chain: names[0]},
			}})
		}
		return c.Flush()
	}); err != nil {
		t.Fatal(err)
	}
}

// oddNow lists the odd chains in ns.
func oddNow(t *testing.T, ns *lab.NS) []OddChain {
	t.Helper()
	var odd []OddChain
	if err := ns.Do(func() (err error) { odd, err = OddChains(); return err }); err != nil {
		t.Fatal(err)
	}
	return odd
}

// Chains made over netlink in ip/ip6 filter under names iptables-save
// prints as lines of their own ("MOAT-X\n-A MOAT-INPUT -j ACCEPT") are
// never read as text: a read to look (Split, status's, a check) names
// them escaped, the fingerprint sees them, a change (Apply: reload, the
// drift repair), a snapshot and a rollback's restore remove them over
// netlink, with the rules jumping to them, and then work. Before, status
// read a rule of MOAT-INPUT that does not exist, reload left the chains,
// and a snapshot held the forged lines (its restore: 'Bad argument').
func TestKernelOddChainNames(t *testing.T) {
	ctx := context.Background()
	ns := labtest.NS(t, "moatodd")
	b := &Backend{Run: labtest.Runner(ns), Netlink: true, IpsetNetlink: true}
	do := func(f func() error) error { return ns.Do(f) }
	rs := compile(t, "default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	if err := do(func() error { return b.Apply(ctx, rs) }); err != nil {
		t.Fatal(err)
	}
	var fp1, fp2 string
	if err := do(func() (err error) { fp1, err = b.Fingerprint(ctx); return err }); err != nil {
		t.Fatal(err)
	}
	forged := []string{"MOAT-X\n-A MOAT-INPUT -j ACCEPT", "y\n:MOAT-FAKE - [0:0]", "a b"}
	addOddChains(t, ns, forged...)
	save, err := b.Run(ctx, nil, "iptables-save", "-t", "filter")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(save), "\n-A MOAT-INPUT -j ACCEPT") {
		t.Fatalf("iptables-save does not print the forged line (the test proves nothing):\n%s", save)
	}
	if err := do(func() (err error) { fp2, err = b.Fingerprint(ctx); return err }); err != nil {
		t.Fatal(err)
	}
	if fp1 == fp2 {
		t.Error("the fingerprint does not see the chains added")
	}
	if odd := oddNow(t, ns); len(odd) != 6 {
		t.Errorf("odd chains: %v", odd)
	}
	// To look: refused, naming them escaped.
	b2 := &Backend{Run: labtest.Runner(ns), Netlink: true, IpsetNetlink: true}
	err = do(func() error { _, err := b2.Split(ctx); return err })
	if err == nil || !strings.Contains(err.Error(), `"MOAT-X\n-A MOAT-INPUT -j ACCEPT"`) || strings.Contains(err.Error(), "X\n") {
		t.Errorf("a read to look: %v", err)
	}
	if err := do(func() error { return b2.Check(ctx, rs) }); err == nil || !strings.Contains(err.Error(), `chain ip6 filter "a b"`) {
		t.Errorf("a check: %v", err)
	}
	if odd := oddNow(t, ns); len(odd) != 6 {
		t.Errorf("a read to look removed chains: %v", odd)
	}
	// A change removes them (and the jumps to them).
	b3 := &Backend{Run: labtest.Runner(ns), Netlink: true, IpsetNetlink: true}
	if err := do(func() error { return b3.Apply(ctx, rs) }); err != nil {
		t.Fatal(err)
	}
	if odd := oddNow(t, ns); len(odd) != 0 {
		t.Errorf("an apply left %v", odd)
	}
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		out, err := b.Run(ctx, nil, save, "-t", "filter")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "-j ACCEPT\n") || strings.Contains(string(out), "MOAT-X") || strings.Contains(string(out), "-A INPUT -j") {
			t.Errorf("%s after the apply:\n%s", save, out)
		}
	}
	// A snapshot taken with them there holds none of their lines, and a
	// restore with others there works and removes them.
	addOddChains(t, ns, forged...)
	var snap []byte
	if err := do(func() (err error) {
		snap, err = (&Backend{Run: labtest.Runner(ns), Netlink: true, IpsetNetlink: true}).Snapshot(ctx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(snap), "MOAT-X") || strings.Contains(string(snap), "-A MOAT-INPUT -j ACCEPT") || strings.Contains(string(snap), "MOAT-FAKE") {
		t.Errorf("the snapshot holds forged lines:\n%s", snap)
	}
	if err := do(func() error {
		return (&Backend{Run: labtest.Runner(ns), Netlink: true, IpsetNetlink: true}).Apply(ctx, compile(t, "default deny incoming\nallow 22/tcp\n"))
	}); err != nil {
		t.Fatal(err)
	}
	addOddChains(t, ns, "MOAT-Z\n-A MOAT-INPUT -j ACCEPT")
	if err := do(func() error {
		return (&Backend{Run: labtest.Runner(ns), Netlink: true, IpsetNetlink: true}).Restore(ctx, snap)
	}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if odd := oddNow(t, ns); len(odd) != 0 {
		t.Errorf("a restore left %v", odd)
	}
	out, err := b.Run(ctx, nil, "iptables-save", "-t", "filter")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "--dport 80 ") {
		t.Errorf("the restore did not put the snapshot's rules back:\n%s", out)
	}
}
