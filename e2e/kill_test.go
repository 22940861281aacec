package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
)

// kernelView reads moat's rules in a namespace the way `status` can:
// the fingerprint of what is loaded, and (iptables) a split between the
// families.
type kernelView interface {
	Fingerprint(ctx context.Context) (string, error)
}

func nsRunner(ns *lab.NS) execrun.Runner { return labtest.Runner(ns) }

func viewOf(backend string, ns *lab.NS) (kernelView, func(context.Context) (string, error)) {
	if backend == "iptables" {
		b := &ipt.Backend{Run: nsRunner(ns)}
		return b, b.Split
	}
	b := &nft.Backend{Run: nsRunner(ns)}
	return b, func(context.Context) (string, error) { return "", nil }
}

// bigPolicy is a 50k-rule policy: two rules, then deny rules for 50,000
// sources (listSource's), shifted by shift so two policies differ in a
// few thousand entries, and extra rules.
func bigPolicy(shift int, extra string) string {
	var b strings.Builder
	b.WriteString("default deny incoming\nallow 22/tcp\n" + extra)
	for i := shift; i < shift+25000; i++ {
		fmt.Fprintf(&b, "deny from %s\n", listSource(i, 0))
		fmt.Fprintf(&b, "deny from 2001:db8:%x:%x::/64\n", i>>7, 2*(i&127))
	}
	return b.String()
}

// listSource is the i-th of a long list of sources inside the
// documentation ranges, none adjacent to another (no two merge into a
// larger prefix), odd shifting it by one: every 160th an IPv4 address of
// 203.0.113.0/24 and 198.51.100.128/25 (only 768 IPv4 addresses are
// documentation ones: the lab's hosts are below 198.51.100.128 and in
// 192.0.2.0/24), the others /64s of 2001:db8:4000::/36 (the lab's
// networks and the other lists' are below 2001:db8:1000::).
func listSource(i, odd int) string {
	if i%160 == 0 {
		if idx := i / 160; idx < 127 {
			return fmt.Sprintf("203.0.113.%d", 2*idx+odd)
		} else if idx < 127+63 {
			return fmt.Sprintf("198.51.100.%d", 128+2*(idx-127)+odd)
		}
	}
	return fmt.Sprintf("2001:db8:4%03x:%x::/64", i>>7, 2*(i&127)+odd)
}

// TestKillDuringKernelApply kills `moat enable` with SIGKILL at random points
// while it applies a 50k-rule policy over another one, 30 times per
// backend. After each kill (and once the tools moat started are done),
// the kernel must hold wholly the old or wholly the new ruleset, or, on
// iptables, moat must report the families split, and the next run must
// repair it. Then real packets prove the last policy filters.
func TestKillDuringKernelApply(t *testing.T) {
	t.Parallel()
	killDuringApply(t, []string{bigPolicy(0, ""), bigPolicy(3000, "allow 80/tcp\n")}, 30)
}

// TestKillDuringSetDiff is TestKillDuringKernelApply for a change of set
// contents alone, which goes to the kernel as a difference: on nftables
// one netlink transaction (element deletes and adds with moat's record),
// on iptables ipset adds and deletes announced in MOAT-GEN first. A kill
// also falls between the kernel's commit and the element record's write.
func TestKillDuringSetDiff(t *testing.T) {
	t.Parallel()
	killDuringApply(t, []string{bigPolicy(0, "allow 80/tcp\n"), bigPolicy(3000, "allow 80/tcp\n")}, 15)
}

