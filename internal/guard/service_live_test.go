package guard

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// flakyBanner refuses the next fail ban calls (a full ban set, nft
// failing), then bans; listBad makes the next listings fail too.
type flakyBanner struct {
	recBanner
	fmu     sync.Mutex
	fail    int
	listBad int
	calls   int
}

func (f *flakyBanner) failNext(n int) {
	f.fmu.Lock()
	defer f.fmu.Unlock()
	f.fail = n
}

func (f *flakyBanner) Ban(ctx context.Context, bans []ruleset.Ban) error {
	f.fmu.Lock()
	f.calls++
	if f.fail > 0 {
		f.fail--
		f.fmu.Unlock()
		return errors.New("netlink: Error: Could not process rule: Argument list too long (set full)")
	}
	f.fmu.Unlock()
	return f.recBanner.Ban(ctx, bans)
}

func (f *flakyBanner) Bans(ctx context.Context) ([]ruleset.Ban, error) {
	f.fmu.Lock()
	if f.listBad > 0 {
		f.listBad--
		f.fmu.Unlock()
		return nil, errors.New("nft list: transient failure")
	}
	f.fmu.Unlock()
	return f.recBanner.Bans(ctx)
}

func attack(src chanSource, addr string, n int) {
	for i := 0; i < n; i++ {
		src <- Line{Text: "Nov 25 11:40:01 srv sshd[12]: Failed password for root from " + addr + " port 22 ssh2"}
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A kernel that refuses bans does not stop the guard: the failed bans are
// logged with their addresses, counted, kept as wanted and retried with
// backoff until they land; the same fault again is survived the same way,
// and the guard keeps reading and judging meanwhile.
func TestServiceSurvivesFailingBans(t *testing.T) {
	dir := stateDir(t)
	var logBuf syncBuffer
	b := &flakyBanner{}
	svc := newService(dir, slog.New(slog.NewTextHandler(&logBuf, nil)))
	svc.Bans = b
	svc.RetryMin = 10 * time.Millisecond
	var status []string
	var smu sync.Mutex
	svc.Status = func(s string) { smu.Lock(); status = append(status, s); smu.Unlock() }
	src := make(chanSource, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, src) }()

	first, second := netip.MustParseAddr("203.0.113.20"), netip.MustParseAddr("2001:db8::20")
	b.failNext(3)
	attack(src, first.String(), 3)
	waitFor(t, "the first ban after 3 refusals", func() bool { return b.banned()[first] })
	if got := metricValue(svc.Metrics.BanErrors); got != 3 {
		t.Errorf("moat_guard_ban_errors_total %v, want 3", got)
	}
	// The same fault twice in a row, long enough to be reported loudly;
	// lines read meanwhile are judged and their bans queued.
	b.failNext(failingLoud)
	attack(src, second.String(), 3)
	waitFor(t, "a refusal", func() bool { return metricValue(svc.Metrics.BanFailing) == 1 })
	third := netip.MustParseAddr("203.0.113.21")
	attack(src, third.String(), 3)
	waitFor(t, "the bans after recovery", func() bool { return b.banned()[second] && b.banned()[third] })
	select {
	case err := <-done:
		t.Fatalf("the guard exited: %v", err)
	default:
	}
	if got := metricValue(svc.Metrics.BanErrors); got != 3+failingLoud {
		t.Errorf("moat_guard_ban_errors_total %v, want %d", got, 3+failingLoud)
	}
	if metricValue(svc.Metrics.BanFailing) != 0 || metricValue(svc.Metrics.BansPending) != 0 {
		t.Error("still failing or pending after recovery")
	}
	log := logBuf.String()
	for _, want := range []string{`msg="ban failed; kept as wanted and retried" addresses=[203.0.113.20]`, "2001:db8::20", "Argument list too long", "bans land again"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	smu.Lock()
	if len(status) != 2 || !strings.HasPrefix(status[0], "cannot ban:") || status[1] != "banning" {
		t.Errorf("status %q", status)
	}
	smu.Unlock()
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	// The history kept them as wanted all along.
	st, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{first, second, third} {
		if st.Bans[a] == nil {
			t.Errorf("%s not in the history", a)
		}
	}

	// At start, a kernel that cannot list or take the lost bans does not
	// stop the guard either: it puts them back once the kernel answers.
	b2 := &flakyBanner{listBad: 2}
	svc2 := newService(dir, slog.New(slog.NewTextHandler(&logBuf, nil)))
	svc2.Bans, svc2.RetryMin = b2, 10*time.Millisecond
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := make(chan error, 1)
	go func() { done2 <- svc2.Run(ctx2, make(chanSource)) }()
	waitFor(t, "the lost bans put back", func() bool { return len(b2.banned()) == 3 })
	cancel2()
	if err := <-done2; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// blockBanner's Ban never returns until released (a hung nft).
type blockBanner struct {
	recBanner
	entered chan struct{}
	release chan struct{}
}

func (f *blockBanner) Ban(ctx context.Context, bans []ruleset.Ban) error {
	f.entered <- struct{}{}
	<-f.release
	return f.recBanner.Ban(ctx, bans)
}

// The watchdog is pinged while the main loop is idle and healthy, and not
// while it is stuck in a ban call that never returns; pings resume once
// it moves again.
func TestServiceWatchdogFollowsLoop(t *testing.T) {
	dir := stateDir(t)
	b := &blockBanner{entered: make(chan struct{}, 1), release: make(chan struct{})}
	var logBuf syncBuffer
	svc := newService(dir, slog.New(slog.NewTextHandler(&logBuf, nil)))
	svc.Bans = b
	interval := 200 * time.Millisecond
	svc.BeatEvery = WatchdogBeat(interval)
	var pings atomic.Int64
	src := make(chanSource, 16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, src) }()
	go svc.Watchdog(ctx, interval, func() { pings.Add(1) })

	// Idle: pinged all along.
	time.Sleep(5 * interval)
	if n := pings.Load(); n < 3 {
		t.Fatalf("%d pings from an idle healthy guard in %v:\n%s", n, 5*interval, logBuf.String())
	}
	attack(src, "203.0.113.30", 3)
	<-b.entered
	time.Sleep(interval) // a ping checked just before the hang may still go out
	before := pings.Load()
	time.Sleep(5 * interval)
	if n := pings.Load() - before; n != 0 {
		t.Fatalf("%d pings while the main loop hung in a ban call", n)
	}
	close(b.release)
	waitFor(t, "pings after the hang ended", func() bool { return pings.Load() > before })
	cancel()
	<-done
}
