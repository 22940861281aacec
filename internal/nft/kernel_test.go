package nft

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/rulesettest"
	"github.com/moat-fw/moat/internal/setstore"
)

// kernelNS makes a network namespace of the test's own and returns a
// runner that runs programs inside it, recording each nft input.
func kernelNS(t testing.TB) (*recorder, *lab.NS) {
	t.Helper()
	ns := labtest.NS(t, "moatnft")
	return &recorder{ns: ns}, ns
}

type recorder struct {
	ns     *lab.NS
	mu     sync.Mutex
	inputs []string
}

func (r *recorder) run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	if stdin != nil {
		r.mu.Lock()
		r.inputs = append(r.inputs, string(stdin))
		r.mu.Unlock()
	}
	return labtest.Runner(r.ns)(ctx, stdin, name, args...)
}

func (r *recorder) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.inputs) == 0 {
		return ""
	}
	return r.inputs[len(r.inputs)-1]
}

func compile(t testing.TB, text string) *ruleset.Ruleset {
	t.Helper()
	return rulesettest.Compile(t, text, "ssh 22/tcp\n")
}

func denyList(n, skip int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i == skip {
			continue
		}
		// Never adjacent, so merging leaves one element per rule.
		fmt.Fprintf(&b, "deny from 2001:db8:%x:%x::/64\n", i>>7, 2*(i&127))
		fmt.Fprintf(&b, "deny from 198.%d.%d.%d\n", 18+i>>15, i>>7&255, 2*(i&127))
	}
	return b.String()
}

func listTable(t *testing.T, r *recorder) string {
	t.Helper()
	out, err := r.run(context.Background(), nil, "nft", "-s", "list", "table", "inet", TableName)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// A change applied as a difference leaves the kernel exactly as a whole
// apply of the new policy does, sends only what changed, and keeps bans.
func TestKernelPatchEqualsFull(t *testing.T) {
	ctx := context.Background()
	patched, _ := kernelNS(t)
	fresh, _ := kernelNS(t)
	head := "default deny incoming\nallow 22/tcp\n"
	before := compile(t, head+denyList(3000, -1))
	after := compile(t, head+"allow 8080/tcp\n"+denyList(3001, 7))

	b := &Backend{Run: patched.run}
	if err := b.Apply(ctx, before); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(patched.last(), "add element inet moat input_deny_src"); n != 0 {
		t.Errorf("first apply: %d element commands for the two sets, want them created with their elements", n)
	}
	if n := strings.Count(patched.last(), "elements = {"); n != 2 {
		t.Errorf("first apply: %d sets created with their elements, want 2", n)
	}
	if err := b.Ban(ctx, []ruleset.Ban{{Addr: mustAddr("203.0.113.9"), Timeout: 3600e9, Reason: "test"}}); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, after); err != nil {
		t.Fatal(err)
	}
	script := patched.last()
	if strings.Contains(script, "flush chain inet moat output") || strings.Contains(script, "add set") {
		t.Errorf("a one-rule change rewrote more than the input chain:\n%.2000s", script)
	}
	for _, want := range []string{
		"flush set inet moat input_deny_src4_3",
		"flush set inet moat input_deny_src6_4",
		"flush chain inet moat input",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("the difference lacks %q:\n%.3000s", want, script)
		}
	}
	// A rule change alone sends the one chain and the record, no set.
	if err := b.Apply(ctx, compile(t, head+"allow 8080/tcp\nallow 8081/tcp\n"+denyList(3001, 7))); err != nil {
		t.Fatal(err)
	}
	if script := patched.last(); strings.Contains(script, "element inet moat input_deny") || len(script) > 8000 {
		t.Errorf("a one-rule change sent %d bytes:\n%.3000s", len(script), script)
	}
	if err := b.Apply(ctx, after); err != nil {
		t.Fatal(err)
	}
	if bans, err := b.Bans(ctx); err != nil || len(bans) != 1 {
		t.Errorf("bans after a patch: %v %v", bans, err)
	}
	before2 := len(patched.inputs)
	if err := b.Apply(ctx, after); err != nil {
		t.Fatal(err)
	}
	if len(patched.inputs) != before2 {
		t.Errorf("applying the same ruleset again sent %q", patched.last())
	}

	f := &Backend{Run: fresh.run}
	if err := f.Apply(ctx, after); err != nil {
		t.Fatal(err)
	}
	got, want := stripBans(listTable(t, patched)), stripBans(listTable(t, fresh))
	if got != want {
		t.Errorf("patched table differs from a fresh apply:\n--- patched\n%.4000s\n--- fresh\n%.4000s", got, want)
	}
	// A full re-apply over the patched table changes nothing either.
	b.Full = true
	if err := b.Apply(ctx, after); err != nil {
		t.Fatal(err)
	}
	if got := stripBans(listTable(t, patched)); got != want {
		t.Errorf("full re-apply differs from a fresh apply:\n--- patched\n%s\n--- fresh\n%s", got, want)
	}
	if bans, err := b.Bans(ctx); err != nil || len(bans) != 1 {
		t.Errorf("bans after a full apply: %v %v", bans, err)
	}
}

