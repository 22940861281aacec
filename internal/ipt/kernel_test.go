package ipt

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/rulesettest"
	"github.com/moat-fw/moat/internal/setstore"
)

// kernelBackend is a backend whose programs run in a network namespace of
// the test's own.
func kernelBackend(t testing.TB) *Backend {
	t.Helper()
	b, _ := kernelBackendNS(t)
	return b
}

// kernelBackendNS is kernelBackend and its namespace.
func kernelBackendNS(t testing.TB) (*Backend, *lab.NS) {
	t.Helper()
	ns := labtest.NS(t, "moatipt")
	return &Backend{Run: labtest.Runner(ns)}, ns
}

func compile(t testing.TB, text string) *ruleset.Ruleset {
	t.Helper()
	return rulesettest.Compile(t, text, "ssh 22/tcp\n")
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
		// The early lists get their members (set names) again: no
		// network is sent.
		if strings.HasPrefix(s, "ipset") && strings.Contains(strings.ReplaceAll(s, "add "+tmpSetName("moat-early"), ""), "add ") &&
			strings.Contains(strings.ReplaceAll(s, "add moat-early", ""), "add ") {
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
	if len(names) != 10 {
		t.Errorf("ipsets after a change: %v (want two ban sets, two login sets, two protected sets, two policy sets and two early lists)", names)
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
	ns := labtest.NS(t, "moatipt")
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

// BenchmarkKernelChange is the backend's share of a change with 100,000
// entries loaded, against iptables-restore --noflush of a one-rule chain
// of its own in the same namespace, in the same run:
//
//   - rule: one rule more (both families' chains rewritten);
//   - element: one `deny from` more in the run of a set (one ipset add);
//   - refresh: 100 of the set's networks replaced by 100 others (200 lines
//     of one ipset restore);
//   - ban: one address banned (one ipset restore).
//
// Each change also announces itself in MOAT-GEN first and records itself
// there after (two iptables-restore per family).
//
//	go test -run XXX -bench KernelChange -benchtime 10x ./internal/ipt/
func BenchmarkKernelChange(b *testing.B) {
	deny := func(from, to int) string {
		var s strings.Builder
		for i := from; i < to; i++ {
			fmt.Fprintf(&s, "deny from 2001:db8:%x:%x::/64\n", i>>7, 2*(i&127))
			fmt.Fprintf(&s, "deny from 198.%d.%d.%d\n", 18+i>>15, i>>7&255, 2*(i&127))
		}
		return s.String()
	}
	const n = 100000
	for _, kind := range []string{"rule", "element", "refresh", "ban"} {
		b.Run(fmt.Sprintf("entries-%d/%s", n, kind), func(b *testing.B) {
			ctx := context.Background()
			be := kernelBackend(b)
			be.Elements = setstore.Dir{Path: b.TempDir(), Prefix: "ipset."}
			head := "default deny incoming\nallow 22/tcp\n"
			base := deny(0, n/2)
			var states []*ruleset.Ruleset
			switch kind {
			case "rule":
				states = []*ruleset.Ruleset{compile(b, head+base), compile(b, head+"allow 8080/tcp\n"+base)}
			case "element":
				states = []*ruleset.Ruleset{compile(b, head+base), compile(b, head+base+"deny from 192.0.2.77\n")}
			case "refresh":
				states = []*ruleset.Ruleset{compile(b, head+base), compile(b, head+deny(50, n/2+50))}
			case "ban":
				states = []*ruleset.Ruleset{compile(b, head+base)}
			}
			for _, rs := range append(states, states[0]) {
				if err := be.Apply(ctx, rs); err != nil {
					b.Fatal(err)
				}
			}
			one := []byte("*filter\n:BENCHBASE - [0:0]\n-A BENCHBASE -p tcp --dport 22 -j ACCEPT\nCOMMIT\n")
			var base0, moat, cpu time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				if _, err := be.Run(ctx, one, "iptables-restore", "-w", "5", "--noflush"); err != nil {
					b.Fatal(err)
				}
				base0 += time.Since(start)
				cpu0 := cpuTime()
				start = time.Now()
				var err error
				if kind == "ban" {
					err = be.Ban(ctx, []ruleset.Ban{{Addr: netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), Timeout: time.Hour, Reason: "manual: bench", Replace: true}})
				} else {
					err = be.Apply(ctx, states[(i+1)%len(states)])
				}
				if err != nil {
					b.Fatal(err)
				}
				moat += time.Since(start)
				cpu += cpuTime() - cpu0
			}
			b.ReportMetric(float64(moat.Microseconds())/1000/float64(b.N), "ms-backend")
			b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "ms-cpu-backend")
			b.ReportMetric(float64(base0.Microseconds())/1000/float64(b.N), "ms-baseline")
			b.ReportMetric(float64(moat)/float64(base0), "x-baseline")
		})
	}
}

// cpuTime is the CPU time of this process and its waited-for children so
// far (the programs the backend runs included).
func cpuTime() time.Duration {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	d := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return d(self.Utime) + d(self.Stime) + d(kids.Utime) + d(kids.Stime)
}

// A moat killed while it filled a policy set under its temporary name
// (moatnew-...) leaves that set behind. The next apply destroys it and
// fills it anew, then renames or swaps it in: it must not also count it
// among the stale sets to destroy afterwards, which failed ("The set with
// the given name does not exist") and made every later command fail
// (TestKillDuringKernelApply: the repair of the interrupted command could
// not apply the previous policy). Both ways: a set not there yet
// (renamed in), and a set refilled whole (swapped in).
func TestKernelApplyAfterKilledSetLoad(t *testing.T) {
	ctx := context.Background()
	b := kernelBackend(t)
	rs := compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(3, -1))
	var tmps []string
	for _, s := range rs.Sets {
		if !s.Bans && s.ScanWindow == 0 {
			tmps = append(tmps, tmpSetName(SetNames(rs).of(s.Name)))
		}
	}
	if len(tmps) == 0 {
		t.Fatal("no policy set")
	}
	leftovers := func() {
		t.Helper()
		for _, tmp := range tmps {
			if _, err := b.Run(ctx, nil, "ipset", "create", tmp, "hash:net", "family", "inet"); err != nil {
				t.Fatal(err)
			}
		}
	}
	noTemporary := func() {
		t.Helper()
		out, _ := b.Run(ctx, nil, "ipset", "list", "-n")
		if strings.Contains(string(out), "moatnew-") {
			t.Errorf("temporary sets left: %s", out)
		}
	}
	leftovers()
	if err := b.Apply(ctx, rs); err != nil {
		t.Fatalf("apply over a killed first load: %v", err)
	}
	noTemporary()
	leftovers()
	b.Full = true
	if err := b.Apply(ctx, rs); err != nil {
		t.Fatalf("a whole apply over a killed refill: %v", err)
	}
	noTemporary()
	b.Full = false
	// A leftover whose set this apply does not touch is stale: removed.
	leftovers()
	if err := b.Apply(ctx, rs); err != nil {
		t.Fatalf("apply with nothing to change: %v", err)
	}
	noTemporary()
}
