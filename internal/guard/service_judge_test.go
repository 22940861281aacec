package guard

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

type recBanner struct {
	mu   sync.Mutex
	bans []ruleset.Ban
}

func (f *recBanner) Ban(_ context.Context, bans []ruleset.Ban) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bans = append(f.bans, bans...)
	return nil
}

func (f *recBanner) Bans(context.Context) ([]ruleset.Ban, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ruleset.Ban(nil), f.bans...), nil
}

func (f *recBanner) banned() map[netip.Addr]bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[netip.Addr]bool{}
	for _, b := range f.bans {
		m[b.Addr] = true
	}
	return m
}

// lineSource sends its lines, then waits for the end.
type lineSource []Line

func (s lineSource) Run(ctx context.Context, out chan<- Line) error {
	for _, l := range s {
		select {
		case out <- l:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	<-ctx.Done()
	return ctx.Err()
}

// syncBuffer is a log the test reads while the guard writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The service judges journald lines by their PID, refuses this host's and
// a logged-in admin's addresses with the line that asked, and bans the
// attacker; at the next start it does not put back a ban of an address
// that has become protected.
func TestServiceJudgesAndRefuses(t *testing.T) {
	dir := t.TempDir()
	var logBuf syncBuffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	cfg := policy.DefaultGuard
	cfg.Enabled, cfg.MaxRetry = true, 2
	local := []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	var mu sync.Mutex
	prot := &Protector{
		Addrs: func() ([]netip.Addr, error) {
			mu.Lock()
			defer mu.Unlock()
			return append([]netip.Addr(nil), local...), nil
		},
		Sessions: func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("2001:db8::7")}, nil },
	}
	var lines []Line
	add := func(pid int, msg string) {
		lines = append(lines, Line{Text: msg, Prog: "sshd-session", PID: pid, Time: time.Now()})
	}
	for i := 0; i < 2; i++ {
		add(100+i, "Failed password for root from 192.0.2.1 port 1 ssh2")
		add(110+i, "Failed password for root from 2001:db8::7 port 1 ssh2")
		for k := 0; k < 5; k++ {
			add(120+i, "Failed publickey for root from 203.0.113.10 port 7 ssh2: ED25519 SHA256:x")
		}
		add(120+i, "Accepted publickey for root from 203.0.113.10 port 7 ssh2: ED25519 SHA256:y")
		for k := 0; k < 6; k++ {
			add(130+i, "Failed publickey for root from 203.0.113.9 port 9 ssh2: ED25519 SHA256:x")
		}
		add(130+i, "Disconnecting: Too many authentication failures [preauth]")
	}
	b := &recBanner{}
	svc := &Service{Cfg: cfg, Bans: b, StateDir: dir, Log: log, Protect: prot}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, lineSource(lines)) }()
	deadline := time.Now().Add(5 * time.Second)
	for !b.banned()[netip.MustParseAddr("203.0.113.9")] && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	<-done
	if got := b.banned(); len(got) != 1 || !got[netip.MustParseAddr("203.0.113.9")] {
		t.Fatalf("bans %v; want only 203.0.113.9", got)
	}
	for _, want := range []string{
		`msg="refused to ban" address=192.0.2.1 why="it is an address of this host"`,
		`line="Failed password for root from 192.0.2.1 port 1 ssh2"`,
		`address=2001:db8::7 why="it has a logged-in SSH session here"`,
	} {
		if !strings.Contains(logBuf.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logBuf.String())
		}
	}

	// The attacker's address is now the host's: the lost ban is not put back.
	mu.Lock()
	local = append(local, netip.MustParseAddr("203.0.113.9"))
	mu.Unlock()
	prot.Fresh = time.Nanosecond
	b2 := &recBanner{}
	svc2 := &Service{Cfg: cfg, Bans: b2, StateDir: dir, Log: log, Protect: prot}
	st, err := LoadState(dir)
	if err != nil || st.Bans[netip.MustParseAddr("203.0.113.9")] == nil {
		t.Fatalf("history %+v %v", st, err)
	}
	n, err := svc2.Restore(context.Background(), st, time.Now())
	if err != nil || n != 0 || len(b2.banned()) != 0 {
		t.Fatalf("restored %d (%v): %v", n, err, b2.banned())
	}
}
