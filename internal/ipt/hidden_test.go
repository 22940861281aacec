package ipt

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/labtest"
)

// A rule of moat's chain replaced by hand with a native nftables rule
// that iptables-save lists exactly as moat's (its set lookup left out
// without a word) filters otherwise: HiddenRules names it and the
// fingerprint changes. Moat's own rules, of every kind a policy makes,
// hold none.
func TestKernelHiddenNftRule(t *testing.T) {
	ctx := context.Background()
	b, run := hiddenRig(t, "default deny incoming\ndefault reject outgoing\nlogging medium\nallow 22/tcp\nlimit 2222/tcp\n"+
		"allow from 192.0.2.0/24 to any port 80 proto tcp\nreject 25/tcp\nallow 1000:2000/udp\nallow out 53\n"+
		"allow in on lo\nguard portscan ports 10 within 60s bantime 1h\n"+denyList(3, -1))
	hidden, fp1, err := hiddenAndPrint(b, run)
	if err != nil {
		t.Fatal(err)
	}
	if len(hidden) > 0 {
		t.Fatalf("moat's own rules: %v", hidden)
	}
	save, err := b.Run(ctx, nil, "iptables", "-S", "MOAT-INPUT")
	if err != nil {
		t.Fatal(err)
	}
	handle := fmt.Sprint(port22Handle(t, b))
	for _, args := range [][]string{
		{"add", "set", "ip", "filter", "hs", "{ type ipv4_addr; }"},
		{"add", "element", "ip", "filter", "hs", "{ 192.0.2.2 }"},
		{"insert", "rule", "ip", "filter", "MOAT-INPUT", "position", handle, "ip", "saddr", "!=", "@hs", "tcp", "dport", "22", "counter", "return", "comment", `"L4"`},
		{"delete", "rule", "ip", "filter", "MOAT-INPUT", "handle", handle},
	} {
		if out, err := b.Run(ctx, nil, "nft", args...); err != nil {
			t.Fatalf("nft %v: %v\n%s", args, err, out)
		}
	}
	if again, _ := b.Run(ctx, nil, "iptables", "-S", "MOAT-INPUT"); string(again) != string(save) {
		t.Logf("iptables-save now shows the hand rule (the test's premise no longer holds):\n%s\n%s", save, again)
	}
	hidden, fp2, err := hiddenAndPrint(b, run)
	if err != nil {
		t.Fatal(err)
	}
	if len(hidden) != 1 || !strings.Contains(hidden[0], "ip MOAT-INPUT") || !strings.Contains(hidden[0], "lookup") {
		t.Errorf("hidden rules: %v", hidden)
	}
	if fp1.Fingerprint == fp2.Fingerprint {
		t.Error("the fingerprint does not change with the hidden rule")
	}
}

// A rule of moat's chain given by hand, over raw netlink, an expression
// google/nftables cannot decode (last: it dropped it without a word, and
// the rule read as moat's own) is named by HiddenRules, and the
// fingerprint changes (or cannot be taken: iptables-save refuses the
// rule).
func TestKernelHiddenUndecodedExpr(t *testing.T) {
	ctx := context.Background()
	b, run := hiddenRig(t, "default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	var fp1 KernelPrint
	run(func() (err error) {
		fp1, err = b.FingerprintKernel(ctx)
		return err
	})
	handle := port22Handle(t, b)
	save, err := b.Run(ctx, nil, "iptables", "-S", "MOAT-INPUT")
	if err != nil {
		t.Fatal(err)
	}
	run(func() error {
		return labtest.ReplaceRuleRaw(unix.NFPROTO_IPV4, "filter", func(chain string, h uint64, _ []byte, _ []string) bool {
			return chain == "MOAT-INPUT" && h == handle
		}, labtest.BeforeVerdict(labtest.RawExpr{Name: "last"}))
	})
	again, _ := b.Run(ctx, nil, "iptables", "-S", "MOAT-INPUT")
	t.Logf("iptables -S before and after:\n%s\n%s", save, again)
	hidden, fp2, fpErr := hiddenAndPrint(b, run)
	if len(hidden) != 1 || !strings.Contains(hidden[0], "ip MOAT-INPUT") || !strings.Contains(hidden[0], "last") {
		t.Errorf("hidden rules: %v", hidden)
	}
	// iptables-save 1.8.9 refuses to print the rule (which the
	// fingerprint reads): an error naming it, or another fingerprint.
	if fpErr == nil && fp1.Fingerprint == fp2.Fingerprint {
		t.Error("the fingerprint does not change with the hand-made expression")
	}
	t.Logf("fingerprint: %v", fpErr)
}

// hiddenRig applies the policy conf with a netlink backend in a namespace
// of the test's own, and gives the backend and a run of fn in that
// namespace that fails the test on fn's error.
func hiddenRig(t *testing.T, conf string) (*Backend, func(fn func() error)) {
	t.Helper()
	ns := labtest.NS(t, "moatipt")
	b := &Backend{Netlink: true, Run: labtest.Runner(ns)}
	if err := b.Apply(context.Background(), compile(t, conf)); err != nil {
		t.Fatal(err)
	}
	return b, func(fn func() error) {
		t.Helper()
		if err := ns.Do(fn); err != nil {
			t.Fatal(err)
		}
	}
}

// port22Handle is the handle of the rule for port 22 in moat's chain
// MOAT-INPUT of table ip filter, as 'nft -a' lists it.
func port22Handle(t *testing.T, b *Backend) uint64 {
	t.Helper()
	listing, _ := b.Run(context.Background(), nil, "nft", "-a", "list", "chain", "ip", "filter", "MOAT-INPUT")
	var handle uint64
	for _, l := range strings.Split(string(listing), "\n") {
		if strings.Contains(l, "tcp dport 22 ") {
			if _, err := fmt.Sscan(l[strings.LastIndex(l, " ")+1:], &handle); err != nil {
				t.Fatal(err)
			}
		}
	}
	if handle == 0 {
		t.Fatalf("no rule for port 22:\n%s", listing)
	}
	return handle
}

// hiddenAndPrint reads in the rig's namespace (run) the rules HiddenRules
// names (its error fails the test) and the kernel's fingerprint, with
// the error of that read.
func hiddenAndPrint(b *Backend, run func(fn func() error)) (hidden []string, fp KernelPrint, fpErr error) {
	run(func() (err error) {
		if hidden, err = HiddenRules(); err != nil {
			return err
		}
		fp, fpErr = b.FingerprintKernel(context.Background())
		return nil
	})
	return hidden, fp, fpErr
}
