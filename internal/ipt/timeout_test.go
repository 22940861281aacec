package ipt

import (
	"testing"
	"time"
)

// ipset takes timeouts up to 2147483 seconds: a longer ban is held that
// long rather than refused ("'2592000' is out of range 0-2147483").
func TestIPSetTimeout(t *testing.T) {
	for d, want := range map[time.Duration]int64{
		0:                          1,
		time.Hour:                  3600,
		24 * 24 * time.Hour:        2073600,
		30 * 24 * time.Hour:        2147483,
		100 * 365 * 24 * time.Hour: 2147483,
	} {
		if got := ipsetTimeout(d); got != want {
			t.Errorf("ipsetTimeout(%s) = %d, want %d", d, got, want)
		}
	}
}
