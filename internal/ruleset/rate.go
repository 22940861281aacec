package ruleset

import "github.com/moat-fw/moat/internal/policy"

// Counter is a rule's packet and byte count as read from the kernel.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// RateUnit expresses a limit as the token bucket both kernels implement:
// the source may open Burst connections at once, and regains the right to
// Burst connections per rate.Seconds. It returns the refill as an integer
// count per unit ("second", "minute", "hour" or "day"), rounding up only
// when no unit gives an exact integer.
func RateUnit(r policy.Rate) (n int, unit string) {
	units := []struct {
		name string
		secs int
	}{{"second", 1}, {"minute", 60}, {"hour", 3600}, {"day", 86400}}
	for _, u := range units {
		if (r.Burst*u.secs)%r.Seconds == 0 {
			return r.Burst * u.secs / r.Seconds, u.name
		}
	}
	return (r.Burst*86400 + r.Seconds - 1) / r.Seconds, "day"
}
