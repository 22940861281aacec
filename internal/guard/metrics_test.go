package guard

import (
	"math"
	"sync"
)

// testMetric counts as a Counter, a Gauge and an Observer (the sum of
// observations) do, safe for the service's goroutines.
type testMetric struct {
	mu sync.Mutex
	v  float64
}

func (m *testMetric) Inc() { m.add(1) }

func (m *testMetric) Observe(v float64) { m.add(v) }

func (m *testMetric) Set(v float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.v = v
}

func (m *testMetric) add(v float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.v += v
}

// testVec is a testMetric per label value.
type testVec struct {
	mu sync.Mutex
	m  map[string]*testMetric
}

func (v *testVec) WithLabelValues(values ...string) Counter {
	v.mu.Lock()
	defer v.mu.Unlock()
	key := ""
	for _, s := range values {
		key += s + "\x00"
	}
	if v.m == nil {
		v.m = map[string]*testMetric{}
	}
	if v.m[key] == nil {
		v.m[key] = &testMetric{}
	}
	return v.m[key]
}

// newTestMetrics are Metrics that tests read back (metricValue).
func newTestMetrics() *Metrics {
	return &Metrics{Lines: &testMetric{}, Skipped: &testVec{}, Failures: &testVec{}, BansTotal: &testMetric{}, BansActive: &testMetric{},
		BanLatency: &testMetric{}, BanErrors: &testMetric{}, BanFailing: &testMetric{}, BansPending: &testMetric{}}
}

// metricValue is the value of a test metric (NaN for another kind).
func metricValue(m any) float64 {
	t, ok := m.(*testMetric)
	if !ok {
		return math.NaN()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.v
}
