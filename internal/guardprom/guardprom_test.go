package guardprom

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/guard"
)

// The guard's counts reach /metrics under the names the README and
// dashboards use, the skipped-line reasons at 0 from the start.
func TestServeCounts(t *testing.T) {
	m := New()
	m.Lines.Inc()
	m.Lines.Inc()
	m.Failures.WithLabelValues("invalid_user").Inc()
	m.Skipped.WithLabelValues(guard.SkipTooLong).Inc()
	m.BansTotal.Inc()
	m.BansActive.Set(4)
	m.BanLatency.Observe(0.002)
	m.BanErrors.Inc()
	m.BanFailing.Set(1)
	m.BansPending.Set(2)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close() // Serve listens itself
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, addr) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var body string
	for range 100 {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			data, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			body = string(data)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{
		"moat_guard_lines_read_total 2",
		`moat_guard_failures_total{kind="invalid_user"} 1`,
		`moat_guard_lines_skipped_total{reason="too_long"} 1`,
		`moat_guard_lines_skipped_total{reason="untrusted"} 0`,
		"moat_guard_bans_total 1",
		"moat_guard_bans_active 4",
		"moat_guard_ban_latency_seconds_count 1",
		"moat_guard_ban_errors_total 1",
		"moat_guard_ban_failing 1",
		"moat_guard_bans_pending 2",
		"go_goroutines",
		"process_cpu_seconds_total",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
}
