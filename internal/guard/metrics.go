package guard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the guard's Prometheus metrics.
type Metrics struct {
	Registry   *prometheus.Registry
	Lines      prometheus.Counter
	Skipped    *prometheus.CounterVec
	Failures   *prometheus.CounterVec
	BansTotal  prometheus.Counter
	BansActive prometheus.Gauge
	BanLatency prometheus.Histogram
	// BanErrors counts ban calls the kernel refused (each is retried).
	BanErrors prometheus.Counter
	// BanFailing is 1 while the last ban call failed.
	BanFailing prometheus.Gauge
	// BansPending is bans wanted and waiting for a retry.
	BansPending prometheus.Gauge
}

// NewMetrics registers the guard's metrics in a registry of their own.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Lines:    prometheus.NewCounter(prometheus.CounterOpts{Name: "moat_guard_lines_read_total", Help: "Log lines read."}),
		Skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_guard_lines_skipped_total",
			Help: "Log lines not parsed, by reason: too_long (past the source's bound), untrusted (not written by sshd)."}, []string{"reason"}),
		Failures:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_guard_failures_total", Help: "Failures seen, by kind."}, []string{"kind"}),
		BansTotal:  prometheus.NewCounter(prometheus.CounterOpts{Name: "moat_guard_bans_total", Help: "Bans made since start."}),
		BansActive: prometheus.NewGauge(prometheus.GaugeOpts{Name: "moat_guard_bans_active", Help: "Bans in force (from the ban history)."}),
		BanLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "moat_guard_ban_latency_seconds",
			Help:    "Time from the log line that triggered a ban to the ban being in the kernel.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		BanErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "moat_guard_ban_errors_total",
			Help: "Ban calls the kernel refused (a full ban set, nft or ipset failing); their bans are kept and retried."}),
		BanFailing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "moat_guard_ban_failing",
			Help: "1 while the kernel refuses the guard's bans (the last call failed), else 0."}),
		BansPending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "moat_guard_bans_pending",
			Help: "Bans wanted but not yet in the kernel, waiting for a retry."}),
	}
	m.Registry.MustRegister(m.Lines, m.Skipped, m.Failures, m.BansTotal, m.BansActive, m.BanLatency, m.BanErrors, m.BanFailing, m.BansPending,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{SkipTooLong, SkipUntrusted} {
		m.Skipped.WithLabelValues(r) // shown at 0 from the start
	}
	return m
}

// Serve answers /metrics on addr until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close() // connections that did not finish in time
		}
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}
