package gctune

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// A GOGC that is neither a whole number nor "off" is read by the Go
// runtime as 100 without a word: it is said (EnvWarnings), and it is not
// the admin's choice, so Short tunes as without it. A good one (and
// "off") warns of nothing. Hostile text is quoted.
func TestMalformedGOGC(t *testing.T) {
	for v, bad := range map[string]bool{"bogus": true, "1e3": true, "50%": true, "\x1b[2Jx": true, "99999999999": true,
		"150": false, "off": false, "-1": false, "0": false} {
		t.Run(v, func(t *testing.T) {
			t.Setenv("GOGC", v)
			t.Setenv("GOMEMLIMIT", "")
			w := EnvWarnings()
			if bad != (len(w) == 1) {
				t.Fatalf("GOGC=%q: warnings %q", v, w)
			}
			if bad && (!strings.Contains(w[0], "GOGC=") || strings.ContainsAny(w[0], "\x1b\n")) {
				t.Errorf("warning %q", w[0])
			}
			if AdminSet() == bad {
				t.Errorf("GOGC=%q: AdminSet %v", v, !bad)
			}
		})
	}
	t.Setenv("GOGC", "bogus")
	t.Setenv("GOMEMLIMIT", "")
	before := percent()
	restore := Short(1 << 30)
	if p := percent(); p == before {
		t.Errorf("GOGC=bogus left the collector alone (percent %d): the runtime ignored it", p)
	}
	restore()
	if p := percent(); p != before {
		t.Errorf("GC percent %d after restore, want %d", p, before)
	}
}

// TestLimited: true only while the collector runs at a limit alone
// (Short's mode); false with the usual pacing, with a limit beside the
// usual pacing, and after Short falls back or is restored. The forced
// collection of a large apply is skipped only when it is true.
func TestLimited(t *testing.T) {
	noEnv(t)
	if Limited() {
		t.Fatal("Limited with the usual pacing")
	}
	old := debug.SetMemoryLimit(1 << 30)
	if Limited() {
		t.Error("Limited with a limit beside the usual pacing")
	}
	debug.SetMemoryLimit(old)
	restore := Short(1 << 30)
	if !Limited() {
		t.Error("not Limited under Short")
	}
	restore()
	if Limited() {
		t.Error("Limited after restore")
	}
	tu := start(16 << 20)
	defer tu.restore()
	if !Limited() {
		t.Error("not Limited before falling back")
	}
	tu.mu.Lock()
	debug.SetGCPercent(tu.oldPercent)
	debug.SetMemoryLimit(math.MaxInt64)
	tu.done = true
	tu.mu.Unlock()
	if Limited() {
		t.Error("Limited after falling back")
	}
}

// TestLimitedAdminsSettings: with the admin's GOGC and GOMEMLIMIT (read
// by the runtime at its start: a process of their own), Limited is true
// only for GOGC=off with a limit, the one setting in which the limit
// alone bounds the heap; Short leaves every one as it is.
func TestLimitedAdminsSettings(t *testing.T) {
	if os.Getenv("MOAT_GCTUNE_CHILD") == "1" {
		restore := Short(1 << 30)
		defer restore()
		fmt.Print(Limited())
		return
	}
	for _, c := range []struct {
		gogc, limit string
		want        bool
	}{
		{"off", "1GiB", true},
		{"off", "64MiB", true},
		{"off", "", false},
		{"off", "9223372036854775807", false}, // no limit
		{"", "1GiB", false},
		{"100", "1GiB", false},
		{"50", "", false},
		{"0", "1GiB", false},
		{"bogus", "1GiB", false}, // the runtime reads 100
		{"bogus", "", true},      // no admin's setting: Short tunes
		{"", "", true},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLimitedAdminsSettings$", "-test.count=1")
		cmd.Env = append(os.Environ(), "MOAT_GCTUNE_CHILD=1", "GOGC="+c.gogc, "GOMEMLIMIT="+c.limit)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("GOGC=%q GOMEMLIMIT=%q: %v", c.gogc, c.limit, err)
		}
		if got := strings.HasPrefix(string(out), fmt.Sprint(c.want)); !got {
			t.Errorf("GOGC=%q GOMEMLIMIT=%q: Limited printed %q, want %v", c.gogc, c.limit, out, c.want)
		}
	}
}

// StartSerial runs on one processor until Parallel gives back the
// runtime's default; both are idempotent, and GOMAXPROCS in the environment wins.
func TestSerialThenParallel(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS set: StartSerial leaves the scheduler alone")
	}
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: StartSerial has nothing to take")
	}
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	runtime.SetDefaultGOMAXPROCS()
	want := runtime.GOMAXPROCS(0) // the runtime's default, what Parallel gives back
	StartSerial()
	StartSerial()
	if got := runtime.GOMAXPROCS(0); got != 1 || !Serial() {
		t.Fatalf("after StartSerial: GOMAXPROCS %d, Serial %v; want 1, true", got, Serial())
	}
	Parallel()
	Parallel()
	if got := runtime.GOMAXPROCS(0); got != want || Serial() {
		t.Fatalf("after Parallel: GOMAXPROCS %d, Serial %v; want %d, false", got, Serial(), want)
	}
	t.Setenv("GOMAXPROCS", fmt.Sprint(want))
	StartSerial()
	if got := runtime.GOMAXPROCS(0); got != want || Serial() {
		t.Errorf("with GOMAXPROCS in the environment: %d, Serial %v", got, Serial())
	}
}

// Parallel gives back the runtime's default, worked out anew (the CPUs
// the process may use, its cgroup's limit), with which the runtime goes
// on following them: not the number StartSerial found, which would fix
// GOMAXPROCS for good in a long-running guard. Here the CPUs the thread
// may use fall to one while serial: Parallel gives one, not the two
// found at start.
func TestParallelIsTheDefault(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS set: StartSerial leaves the scheduler alone")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Skip(err)
	}
	if all.Count() < 2 {
		t.Skip("one CPU: StartSerial has nothing to take")
	}
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	runtime.SetDefaultGOMAXPROCS()
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("the runtime's default is one processor here")
	}
	StartSerial()
	defer Parallel()
	var one unix.CPUSet
	for i := range 1024 {
		if all.IsSet(i) {
			one.Set(i)
			break
		}
	}
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.SchedSetaffinity(0, &all); err != nil {
			t.Error(err)
		}
	}()
	Parallel()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("after Parallel on a thread that may use one CPU: GOMAXPROCS %d, want the default, 1", got)
	}
}