// stripBans drops the ban sets' elements (the fresh table has none).
func stripBans(s string) string {
	var out []string
	skip := false
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, "elements = {") && strings.Contains(line, "timeout") {
			skip = !strings.HasSuffix(line, "}")
			continue
		}
		if skip {
			skip = !strings.HasSuffix(strings.TrimSpace(line), "}")
			continue
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

// A record that does not match the kernel (the table deleted, the sync
// set emptied by hand) makes the next apply rewrite everything.
func TestKernelLostRecordFallsBackToFull(t *testing.T) {
	ctx := context.Background()
	r, _ := kernelNS(t)
	b := &Backend{Run: r.run}
	rs := compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(10, -1))
	if err := b.Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}
	if _, err := r.run(ctx, []byte("flush chain inet moat moat_sync\nflush chain inet moat input\n"), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.last(), "add rule inet moat input tcp dport 22") {
		t.Errorf("no full rewrite after the record was lost:\n%s", r.last())
	}
	if err := b.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(ctx); err != nil {
		t.Errorf("removing an absent table: %v", err)
	}
	if ok, err := b.Active(ctx); ok || err != nil {
		t.Errorf("active after remove: %v %v", ok, err)
	}
	if err := b.Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Active(ctx); !ok || err != nil {
		t.Errorf("not active after apply: %v %v", ok, err)
	}
}

