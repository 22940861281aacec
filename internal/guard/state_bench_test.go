package guard

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// BenchmarkStateActiveBans measures what 'moat status' pays for the ban
// count, and what 'moat ban' pays to record one ban, with a history of
// 200,000 addresses against one of 1,000 in the same run.
//
//	go test -run XXX -bench StateActiveBans -benchtime 5x ./internal/guard/
func BenchmarkStateActiveBans(b *testing.B) {
	base := map[string]float64{}
	for _, n := range []int{1000, 200000} {
		b.Run(fmt.Sprintf("history-%d", n), func(b *testing.B) {
			dir := b.TempDir()
			now := time.Now()
			bans := make([]ruleset.Ban, n)
			for j := range bans {
				bans[j] = ruleset.Ban{Addr: netip.MustParseAddr(fmt.Sprintf("2001:db8:ff:%x::%x", j/65535, j%65535+1)),
					Timeout: time.Hour, Reason: "guard: maxretry reached, last failed_password"}
			}
			if err := RecordManualBans(dir, bans, now); err != nil {
				b.Fatal(err)
			}
			if err := UpdateState(dir, func(*State) error { return nil }); err != nil {
				b.Fatal(err)
			}
			var count, record time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				got, err := ActiveBans(dir, now)
				if err != nil || got != n {
					b.Fatalf("%d %v", got, err)
				}
				t1 := time.Now()
				if err := RecordManualBans(dir, bans[:1], now); err != nil {
					b.Fatal(err)
				}
				count, record = count+t1.Sub(t0), record+time.Since(t1)
			}
			for name, d := range map[string]time.Duration{"count": count, "ban": record} {
				ms := float64(d.Microseconds()) / 1000 / float64(b.N)
				b.ReportMetric(ms, "ms-"+name)
				if n == 1000 {
					base[name] = ms
				}
				b.ReportMetric(ms/base[name], "x-baseline-"+name)
			}
		})
	}
}
