package nft

import (
	"testing"
	"time"
)

// Ban timeouts are written as nft prints them, with small numbers: nft
// 1.0.6 refuses "115200000ms" (a 32h ban) as "value too large".
func TestTimeoutForm(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                               "1s",
		300 * time.Millisecond:          "1s",
		1500 * time.Millisecond:         "2s",
		time.Hour:                       "1h",
		32 * time.Hour:                  "1d8h",
		7*24*time.Hour + 61*time.Second: "7d1m1s",
		100 * 365 * 24 * time.Hour:      "36500d",
	} {
		if got := timeout(d); got != want {
			t.Errorf("timeout(%s) = %q, want %q", d, got, want)
		}
	}
}
