package guard

import (
	"net/netip"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
)

func testGuard() policy.Guard {
	g := policy.DefaultGuard
	g.MaxRetry, g.FindTime, g.BanTime, g.BanTimeMax, g.BanTimeFactor = 3, time.Minute, 10*time.Second, 35*time.Second, 2
	g.Allowlist = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	return g
}

func ev(kind Kind, a string) Event { return Event{Kind: kind, Addr: netip.MustParseAddr(a)} }

func TestDetectorBansAndEscalates(t *testing.T) {
	d := NewDetector(testGuard(), nil)
	t0 := time.Unix(1_000_000, 0)
	a := "203.0.113.9"
	for i := 0; i < 2; i++ {
		if _, ok := d.Observe(ev(FailedPassword, a), t0.Add(time.Duration(i)*time.Second)); ok {
			t.Fatalf("banned after %d failures", i+1)
		}
	}
	ban, ok := d.Observe(ev(InvalidUser, a), t0.Add(2*time.Second))
	if !ok || ban.Timeout != 10*time.Second || ban.Addr.String() != a {
		t.Fatalf("third failure: %+v %v", ban, ok)
	}
	// While banned, stragglers do not count; later, escalation: 20s, then 35s (capped).
	if _, ok := d.Observe(ev(FailedPassword, a), t0.Add(3*time.Second)); ok {
		t.Fatal("banned again while banned")
	}
	want := []time.Duration{20 * time.Second, 35 * time.Second, 35 * time.Second}
	at := t0.Add(time.Minute)
	for round, w := range want {
		var got time.Duration
		for i := 0; i < 3; i++ {
			if b, ok := d.Observe(ev(FailedPassword, a), at); ok {
				got = b.Timeout
			}
		}
		if got != w {
			t.Fatalf("ban %d: %s, want %s", round+2, got, w)
		}
		at = at.Add(time.Hour)
	}
	if d.History()[netip.MustParseAddr(a)].Count != 4 {
		t.Fatalf("history %+v", d.History()[netip.MustParseAddr(a)])
	}
}

func TestDetectorWindowAllowlistWeak(t *testing.T) {
	d := NewDetector(testGuard(), nil)
	t0 := time.Unix(1_000_000, 0)
	// Failures spread wider than findtime never add up.
	for i := 0; i < 10; i++ {
		if _, ok := d.Observe(ev(FailedPassword, "203.0.113.1"), t0.Add(time.Duration(i)*31*time.Second)); ok {
			t.Fatal("banned across findtime")
		}
	}
	for i := 0; i < 10; i++ {
		if _, ok := d.Observe(ev(FailedPassword, "198.51.100.7"), t0); ok {
			t.Fatal("allowlisted address banned")
		}
	}
	// Weak evidence counts half: 5 weak events are not 3 failures, 6 are.
	for i := 0; i < 5; i++ {
		if _, ok := d.Observe(ev(PreauthDisconnect, "203.0.113.2"), t0); ok {
			t.Fatalf("banned after %d weak events", i+1)
		}
	}
	if _, ok := d.Observe(ev(PreauthDisconnect, "203.0.113.2"), t0); !ok {
		t.Fatal("6 weak events did not ban")
	}
	if _, ok := d.Observe(ev(Accepted, "203.0.113.3"), t0); ok {
		t.Fatal("a successful login banned")
	}
	g := testGuard()
	g.WeakWeight = 0
	d = NewDetector(g, nil)
	for i := 0; i < 20; i++ {
		if _, ok := d.Observe(ev(BadProtocol, "203.0.113.4"), t0); ok {
			t.Fatal("weak events banned with weak 0")
		}
	}
}
