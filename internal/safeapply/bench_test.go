package safeapply

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// BenchmarkCheckSessions measures the lockout check of 5 sessions against
// a 10,000-rule policy: trying every reconnect source port, against a
// baseline in the same run that tries only each session's own port. "sport-rules" has 1,000 source-port allow rules
// that could match the reconnect and cut nothing, the worst case for the
// port stretches (each is tried);
// "other-rules" has them on another port, which the check skips.
//
//	go test -run XXX -bench CheckSessions ./internal/safeapply/
func BenchmarkCheckSessions(b *testing.B) {
	for _, kind := range []string{"other-rules", "sport-rules"} {
		var sb strings.Builder
		sb.WriteString("default deny incoming\n")
		for i := range 9000 {
			fmt.Fprintf(&sb, "deny proto tcp from 2001:db8:%x:%x::/64 to any port 9\n", i/65536, i%65536)
		}
		port := 80
		if kind == "sport-rules" {
			port = 22
		}
		for i := range 1000 {
			fmt.Fprintf(&sb, "allow proto tcp from any port %d:%d to any port %d\n", 1024+i*60, 1024+i*60+9, port)
		}
		sb.WriteString("allow 22/tcp\n")
		p, err := policy.NewDocument("moat.conf", []byte(sb.String())).Policy(nil)
		if err != nil {
			b.Fatal(err)
		}
		rs := ruleset.Compile(p)
		var sessions []Session
		for i := range 5 {
			sessions = append(sessions, Session{Client: netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("203.0.113.%d", i+1)), 61500),
				Server: netip.MustParseAddrPort("192.0.2.1:22"), Source: "bench"})
		}
		var baseline float64
		for _, mode := range []string{"own-port", "reconnect-ports"} {
			if mode == "reconnect-ports" {
				for i := range sessions {
					sessions[i].ReconnectPorts = policy.Ports{{First: 32768, Last: 60999}, ianaEphemeral}
				}
			}
			b.Run(kind+"/"+mode, func(b *testing.B) {
				for b.Loop() {
					CheckSessions(rs, p, sessions, func(netip.Addr) string { return "eth0" })
				}
				per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
				if mode == "own-port" {
					baseline = per
				}
				b.ReportMetric(per/baseline, "x-baseline")
			})
		}
	}
}
