package e2e

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// logCount reads the packets the logging rule tagged id has seen, summed
// over the families, from the kernel.
func (e *env) logCount(id string) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	total := 0
	if e.backend == "nftables" {
		out, err := e.topo.Server.Run(ctx, "nft", "list", "table", "inet", "moat")
		if err != nil {
			e.t.Fatalf("nft list: %v\n%s", err, out)
		}
		re := regexp.MustCompile(`counter packets (\d+) bytes \d+ log prefix "[^"]*" comment "` + regexp.QuoteMeta(id) + `"`)
		for _, m := range re.FindAllStringSubmatch(string(out), -1) {
			n, _ := strconv.Atoi(m[1])
			total += n
		}
		return total
	}
	for _, prog := range []string{"iptables", "ip6tables"} {
		out, err := e.topo.Server.Run(ctx, prog, "-w", "5", "-L", "MOAT-INPUT", "-v", "-n", "-x")
		if err != nil {
			e.t.Fatalf("%s -L: %v\n%s", prog, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "/* "+id+" */") && strings.Contains(line, "LOG") {
				n, _ := strconv.Atoi(strings.Fields(line)[0])
				total += n
			}
		}
	}
	return total
}

// 'logging low' logs what the default policy blocks (rate limited), and
// nothing that a rule allows; 'logging off' removes the rule.
func TestLoggingBlocked(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow log 22/tcp\nlogging low\n")
		e.expect(false, "client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open")
		if n := e.logCount("logging:block:input"); n != 0 {
			t.Errorf("allowed connections were logged as blocked: %d", n)
		}
		// 'log' logs the rule's new connections (not their other packets).
		if n := e.logCount("log:L2"); n != 2 {
			t.Errorf("'allow log 22/tcp' logged %d packets, want the 2 new connections", n)
		}
		e.expect(false, "client tcp 192.0.2.1:80 timeout", "client tcp [2001:db8::1]:80 timeout", "client udp 192.0.2.1:53 timeout")
		if n := e.logCount("logging:block:input"); n < 3 {
			t.Errorf("blocked packets logged: %d, want at least 3", n)
		}
		out := e.mustMoat("show")
		if !strings.Contains(out, "[MOAT BLOCK]") || !strings.Contains(out, "3/min") {
			t.Errorf("show lacks the rate-limited log rule:\n%s", out)
		}
		e.mustMoat("logging", "off")
		if strings.Contains(e.mustMoat("show"), "MOAT BLOCK") {
			t.Error("logging off left the log rule")
		}
		e.expect(false, "client tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:22 open")
	})
}
