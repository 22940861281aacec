// Package guardprom is the guard's metrics in Prometheus' client and their
// /metrics endpoint. Only moat-guard-metrics (cmd/moat-guard-metrics), the
// program `moat guard --metrics-listen` runs, links it: its package
// initialisation and size cost every moat command about a millisecond of
// CPU.
package guardprom

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

	"github.com/moat-fw/moat/internal/guard"
)

// Metrics are the guard's metrics in a registry of their own.
type Metrics struct {
	guard.Metrics
	Registry *prometheus.Registry
}

// vec is a CounterVec as the guard counts it.
type vec struct{ v *prometheus.CounterVec }

func (c vec) WithLabelValues(values ...string) guard.Counter { return c.v.WithLabelValues(values...) }

// New registers the guard's metrics, with Go's and the process's.
func New() *Metrics {
	lines := prometheus.NewCounter(prometheus.CounterOpts{Name: "moat_guard_lines_read_total", Help: "Log lines read."})
	skipped := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_guard_lines_skipped_total",
		Help: "Log lines not parsed, by reason: too_long (past the source's bound), untrusted (not written by sshd)."}, []string{"reason"})
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_guard_failures_total", Help: "Failures seen, by kind."}, []string{"kind"})
	bansTotal := prometheus.NewCounter(prometheus.CounterOpts{Name: "moat_guard_bans_total", Help: "Bans made since start."})
	bansActive := prometheus.NewGauge(prometheus.GaugeOpts{Name: "moat_guard_bans_active", Help: "Bans in force (from the ban history)."})
	latency := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "moat_guard_ban_latency_seconds",
		Help:    "Time from the log line that triggered a ban to the ban being in the kernel.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)})
	banErrors := prometheus.NewCounter(prometheus.CounterOpts{Name: "moat_guard_ban_errors_total",
		Help: "Ban calls the kernel refused (a full ban set, nft or ipset failing); their bans are kept and retried."})
	banFailing := prometheus.NewGauge(prometheus.GaugeOpts{Name: "moat_guard_ban_failing",
		Help: "1 while the kernel refuses the guard's bans (the last call failed), else 0."})
	pending := prometheus.NewGauge(prometheus.GaugeOpts{Name: "moat_guard_bans_pending",
		Help: "Bans wanted but not yet in the kernel, waiting for a retry."})
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Metrics: guard.Metrics{Lines: lines, Skipped: vec{skipped}, Failures: vec{failures}, BansTotal: bansTotal, BansActive: bansActive,
			BanLatency: latency, BanErrors: banErrors, BanFailing: banFailing, BansPending: pending},
	}
	m.Registry.MustRegister(lines, skipped, failures, bansTotal, bansActive, latency, banErrors, banFailing, pending,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{guard.SkipTooLong, guard.SkipUntrusted} {
		skipped.WithLabelValues(r) // shown at 0 from the start
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
