package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// foreignFib adds to ip filter INPUT a rule iptables cannot print (an
// nftables fib expression): iptables-save then prints the table as one
// comment line. It returns the rule's handle.
func (e *env) foreignFib() string {
	e.t.Helper()
	e.run("server", "nft", "add", "rule", "ip", "filter", "INPUT", "ct", "state", "new", "fib", "daddr", "type", "local", "accept")
	m := regexp.MustCompile(`fib daddr type local accept # handle (\d+)`).FindStringSubmatch(e.run("server", "nft", "-a", "list", "chain", "ip", "filter", "INPUT"))
	if m == nil {
		e.t.Fatal("the foreign rule is not in INPUT")
	}
	return m[1]
}

// TestIptablesRollbackAroundForeignRule: while an unconfirmed change
// waits, a rule iptables cannot print is added to ip filter INPUT. The
// rollback (the watchdog's, then 'moat rollback') must still put moat's
// chains back (real packets: the change's port closed, the ports of
// before open, IPv4 and IPv6), not fail closed, and say that the rule
// blocks reading INPUT. Before, every step of the rollback read
// iptables-save and failed: the watchdog loaded the fail-closed ruleset
// in nftables (SSH only) and left the unconfirmed iptables rules.
func TestIptablesRollbackAroundForeignRule(t *testing.T) {
	e := newEnv(t, "iptables", false)
	base := "default deny incoming\nallow 22/tcp\nallow 8080/tcp\n"
	e.apply(base)
	after := []string{"client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout",
		"client tcp 192.0.2.1:8080 open", "client tcp [2001:db8::1]:8080 open", "client tcp 192.0.2.1:22 open"}

	// The watchdog's rollback.
	e.mustMoat("--confirm", "4s", "--no-wait", "allow", "443/tcp")
	handle := e.foreignFib()
	e.waitRolledBack(30 * time.Second)
	e.expect(false, after...)
	// (status cannot read the table either: it says which rule blocks it)
	if tbl, err := e.topo.Server.Run(t.Context(), "nft", "list", "table", "inet", "moat"); err == nil {
		t.Errorf("moat's nftables table was loaded:\n%s", tbl)
	}

	// 'moat rollback', which prints what it left.
	e.run("server", "nft", "delete", "rule", "ip", "filter", "INPUT", "handle", handle)
	e.mustMoat("--confirm", "1h", "--no-wait", "allow", "443/tcp")
	e.expect(false, "client tcp 192.0.2.1:443 open")
	e.foreignFib()
	out, err := e.moat("rollback")
	if err != nil {
		t.Fatalf("rollback: %v\n%s", err, out)
	}
	if !strings.Contains(out, "fib") || !strings.Contains(out, `blocks reading "INPUT"`) {
		t.Errorf("the rollback does not say what blocks it:\n%s", out)
	}
	e.expect(false, after...)
}