// The fingerprint ignores bans and counters but sees a rule added by hand.
func TestKernelFingerprint(t *testing.T) {
	ctx := context.Background()
	r, _ := kernelNS(t)
	b := &Backend{Run: r.run}
	if fp, err := b.Fingerprint(ctx); fp != "" || err != nil {
		t.Fatalf("fingerprint of no table: %q %v", fp, err)
	}
	if err := b.Apply(ctx, compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(5, -1))); err != nil {
		t.Fatal(err)
	}
	fp1, err := b.Fingerprint(ctx)
	if err != nil || fp1 == "" {
		t.Fatal(fp1, err)
	}
	if err := b.Ban(ctx, []ruleset.Ban{{Addr: mustAddr("2001:db8::7"), Timeout: 3600e9}}); err != nil {
		t.Fatal(err)
	}
	if fp, _ := b.Fingerprint(ctx); fp != fp1 {
		t.Errorf("a ban changed the fingerprint")
	}
	if _, err := r.run(ctx, []byte("add rule inet moat input tcp dport 9999 accept\n"), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if fp, _ := b.Fingerprint(ctx); fp == fp1 {
		t.Errorf("a rule added by hand did not change the fingerprint")
	}
	if _, err := r.run(ctx, []byte("add element inet moat input_deny_src4_3 { 192.0.2.0/24 }\n"), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
}

// Many deletes from a large interval set are slow in nft (about 0.1 s
// each with 50k networks), so a change that deletes more than maxDeletes
// networks refills the set whole, in the same transaction, and leaves the
// kernel exactly as a fresh apply does.
func TestKernelManyDeletesRefill(t *testing.T) {
	ctx := context.Background()
	patched, _ := kernelNS(t)
	fresh, _ := kernelNS(t)
	head := "default deny incoming\nallow 22/tcp\n"
	before := compile(t, head+denyList(3000, -1))
	after := compile(t, head+denyList(2980, -1)) // 20 networks of each family gone

	b := &Backend{Run: patched.run}
	if err := b.Apply(ctx, before); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, after); err != nil {
		t.Fatal(err)
	}
	script := patched.last()
	if strings.Contains(script, "delete element") || !strings.Contains(script, "flush set inet moat input_deny_src4_3") {
		t.Errorf("want the set refilled, not %d deletes:\n%.1500s", maxDeletes+12, script)
	}
	f := &Backend{Run: fresh.run}
	if err := f.Apply(ctx, after); err != nil {
		t.Fatal(err)
	}
	if got, want := stripBans(listTable(t, patched)), stripBans(listTable(t, fresh)); got != want {
		t.Errorf("refilled table differs from a fresh apply:\n--- refilled\n%.3000s\n--- fresh\n%.3000s", got, want)
	}
}

// A table an earlier moat loaded has ban sets without the dynamic flag
// the port scan trap needs, and a set's flags cannot change in place: the
// next apply re-creates them and puts their bans back.
func TestKernelMigratesOldBanSets(t *testing.T) {
	ctx := context.Background()
	r, _ := kernelNS(t)
	old := "table inet moat {\n" +
		"\tset ban4 { type ipv4_addr; flags timeout; comment \"bans\"; elements = { 203.0.113.9 timeout 1h comment \"guard: test\" } }\n" +
		"\tset ban6 { type ipv6_addr; flags timeout; }\n" +
		"\tchain input { type filter hook input priority 0; policy drop; ip saddr @ban4 drop; }\n}\n"
	if _, err := r.run(ctx, []byte(old), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	b := &Backend{Run: r.run}
	p, err := policy.NewDocument("moat.conf", []byte("default deny incoming\nallow 22/tcp\nguard portscan\n")).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, ruleset.Compile(p)); err != nil {
		t.Fatalf("apply over an old table: %v", err)
	}
	bans, err := b.Bans(ctx)
	if err != nil || len(bans) != 1 || bans[0].Addr.String() != "203.0.113.9" || bans[0].Reason != "guard: test" || bans[0].Expires < 59*time.Minute {
		t.Errorf("bans after the migration: %+v %v", bans, err)
	}
	if table := listTable(t, r); !strings.Contains(table, "flags dynamic,timeout") {
		t.Errorf("ban sets not dynamic:\n%.2000s", table)
	}
	// The next full apply knows the new definition: nothing re-created.
	n := len(r.inputs)
	b.Full = true
	if err := b.Apply(ctx, ruleset.Compile(p)); err != nil {
		t.Fatal(err)
	}
	if len(r.inputs) == n || strings.Contains(r.last(), "delete set inet moat ban4") {
		t.Errorf("full apply sent nothing or re-created the ban set again:\n%.2000s", r.last())
	}
}

