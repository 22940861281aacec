package nft

import (
	"fmt"
	"strings"
	"time"
)

// timeout writes a set element's timeout as nft prints it: days, hours,
// minutes and seconds (rounded up, at least 1s). nft (1.0.6, Debian 12)
// refuses a number of nine digits or more in a time ("115200000ms: value
// too large"), so a ban of 28 hours or more written in ms or s failed:
// the guard's sixth escalated ban (32h), 'moat ban --for 2d'.
func timeout(d time.Duration) string {
	secs := max(int64((d+time.Second-1)/time.Second), 1)
	var b strings.Builder
	for _, u := range []struct {
		n    int64
		name string
	}{{86400, "d"}, {3600, "h"}, {60, "m"}, {1, "s"}} {
		if v := secs / u.n; v > 0 {
			fmt.Fprintf(&b, "%d%s", v, u.name)
			secs -= v * u.n
		}
	}
	return b.String()
}
