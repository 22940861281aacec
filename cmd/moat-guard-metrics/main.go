// Command moat-guard-metrics is moat with the guard's Prometheus metrics:
// `moat guard --metrics-listen ADDR` runs it in its own place (same PID,
// same arguments). The metrics library is linked here only, so the other
// commands do not pay for its start-up (docs/benchmarks.md). It is
// installed as /usr/lib/moat/moat-guard-metrics, or found beside moat.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/moat-fw/moat/internal/cli"
	"github.com/moat-fw/moat/internal/guard"
	"github.com/moat-fw/moat/internal/guardprom"
)

func main() {
	cli.GuardMetrics = func() (*guard.Metrics, func(context.Context, string) error) {
		m := guardprom.New()
		return &m.Metrics, m.Serve
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