// BenchmarkKernelChange is the backend's share of a change with n
// entries loaded, against `nft -f` of a one-rule ruleset in another table
// of the same namespace, in the same run:
//
//   - rule: a one-rule change (the changed chain and moat's record, one
//     `nft -f`);
//
//   - element: one `deny from` more in the run of a set (one element over
//     netlink);
//
//   - refresh: 100 of the set's networks replaced by 100 others, as a
//     blocklist refresh (200 element changes over netlink);
//
//   - ban: one address banned (replaced: add, delete, add), as `moat ban`.
//
//     go test -run XXX -bench KernelChange -benchtime 10x ./internal/nft/
func BenchmarkKernelChange(b *testing.B) {
	for _, n := range []int{0, 100000} {
		for _, kind := range []string{"rule", "element", "refresh", "ban"} {
			if n == 0 && kind != "rule" {
				continue
			}
			b.Run(fmt.Sprintf("entries-%d/%s", n, kind), func(b *testing.B) {
				ctx := context.Background()
				r, ns := kernelNS(b)
				// As moat runs: programs and netlink in the namespace.
				be := &Backend{Run: execrun.Exec, Read: NetlinkReader{}, Netlink: true, Elements: setstore.Dir{Path: b.TempDir(), Prefix: "nft-set."}}
				apply := func(rs *ruleset.Ruleset) error { return ns.Do(func() error { return be.Apply(ctx, rs) }) }
				head := "default deny incoming\nallow 22/tcp\n"
				deny := denyRange(0, n/2)
				var states []*ruleset.Ruleset
				switch kind {
				case "rule":
					states = []*ruleset.Ruleset{compile(b, head+deny), compile(b, head+"allow 8080/tcp\n"+deny)}
				case "element":
					states = []*ruleset.Ruleset{compile(b, head+deny), compile(b, head+deny+"deny from 192.0.2.77\n")}
				case "refresh":
					states = []*ruleset.Ruleset{compile(b, head+deny), compile(b, head+denyRange(50, n/2+50))}
				case "ban":
					states = []*ruleset.Ruleset{compile(b, head+deny)}
				}
				if err := apply(states[0]); err != nil {
					b.Fatal(err)
				}
				// Once each way before timing: the element store is written.
				for _, rs := range append(states[1:], states[0]) {
					if err := apply(rs); err != nil {
						b.Fatal(err)
					}
				}
				one := []byte("table inet one {\n\tchain input { type filter hook input priority 0; policy accept; tcp dport 22 accept; }\n}\n")
				var base, moat, cpu time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					start := time.Now()
					if _, err := r.run(ctx, one, "nft", "-f", "-"); err != nil {
						b.Fatal(err)
					}
					base += time.Since(start)
					cpu0 := cpuTime()
					start = time.Now()
					var err error
					if kind == "ban" {
						ban := ruleset.Ban{Addr: netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), Timeout: time.Hour, Reason: "manual: bench", Replace: true}
						err = ns.Do(func() error { return be.Ban(ctx, []ruleset.Ban{ban}) })
					} else {
						err = apply(states[(i+1)%len(states)])
					}
					if err != nil {
						b.Fatal(err)
					}
					moat += time.Since(start)
					cpu += cpuTime() - cpu0
				}
				b.ReportMetric(float64(moat.Microseconds())/1000/float64(b.N), "ms-backend")
				b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "ms-cpu-backend")
				b.ReportMetric(float64(base.Microseconds())/1000/float64(b.N), "ms-baseline")
				b.ReportMetric(float64(moat)/float64(base), "x-baseline")
			})
		}
	}
}

// denyRange is denyList's networks from..to-1 (two a number, never
// adjacent).
func denyRange(from, to int) string {
	var b strings.Builder
	for i := from; i < to; i++ {
		fmt.Fprintf(&b, "deny from 2001:db8:%x:%x::/64\n", i>>7, 2*(i&127))
		fmt.Fprintf(&b, "deny from 198.%d.%d.%d\n", 18+i>>15, i>>7&255, 2*(i&127))
	}
	return b.String()
}

// cpuTime is the CPU time (user and system, the kernel's work for this
// process's netlink messages included) of this process and its waited-for
// children so far: unlike the wall clock, it does not count the time
// other sessions' work holds the shared CPUs.
func cpuTime() time.Duration {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	d := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return d(self.Utime) + d(self.Stime) + d(kids.Utime) + d(kids.Stime)
}
