package e2e

import (
	"strings"
	"testing"
)

// TestIptHandJumpsRepaired: moat's iptables jumps carry conditions, and
// MOAT-INPUT no longer holds the established accept the condition stands
// for, so every jump into it from INPUT must be moat's own, where moat put
// it. A jump whose condition was changed by hand is reported and replaced
// by the next apply (left beside moat's, it sent established packets into
// MOAT-INPUT, which dropped them: a connection the server opened got no
// answers); a second jump of moat's form behind a foreign rule is
// removed, not moat's first one (which put moat's jump behind the
// foreign accept).
func TestIptHandJumpsRepaired(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	const jump = "-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n"
	jumps := func(prog string) int {
		return strings.Count(e.run("server", prog+"-save", "-t", "filter"), "-j MOAT-INPUT\n")
	}

	// A foreign accept behind moat's jump, and a second jump of moat's
	// form behind that.
	e.run("server", "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT")
	e.run("server", "iptables", "-A", "INPUT", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED", "-j", "MOAT-INPUT")
	if out := e.mustMoat("status"); !strings.Contains(out, "jumps to MOAT-INPUT 2 times") {
		t.Errorf("status does not see a second jump:\n%s", out)
	}
	e.mustMoat("reload")
	if save := e.run("server", "iptables-save", "-t", "filter"); !strings.Contains(save, jump+"-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\n") || jumps("iptables") != 1 {
		t.Errorf("reload did not keep moat's jump first and alone:\n%s", save)
	}
	e.expect(false, "client tcp 192.0.2.1:8080 timeout", "client tcp 192.0.2.1:22 open")

	// The jump's condition changed by hand, both families.
	e.run("server", "iptables", "-R", "INPUT", "1", "-s", "192.0.2.2/32", "-j", "MOAT-INPUT")
	e.run("server", "ip6tables", "-R", "INPUT", "1", "-s", "2001:db8::2/128", "-j", "MOAT-INPUT")
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
		t.Errorf("status does not see the jump changed by hand:\n%s", out)
	}
	e.mustMoat("reload")
	for _, prog := range []string{"iptables", "ip6tables"} {
		if n := jumps(prog); n != 1 {
			t.Errorf("%s: %d jumps to MOAT-INPUT after reload:\n%s", prog, n, e.run("server", prog+"-save", "-t", "filter"))
		}
	}
	if out := e.mustMoat("status"); strings.Contains(out, "outside moat") {
		t.Errorf("status after the repair:\n%s", out)
	}
	e.expect(false, "server tcp 192.0.2.2:80 open", "server tcp [2001:db8::2]:80 open",
		"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open", "client tcp 192.0.2.1:23 timeout")

	// moat disable removes every jump.
	e.run("server", "iptables", "-A", "INPUT", "-i", "lo", "-j", "MOAT-INPUT")
	e.mustMoat("disable")
	for _, prog := range []string{"iptables", "ip6tables"} {
		if save := e.run("server", prog+"-save"); strings.Contains(save, "MOAT-") {
			t.Errorf("%s after disable:\n%s", prog, save)
		}
	}
}

// TestIptRollbackRestoresEarlierJumps: a change made on the layout an
// earlier moat loaded (plain jumps, the established accept in moat's
// chains) and rolled back puts that layout back whole: the plain jump
// where the conditional one stood (behind a foreign rule), once, with
// the chain that holds the established accept again; established
// packets pass, status sees no hand change.
func TestIptRollbackRestoresEarlierJumps(t *testing.T) {
	e := onBackend(t, "iptables")
	const pol = "default deny incoming\nallow 22/tcp\n"
	e.apply(pol)
	e.iptLoadPlainJumps(pol)
	e.run("server", "iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT")
	e.mustMoat("--confirm", "1h", "--no-wait", "allow", "443/tcp")
	if save := e.run("server", "iptables-save", "-t", "filter"); !strings.Contains(save, "--dport 8080 -j ACCEPT\n-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n") {
		t.Fatalf("the change did not load this version's jump:\n%s", save)
	}
	e.mustMoat("rollback")
	for _, prog := range []string{"iptables", "ip6tables"} {
		save := e.run("server", prog+"-save", "-t", "filter")
		if strings.Count(save, "-j MOAT-INPUT\n") != 1 || !strings.Contains(save, "-A INPUT -j MOAT-INPUT\n") || !strings.Contains(save, `"builtin:established"`) {
			t.Errorf("%s after the rollback:\n%s", prog, save)
		}
	}
	if save := e.run("server", "iptables-save", "-t", "filter"); !strings.Contains(save, "--dport 8080 -j ACCEPT\n-A INPUT -j MOAT-INPUT\n") {
		t.Errorf("the jump is not where it stood:\n%s", save)
	}
	if out := e.mustMoat("status"); strings.Contains(out, "outside moat") {
		t.Errorf("status after the rollback:\n%s", out)
	}
	e.expect(false, "server tcp 192.0.2.2:80 open", "server tcp [2001:db8::2]:80 open",
		"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:443 timeout", "client tcp 192.0.2.1:443 timeout")
}
