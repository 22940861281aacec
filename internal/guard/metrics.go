package guard

// Metrics are the guard's metrics, as the service counts them. moat itself
// carries no metrics library: `moat guard --metrics-listen` runs
// moat-guard-metrics (cmd/moat-guard-metrics), where internal/guardprom
// fills these with Prometheus collectors and serves them. The Prometheus
// client cost every other command about a millisecond of start-up CPU
// (docs/benchmarks.md).
type Metrics struct {
	// Lines counts log lines read.
	Lines Counter
	// Skipped counts lines not parsed, by reason (SkipTooLong,
	// SkipUntrusted).
	Skipped CounterVec
	// Failures counts failures seen, by kind.
	Failures   CounterVec
	BansTotal  Counter
	BansActive Gauge
	// BanLatency observes the seconds from the log line that triggered a
	// ban to the ban being in the kernel.
	BanLatency Observer
	// BanErrors counts ban calls the kernel refused (each is retried).
	BanErrors Counter
	// BanFailing is 1 while the last ban call failed.
	BanFailing Gauge
	// BansPending is bans wanted and waiting for a retry.
	BansPending Gauge
}

// Counter is a count that only goes up.
type Counter interface{ Inc() }

// CounterVec is a counter per label value.
type CounterVec interface {
	WithLabelValues(values ...string) Counter
}

// Gauge is a value that is set.
type Gauge interface{ Set(float64) }

// Observer takes observations (a histogram).
type Observer interface{ Observe(float64) }
