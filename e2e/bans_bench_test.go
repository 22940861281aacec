package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/guard"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// BenchmarkManyBans measures the commands an admin runs while the guard
// holds 200,000 bans (in the kernel and in guard.json): 'moat status',
// a rule edit ('moat allow' then 'moat delete', each applied to the kernel),
// 'moat ban' of one more address, 'moat bans' (the first 1000) and
// 'moat bans --all', and a --confirm apply with its 'moat confirm',
// against the same commands with no bans, in the same run.
//
//	go test -run XXX -bench ManyBans -benchtime 3x -timeout 30m ./e2e/
func BenchmarkManyBans(b *testing.B) {
	for _, be := range backends {
		base := map[string]float64{}
		for _, n := range []int{0, 200000} {
			b.Run(fmt.Sprintf("%s/bans-%d", be, n), func(b *testing.B) {
				e := newBenchEnv(b, be)
				e.apply("default deny incoming\nallow 22/tcp\nguard sshd\n")
				if n > 0 {
					fillBans(b, e, be, n)
				}
				ops := []struct {
					name string
					args [][]string
				}{
					{"status", [][]string{{"status", "verbose"}}},
					{"edit", [][]string{{"--force", "allow", "8080/tcp"}, {"--force", "delete", "allow", "8080/tcp"}}},
					{"ban", [][]string{{"ban", "2001:db8:fe::1"}, {"unban", "2001:db8:fe::1"}}},
					{"bans", [][]string{{"bans"}}},
					{"bans-all", [][]string{{"bans", "--all"}}},
					// A --confirm apply (the snapshot of moat's table
					// for the rollback) and its confirm; the rule is
					// taken out again without --confirm, outside the
					// measure.
					{"confirm", [][]string{{"--force", "--confirm", "1h", "--no-wait", "allow", "8081/tcp"}, {"confirm"}}},
					// A --confirm apply and its rollback by hand (the
					// snapshot restored, the bans in force put back).
					{"rollback", [][]string{{"--force", "--confirm", "1h", "--no-wait", "allow", "8082/tcp"}, {"rollback"}}},
				}
				took := map[string]time.Duration{}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					for _, op := range ops {
						t0 := time.Now()
						for _, args := range op.args {
							e.mustMoat(args...)
						}
						took[op.name] += time.Since(t0)
						if op.name == "confirm" {
							e.mustMoat("--force", "delete", "allow", "8081/tcp")
						}
					}
				}
				b.StopTimer()
				for _, op := range ops {
					ms := float64(took[op.name].Microseconds()) / 1000 / float64(b.N)
					b.ReportMetric(ms, "ms-"+op.name)
					if n == 0 {
						base[op.name] = ms
					}
					b.ReportMetric(ms/base[op.name], "x-baseline-"+op.name)
				}
			})
		}
	}
}

// fillBans puts n bans in the kernel (batches of 10,000, as the guard
// does) and in the guard's history (guard.json).
func fillBans(b *testing.B, e *env, be string, n int) {
	b.Helper()
	bk, err := backend.ForName(policy.Backend(be))
	if err != nil {
		b.Fatal(err)
	}
	bans := make([]ruleset.Ban, n)
	for j := range bans {
		bans[j] = ruleset.Ban{Addr: banAddr(j), Timeout: time.Hour, Reason: "guard: maxretry reached, last failed_password"}
	}
	for i := 0; i < n; i += 10000 {
		batch := bans[i:min(i+10000, n)]
		if err := e.topo.Server.Do(func() error { return bk.Ban(context.Background(), batch) }); err != nil {
			b.Fatal(err)
		}
	}
	if err := guard.RecordManualBans(e.stateDir(), bans, time.Now()); err != nil {
		b.Fatal(err)
	}
	// Folded into guard.json, as the guard does at its start and hourly.
	if err := guard.UpdateState(e.stateDir(), func(*guard.State) error { return nil }); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkBansAll measures 'moat bans --all' and 'moat bans --json'
// with 200,000 bans (IPv6, a reason each, recorded in the guard's
// history as the guard records them) against the kernel's own listing of
// the same set in the same run: `nft list set inet moat ban6` on
// nftables, `ipset list moat-ban6` on iptables (x-baseline: the ratio of
// wall times; cpu-: user+system time of the command and the programs it
// ran). bans-all-dump is --all with one more ban the history does not
// know (written by hand, as the port scan trap's are): on nftables the
// kernel's dump then lists the sets.
//
//	go test -run XXX -bench BansAll -benchtime 3x -timeout 40m ./e2e/
func BenchmarkBansAll(b *testing.B) {
	for _, be := range backends {
		b.Run(be, func(b *testing.B) {
			e := newBenchEnv(b, be)
			e.apply("default deny incoming\nallow 22/tcp\nguard sshd\n")
			fillBans(b, e, be, 200000)
			base := []string{"ipset", "list", "moat-ban6"}
			if be == "nftables" {
				base = []string{"nft", "list", "set", "inet", "moat", "ban6"}
			}
			moat := func(args ...string) []string {
				return append([]string{moatBin, "--config", e.conf, "--backend", e.backend, "--state-dir", e.stateDir()}, args...)
			}
			ops := []struct {
				name string
				cmd  []string
			}{
				{"baseline", base},
				{"bans-all", moat("bans", "--all")},
				{"bans-json", moat("bans", "--json")},
			}
			wall := map[string]time.Duration{}
			cpu := map[string]time.Duration{}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for _, op := range ops {
					w, c := e.timed(op.cmd)
					wall[op.name] += w
					cpu[op.name] += c
				}
			}
			b.StopTimer()
			// The dump's path, once: an element the history does not know.
			unknown := "{ 2001:db8:77::1 }"
			add := []string{"nft", "add", "element", "inet", "moat", "ban6", unknown}
			if be == "iptables" {
				add = []string{"ipset", "add", "moat-ban6", "2001:db8:77::1"}
			}
			if out, err := e.topo.Server.Run(context.Background(), add[0], add[1:]...); err != nil {
				b.Fatalf("%v: %v\n%s", add, err, out)
			}
			w, c := e.timed(moat("bans", "--all"))
			ops = append(ops, struct {
				name string
				cmd  []string
			}{"bans-all-dump", nil})
			wall["bans-all-dump"], cpu["bans-all-dump"] = w*time.Duration(b.N), c*time.Duration(b.N)
			for _, op := range ops {
				ms := float64(wall[op.name].Microseconds()) / 1000 / float64(b.N)
				cms := float64(cpu[op.name].Microseconds()) / 1000 / float64(b.N)
				b.ReportMetric(ms, "ms-"+op.name)
				b.ReportMetric(cms, "ms-cpu-"+op.name)
				if op.name != "baseline" {
					b.ReportMetric(float64(wall[op.name])/float64(wall["baseline"]), "x-baseline-"+op.name)
					b.ReportMetric(float64(cpu[op.name])/float64(cpu["baseline"]), "x-baseline-cpu-"+op.name)
				}
			}
		})
	}
}

// timed runs a command in the server's namespace, its output thrown
// away, and returns its wall time and its CPU time (user and system, its
// own and its children's).
func (e *env) timed(args []string) (wall, cpu time.Duration) {
	e.t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	t0 := time.Now()
	if err := e.topo.Server.Start(cmd); err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		e.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	wall = time.Since(t0)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return wall, cpu
}