// TestKillDuringBlocklistSwap is TestKillDuringKernelApply for a change
// that adds one blocklist and removes another: on iptables the early
// lists (which gate the raw jump) get the new list's sets before the
// rules and lose the old one's after them, before those are destroyed. A
// kill between those steps leaves the old or the new rules with a list
// holding both lists' sets: the fingerprint (which counts only the sets
// the rules use) must still be the old or the new ruleset's. A kill
// between a family's raw table commit and its filter one (MOAT-GEN is in
// filter) must be reported as a split and repaired: it left raw at the
// new blocklist under the old record, which the repair trusted; it then
// failed to destroy the sets raw still used ("in use by a kernel
// component").
func TestKillDuringBlocklistSwap(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var policies []string
	for i, name := range []string{"a", "b"} {
		var b strings.Builder
		for j := 0; j < 20000; j++ {
			fmt.Fprintf(&b, "%s\n2001:db8:%x:%x::/64\n", listSource(j, i), j>>7, 2*(j&127)+i)
		}
		list := filepath.Join(dir, name+".list")
		writeFile(t, list, b.String())
		policies = append(policies, "default deny incoming\nallow 22/tcp\nallow 80/tcp\nblocklist "+name+" file "+list+"\n")
	}
	killDuringApply(t, policies, 15)
}

// killDuringApply kills moat at random points while it applies one
// policy over the other, kills times per backend.
func killDuringApply(t *testing.T, policies []string, kills int) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			requireBackend(t, backend)
			e := newEnv(t, backend, false)
			ctx := context.Background()
			view, split := viewOf(backend, e.topo.Server)
			fps := make([]string, 2)
			var change time.Duration // how long an apply over the other policy takes
			for i, p := range policies {
				start := time.Now()
				e.apply(p)
				change = time.Since(start)
				fp, err := view.Fingerprint(ctx)
				if err != nil || fp == "" {
					t.Fatalf("fingerprint: %q %v", fp, err)
				}
				fps[i] = fp
			}
			if fps[0] == fps[1] {
				t.Fatal("the two policies load the same rules")
			}
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
			cur := 1
			counts := map[string]int{}
			defer func() { t.Logf("an apply over the other policy took %v", change) }()
			for k := 0; k < kills; k++ {
				next := 1 - cur
				writeFile(t, e.conf, policies[next])
				// The first part of a run reads and checks the policy:
				// aim most kills at the rest.
				delay := change/5 + time.Duration(rng.Int64N(int64(change)))
				t0 := time.Now()
				exited := e.killMoatAfter(delay, "enable", "--force")
				waited := time.Since(t0)
				fp, err := view.Fingerprint(ctx)
				if err != nil {
					t.Fatalf("kill %d: fingerprint: %v", k, err)
				}
				if testing.Verbose() {
					t.Logf("kill %d: after %v, done after %v (exited by itself: %v)", k, delay, waited, exited)
				}
				switch {
				case exited:
					counts["finished"]++
					if fp != fps[next] {
						t.Fatalf("kill %d: moat finished but the kernel does not hold the new ruleset:\n%s", k, e.moatKernel())
					}
					cur = next
				case fp == fps[next]:
					counts["new"]++
					cur = next
				case fp == fps[cur]:
					counts["old"]++
				default:
					s, err := split(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if s == "" {
						t.Fatalf("kill %d after %v: the kernel is neither the old nor the new ruleset, and no split is reported:\n%s", k, delay, e.moatKernel())
					}
					counts["split"]++
					t.Logf("kill %d after %v: %s", k, delay, s)
					e.mustMoat("enable", "--force")
					if s, _ := split(ctx); s != "" {
						t.Fatalf("kill %d: split not repaired: %s", k, s)
					}
					if fp, _ := view.Fingerprint(ctx); fp != fps[next] {
						t.Fatalf("kill %d: the repair did not load the new ruleset", k)
					}
					cur = next
				}
			}
			t.Logf("%s: %d kills: %v", backend, kills, counts)
			// Whatever the last kill left, one more run makes it whole,
			// and real packets prove it.
			writeFile(t, e.conf, policies[1])
			defer func() {
				if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") {
					t.Errorf("status after the last run sees drift:\n%s", st)
				}
			}()
			e.mustMoat("enable", "--force")
			// The records a killed run wrote beside their names and never
			// renamed are gone (the repair removes them).
			e.expectNoTemps(fmt.Sprintf("after %d kills and a run", kills))
			e.expect(false,
				"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open",
				"client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:443 timeout",
				"client tcp [2001:db8::1]:443 timeout")
		})
	}
}

