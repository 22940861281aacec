package guard

import (
	"math"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
)

// A ban's length is bantime × factor^prior, between bantime and
// bantime-max whatever the prior count says: a huge count (or factor)
// does not overflow, and a negative count from a damaged state file does
// not make a ban shorter than bantime (it made 1h × 2^-100: 0s).
func TestBanTimeBounds(t *testing.T) {
	d := NewDetector(policy.Guard{BanTime: time.Hour, BanTimeMax: 7 * 24 * time.Hour, BanTimeFactor: 100}, nil)
	for prior, want := range map[int]time.Duration{
		0: time.Hour, 1: 100 * time.Hour, 2: 7 * 24 * time.Hour, 1000: 7 * 24 * time.Hour, math.MaxInt: 7 * 24 * time.Hour,
		-1: time.Hour, -100: time.Hour, math.MinInt: time.Hour,
	} {
		if got := d.BanTime(prior); got != want {
			t.Errorf("BanTime(%d) = %s, want %s", prior, got, want)
		}
	}
}
