package gctune

import (
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func percent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

func cycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func noEnv(t *testing.T) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		t.Skip("GOGC or GOMEMLIMIT set: Short leaves the collector alone")
	}
}

var sink [][]byte

// TestShortCollectsAtTheLimit: garbage well under the limit is not
// collected; restore puts the settings back.
func TestShortCollectsAtTheLimit(t *testing.T) {
	noEnv(t)
	before, beforeLimit := percent(), debug.SetMemoryLimit(-1)
	runtime.GC()
	restore := Short(1 << 30)
	n := cycles()
	for range 400 {
		sink = append(sink[:0], make([]byte, 64<<10)) // 25 MB of garbage in all
	}
	if got := cycles() - n; got != 0 {
		t.Errorf("%d collections for 25 MB of garbage under a 1 GiB limit", got)
	}
	if p := percent(); p != -1 {
		t.Errorf("GC percent %d while tuned, want -1 (collect at the limit)", p)
	}
	restore()
	if p, l := percent(), debug.SetMemoryLimit(-1); p != before || l != beforeLimit {
		t.Errorf("after restore: GC percent %d and limit %d, want %d and %d", p, l, before, beforeLimit)
	}
}

// TestShortFallsBack: once a collection leaves more than half the limit
// live, the usual pacing is back and there is no limit (a large policy
// must not make the collector run without pause).
func TestShortFallsBack(t *testing.T) {
	noEnv(t)
	before := percent()
	tu := start(16 << 20)
	defer tu.restore()
	live := make([][]byte, 0, 200)
	for range 200 {
		live = append(live, make([]byte, 64<<10)) // 12.5 MB live
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		tu.mu.Lock()
		fell := tu.fellBack
		tu.mu.Unlock()
		if fell {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still collecting only at the limit with 12.5 MB of 16 MB live")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p, l := percent(), debug.SetMemoryLimit(-1); p != before || l != math.MaxInt64 {
		t.Errorf("after falling back: GC percent %d and limit %d, want %d and none", p, l, before)
	}
	runtime.KeepAlive(live)
}

// TestShortLeavesTheAdminsSettings: GOGC or GOMEMLIMIT set, nothing changes.
func TestShortLeavesTheAdminsSettings(t *testing.T) {
	t.Setenv("GOGC", "150")
	before := percent()
	restore := Short(1 << 30)
	if p := percent(); p != before {
		t.Errorf("GC percent %d with GOGC set, want %d", p, before)
	}
	restore()
}
