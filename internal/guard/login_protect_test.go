package guard

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
)

// protBanner is a Banner that records what Protect was asked.
type protBanner struct {
	recBanner
	pmu       sync.Mutex
	protected map[netip.Addr]time.Duration
}

func (f *protBanner) Protect(_ context.Context, addrs []netip.Addr, ttl time.Duration) error {
	f.pmu.Lock()
	defer f.pmu.Unlock()
	for _, a := range addrs {
		f.protected[a] = ttl
	}
	return nil
}

func (f *protBanner) got() map[netip.Addr]time.Duration {
	f.pmu.Lock()
	defer f.pmu.Unlock()
	m := map[netip.Addr]time.Duration{}
	for a, d := range f.protected {
		m[a] = d
	}
	return m
}

// A login exempts its address from the port scan trap for a day (the
// address unmapped); a failed login, or a login line older than a day (a
// replayed log), exempts nothing.
func TestServiceProtectsLogins(t *testing.T) {
	cfg := policy.DefaultGuard
	cfg.Enabled = true
	now := time.Now()
	lines := []Line{
		{Text: "Accepted publickey for root from 203.0.113.10 port 7 ssh2: ED25519 SHA256:y", Prog: "sshd-session", PID: 1, Time: now},
		{Text: "Accepted password for root from ::ffff:192.0.2.9 port 7 ssh2", Prog: "sshd-session", PID: 2, Time: now},
		{Text: "Failed password for root from 198.51.100.6 port 7 ssh2", Prog: "sshd-session", PID: 3, Time: now},
		{Text: "Accepted password for root from 198.51.100.5 port 7 ssh2", Prog: "sshd-session", PID: 4, Time: now.Add(-25 * time.Hour)},
		{Text: "Accepted password for root from 2001:db8::5 port 7 ssh2", Prog: "sshd-session", PID: 5, Time: now},
	}
	b := &protBanner{protected: map[netip.Addr]time.Duration{}}
	svc := &Service{Cfg: cfg, Bans: b, StateDir: t.TempDir(), Log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, lineSource(lines)) }()
	last := netip.MustParseAddr("2001:db8::5")
	for deadline := time.Now().Add(5 * time.Second); b.got()[last] == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	got := b.got()
	for _, a := range []string{"203.0.113.10", "192.0.2.9", "2001:db8::5"} {
		if d := got[netip.MustParseAddr(a)]; d < LoginProtectTTL-time.Minute || d > LoginProtectTTL {
			t.Errorf("%s protected for %v, want about %v (all: %v)", a, d, LoginProtectTTL, got)
		}
	}
	if len(got) != 3 {
		t.Errorf("protected %v; want only the three recent logins", got)
	}
}
