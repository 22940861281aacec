package ipt

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// kernelBackend is a backend whose programs run in a network namespace of
// the test's own.
func kernelBackend(t *testing.T) *Backend {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	ns, err := lab.NewNS(lab.UniqueName("moatipt"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	return &Backend{Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		var out []byte
		err := ns.Do(func() error {
			var err error
			out, err = execrun.Exec(ctx, stdin, name, args...)
			return err
		})
		return out, err
	}}
}

func compile(t *testing.T, text string) *ruleset.Ruleset {
	t.Helper()
	p, err := policy.NewDocument("moat.conf", []byte(text)).Policy(policy.ParseServices([]byte("ssh 22/tcp\n")))
	if err != nil {
		t.Fatal(err)
	}
	return ruleset.Compile(p)
}

func denyList(n, skip int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i != skip {
			fmt.Fprintf(&b, "deny from 2001:db8:%x:%x::/64\ndeny from 198.18.%d.%d\n", i>>7, 2*(i&127), i>>7, 2*(i&127))
		}
	}
	return b.String()
}

// Check tests the rules, sets included, against the kernel's tools: input
// they refuse fails the check, and nothing is left behind.
func TestKernelCheckRefuses(t *testing.T) {
	ctx := context.Background()
	b := kernelBackend(t)
	good := compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(3, -1))
	if err := b.Check(ctx, good); err != nil {
		t.Fatalf("a good ruleset fails the check: %v", err)
	}
	bad := compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(3, -1))
	in := bad.Chain(ruleset.Input)
	in.Rules = append(in.Rules, ruleset.Rule{Match: ruleset.Match{InIface: "an-interface-name-too-long"}, Verdict: ruleset.Accept,
		Origin: ruleset.Origin{ID: "L99"}})
	if err := b.Check(ctx, bad); err == nil {
		t.Fatal("the check passed input iptables-restore refuses")
	} else if !strings.Contains(err.Error(), "iptables check") {
		t.Errorf("error does not say what failed: %v", err)
	}
	sets, err := b.Run(ctx, nil, "ipset", "list", "-n")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(sets)) != "" {
		t.Errorf("the check left ipsets behind: %q", sets)
	}
	if ok, err := b.Active(ctx); ok || err != nil {
		t.Errorf("the check loaded rules: %v %v", ok, err)
	}
}

// Applying, changing one rule and one address, and applying again keeps
// bans, sends unchanged sets never again, and leaves no stale sets.
func TestKernelApplyChange(t *testing.T) {
	ctx := context.Background()
	b := kernelBackend(t)
	head := "default deny incoming\nallow 22/tcp\n"
	if err := b.Apply(ctx, compile(t, head+denyList(2000, -1))); err != nil {
		t.Fatal(err)
	}
	if err := b.Ban(ctx, []ruleset.Ban{{Addr: netipMust("203.0.113.9"), Timeout: 3600e9}}); err != nil {
		t.Fatal(err)
	}
	fp1, err := b.Fingerprint(ctx)
	if err != nil || fp1 == "" {
		t.Fatal(fp1, err)
	}
	var sent []string
	run := b.Run
	b.Run = func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		if stdin != nil {
			sent = append(sent, name+": "+string(stdin))
		}
		return run(ctx, stdin, name, args...)
	}
	next := compile(t, head+"allow 80/tcp\n"+denyList(2000, -1))
	if err := b.Apply(ctx, next); err != nil {
		t.Fatal(err)
	}
	for _, s := range sent {
		if strings.HasPrefix(s, "ipset") && strings.Contains(s, "add ") {
			t.Errorf("a rule change re-sent a set:\n%.300s", s)
		}
	}
	fp2, _ := b.Fingerprint(ctx)
	if fp2 == fp1 {
		t.Error("fingerprint did not change with the rules")
	}
	sent = nil
	if err := b.Apply(ctx, compile(t, head+"allow 80/tcp\n"+denyList(2001, 5))); err != nil {
		t.Fatal(err)
	}
	if bans, err := b.Bans(ctx); err != nil || len(bans) != 1 {
		t.Errorf("bans after apply: %v %v", bans, err)
	}
	out, _ := b.Run(ctx, nil, "ipset", "list", "-n")
	names := strings.Fields(string(out))
	if len(names) != 4 {
		t.Errorf("ipsets after a change: %v (want two ban sets and two policy sets)", names)
	}
	if split, err := b.Split(ctx); split != "" || err != nil {
		t.Errorf("split after a clean apply: %q %v", split, err)
	}
	// An outside change shows in the fingerprint.
	fp3, _ := b.Fingerprint(ctx)
	if _, err := b.Run(ctx, nil, "iptables", "-A", "MOAT-INPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN"); err != nil {
		t.Fatal(err)
	}
	if fp, _ := b.Fingerprint(ctx); fp == fp3 {
		t.Error("a rule added by hand did not change the fingerprint")
	}
	if err := b.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	out, _ = b.Run(ctx, nil, "ipset", "list", "-n")
	if strings.TrimSpace(string(out)) != "" {
		t.Errorf("ipsets after remove: %q", out)
	}
}

// Active answers over netlink (no iptables-save) the same as by reading
// iptables-save, before and after an apply and after a remove.
func TestKernelActiveOverNetlink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	ns, err := lab.NewNS(lab.UniqueName("moatipt"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	ctx := context.Background()
	var saves int
	b := &Backend{Netlink: true, Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		if strings.HasSuffix(name, "-save") {
			saves++
		}
		return execrun.Exec(ctx, stdin, name, args...)
	}}
	in := func(fn func() error) {
		t.Helper()
		if err := ns.Do(fn); err != nil {
			t.Fatal(err)
		}
	}
	check := func(want bool) {
		t.Helper()
		in(func() error {
			saves = 0
			ok, err := b.Active(ctx)
			if err != nil || ok != want {
				t.Errorf("active: %v %v, want %v", ok, err, want)
			}
			if saves > 0 && !legacyTables() {
				t.Errorf("Active started iptables-save %d times", saves)
			}
			return nil
		})
	}
	check(false)
	in(func() error { return b.Apply(ctx, compile(t, "default deny incoming\nallow 22/tcp\n")) })
	check(true)
	in(func() error { return b.Remove(ctx) })
	check(false)
}