// timedMoat runs a moat command once and says how long it took, with a
// random source (seeded from the clock; stream tells the tests apart) for
// the moments within that time at which the runs that follow are killed
// or changed by hand.
func (e *env) timedMoat(stream uint64, args ...string) (time.Duration, *rand.Rand) {
	e.t.Helper()
	start := time.Now()
	e.mustMoat(args...)
	return time.Since(start), rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), stream))
}

// killMoatAfter starts moat in the server namespace in a process group of
// its own, sends it SIGKILL after delay, and waits until every program it
// started has ended too. It says whether moat had exited by itself first.
func (e *env) killMoatAfter(delay time.Duration, args ...string) bool {
	e.t.Helper()
	full := append([]string{"--config", e.conf, "--backend", e.backend, "--state-dir", e.stateDir()}, args...)
	cmd := exec.Command(moatBin, full...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := e.topo.Server.Start(cmd); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false
	select {
	case err := <-done:
		exited = true
		if err != nil {
			e.t.Fatalf("moat %v: %v\n%s", args, err, out.Bytes())
		}
	case <-time.After(delay):
		if err := syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			e.t.Fatal(err)
		}
		if err := <-done; err == nil {
			exited = true
		}
	}
	// nft, iptables-restore or ipset may still be running: they got
	// their whole input and finish on their own.
	deadline := time.Now().Add(60 * time.Second)
	for syscall.Kill(-cmd.Process.Pid, 0) == nil {
		if time.Now().After(deadline) {
			e.t.Fatal("programs moat started are still running after 60 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return exited
}

// moatKernel is what moat has loaded, for failure messages.
func (e *env) moatKernel() string {
	if e.backend == "nftables" {
		out, _ := e.topo.Server.Run(context.Background(), "nft", "-t", "-a", "list", "table", "inet", "moat")
		return string(out)
	}
	var b strings.Builder
	for _, prog := range [][]string{{"iptables-save", "-t", "filter"}, {"ip6tables-save", "-t", "filter"}, {"ipset", "list", "-t"}} {
		out, _ := e.topo.Server.Run(context.Background(), prog[0], prog[1:]...)
		for _, l := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(l, "-A MOAT-") || strings.Contains(l, "GEN") {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// TestKillDuringFirstEnable kills the first `moat enable` of a 50k-rule
// policy (no rules of moat's in the kernel before) at random points. On
// nftables that apply is two transactions: the filled policy sets in a
// table with no chain, then the chains and rules. After each kill the
// kernel must filter as before (no chain of moat's: a table that holds
// only sets filters nothing) or hold the whole new ruleset (iptables: or
// moat reports the families split, as TestKillDuringKernelApply); the next
// command settles what the journal says (status, read only, names the
// interrupted command and sees no drift), and real packets prove the
// policy once enabled.
func TestKillDuringFirstEnable(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		ctx := context.Background()
		view, split := viewOf(backend, e.topo.Server)
		pol := bigPolicy(0, "allow 80/tcp\n")
		start := time.Now()
		e.apply(pol)
		took := time.Since(start)
		want, err := view.Fingerprint(ctx)
		if err != nil || want == "" {
			t.Fatalf("fingerprint: %q %v", want, err)
		}
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
		counts := map[string]int{}
		for k := 0; k < 6; k++ {
			e.mustMoat("disable")
			if fp, _ := view.Fingerprint(ctx); fp != "" {
				t.Fatalf("kill %d: moat's rules are still loaded after disable", k)
			}
			delay := took/5 + time.Duration(rng.Int64N(int64(took)))
			exited := e.killMoatAfter(delay, "enable", "--force")
			fp, err := view.Fingerprint(ctx)
			if err != nil {
				t.Fatalf("kill %d: fingerprint: %v", k, err)
			}
			chains := ""
			if backend == "nftables" {
				out, _ := e.topo.Server.Run(ctx, "nft", "list", "chains", "inet", "moat")
				chains = strings.TrimSpace(strings.Join(regexpChains.FindAllString(string(out), -1), " "))
			}
			switch {
			case fp == want:
				counts["new"]++
			case exited:
				t.Fatalf("kill %d: moat finished but the kernel does not hold its ruleset:\n%s", k, e.moatKernel())
			case fp == "":
				counts["old"]++
			case backend == "nftables" && chains == "":
				counts["old, sets loaded"]++
			default:
				// iptables: one family's restore committed, the
				// other's not; moat must say so.
				if s, err := split(ctx); err != nil || s == "" {
					t.Fatalf("kill %d after %v: the kernel holds part of moat's ruleset (chains %q) and no split is reported (%v):\n%.3000s", k, delay, chains, err, e.moatKernel())
				}
				counts["split"]++
			}
			// status (read only) names the interrupted command, and
			// sees no drift; the next command settles it.
			st := e.mustMoat("status")
			if strings.Contains(st, "changed outside moat") {
				t.Errorf("kill %d: status after the interrupted enable sees drift:\n%s", k, st)
			}
			e.mustMoat("enable", "--force")
			if fp, _ := view.Fingerprint(ctx); fp != want {
				t.Fatalf("kill %d: the enable after it did not load the ruleset:\n%.3000s", k, e.moatKernel())
			}
		}
		t.Logf("%s: %v", backend, counts)
		e.expectStatusClean("status sees drift")
		e.expect(false, "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:80 open",
			"client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout")
	})
}

var regexpChains = regexp.MustCompile(`chain \S+`)

// A kill between the first enable's two nftables transactions (here: the
// nft that would load the chains kills moat instead) leaves a table of
// filled sets and no chain: nothing filters (real packets), status names
// the interrupted command and sees no drift, and the next command undoes
// it (the table goes with the interrupted change) and applies.
func TestKillBetweenStageAndRules(t *testing.T) {
	e := onBackend(t, "nftables")
	bin := nftKiller(t)
	writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\ndeny from 198.51.100.0/24\ndeny from 2001:db8:ffff::/48\n")
	ctx := context.Background()
	out, err := e.moatWithErr(bin, "enable")
	if err == nil {
		t.Fatalf("moat was not killed:\n%s", out)
	}
	table, err := e.topo.Server.Run(ctx, "nft", "list", "table", "inet", "moat")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(table), "chain ") || !strings.Contains(string(table), "198.51.100.0/24") {
		t.Fatalf("the kill did not fall between the two transactions:\n%s", table)
	}
	e.expect(false, "client tcp 192.0.2.1:443 open", "client tcp [2001:db8::1]:443 open")
	st := e.mustMoat("status")
	if !strings.Contains(st, "INTERRUPTED") || strings.Contains(st, "changed outside moat") {
		t.Errorf("status after the kill:\n%s", st)
	}
	// The next change undoes the interrupted enable (moat was not
	// enabled before it: the table goes) and only edits the file.
	e.mustMoat("allow", "80/tcp")
	if out, err := e.topo.Server.Run(ctx, "nft", "list", "table", "inet", "moat"); err == nil {
		t.Errorf("moat's table is still there after the interrupted enable was undone:\n%s", out)
	}
	if st := e.mustMoat("status"); strings.Contains(st, "INTERRUPTED") || !strings.Contains(st, "inactive") {
		t.Errorf("status after the next command:\n%s", st)
	}
	e.mustMoat("enable")
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout")
	e.expectStatusClean("status after the enable")
}

// expectNoTemps fails the test if a hidden temporary file (".NAME.N.tmp",
// or ".NAME.N" beside the policy file) is left in the state directory,
// its blocklists directory or the policy file's directory.
func (e *env) expectNoTemps(when string) {
	e.t.Helper()
	conf := filepath.Base(e.conf)
	for _, dir := range []string{e.stateDir(), filepath.Join(e.stateDir(), "blocklists"), filepath.Dir(e.conf)} {
		entries, err := os.ReadDir(dir)
		if err != nil && !os.IsNotExist(err) {
			e.t.Fatal(err)
		}
		for _, f := range entries {
			n := f.Name()
			if strings.HasPrefix(n, ".") && (strings.HasSuffix(n, ".tmp") || strings.HasPrefix(n, "."+conf+".")) {
				e.t.Errorf("left in %s %s: %s", dir, when, n)
			}
		}
	}
}
