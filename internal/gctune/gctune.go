// Package gctune sets the garbage collector for a short command: it
// collects only when the heap reaches a fixed size, and goes back to the
// usual pacing as soon as what is live after a collection is half that
// size, so a large policy never makes it collect without pause.
//
// An edit of a 100,000-line policy allocates about 45 MB and lives a
// tenth of a second; collecting as the heap doubles from 4 MB spent
// about a tenth of its CPU marking what the command still holds.
package gctune

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync"
)

// liveMetric is the heap marked live by the last collection.
const liveMetric = "/gc/heap/live:bytes"

// Short collects only when the Go runtime's memory reaches limit bytes,
// until a collection leaves more than half of limit live; restore puts
// back the settings it found. Nothing changes when GOGC or GOMEMLIMIT
// holds a setting the runtime took (the admin's choice wins).
func Short(limit int64) (restore func()) {
	if AdminSet() || limit <= 0 {
		return func() {}
	}
	return start(limit).restore
}

// AdminGOGC reports whether GOGC holds a setting the Go runtime took: a
// whole number or "off". The runtime reads anything else as 100 without
// a word (EnvWarnings says it), and moat's own tuning then applies.
func AdminGOGC() bool {
	v := os.Getenv("GOGC")
	return v != "" && goodGOGC(v)
}

// AdminSet reports whether GOGC or GOMEMLIMIT holds the admin's setting.
// A GOMEMLIMIT the runtime cannot read never gets here: the runtime
// stops the program before main with "fatal error: malformed
// GOMEMLIMIT" (docs/design.md).
func AdminSet() bool { return AdminGOGC() || os.Getenv("GOMEMLIMIT") != "" }

func goodGOGC(v string) bool {
	if v == "off" {
		return true
	}
	_, err := strconv.ParseInt(v, 10, 32)
	return err == nil
}

// EnvWarnings says what of the collector's environment the Go runtime
// ignored without a word: a GOGC that is neither a whole number nor
// "off" (the runtime then uses 100).
func EnvWarnings() []string {
	if v, ok := os.LookupEnv("GOGC"); ok && v != "" && !goodGOGC(v) {
		return []string{fmt.Sprintf("GOGC=%s is not a whole number or \"off\": ignored (the Go runtime uses 100)", strconv.Quote(v))}
	}
	return nil
}

func start(limit int64) *tuner {
	t := &tuner{limit: limit}
	t.oldPercent = debug.SetGCPercent(-1)
	t.oldLimit = debug.SetMemoryLimit(limit)
	t.arm()
	return t
}

type tuner struct {
	mu              sync.Mutex
	limit, oldLimit int64
	oldPercent      int
	done            bool // restored, or back to the usual pacing
	sample          [1]metrics.Sample
	fellBack        bool // went back to the usual pacing (tests)
}

// arm checks the live heap after the next collection: a sentinel that
// dies in it runs the check (and arms the next).
func (t *tuner) arm() {
	sentinel := new([64]byte) // not a tiny allocation: its cleanup runs
	runtime.AddCleanup(sentinel, func(t *tuner) { t.check() }, t)
}

func (t *tuner) check() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return
	}
	t.sample[0].Name = liveMetric
	metrics.Read(t.sample[:])
	if s := t.sample[0]; s.Value.Kind() == metrics.KindUint64 && s.Value.Uint64() > uint64(t.limit/2) {
		// Too much is live to collect only at the limit: the usual
		// pacing, without a limit.
		debug.SetGCPercent(t.oldPercent)
		debug.SetMemoryLimit(math.MaxInt64)
		t.done, t.fellBack = true, true
		return
	}
	t.arm()
}

func (t *tuner) restore() {
	t.mu.Lock()
	defer t.mu.Unlock()
	debug.SetGCPercent(t.oldPercent)
	debug.SetMemoryLimit(t.oldLimit)
	t.done = true
}

// Limited reports whether the collector runs only at a memory limit
// (GOGC off and a limit set: Short's mode before it falls back, or the
// admin's GOGC=off with GOMEMLIMIT). A forced collection to bound the
// heap's peak is then not needed: the limit bounds it, and collecting
// earlier only marks what is live once more.
func Limited() bool {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return false
	}
	// GOGC off is a percent of -1, read as a uint64.
	return int64(s[0].Value.Uint64()) < 0 && s[1].Value.Uint64() < math.MaxInt64
}
