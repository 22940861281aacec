package e2e

import (
	"context"
	"fmt"
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
