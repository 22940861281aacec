package e2e

import (
	"strings"
	"testing"
)

// A rule added with nft that iptables cannot read (a ct expression) in
// the server's ip filter table makes iptables-save print the table as
// "incompatible": moat, on the iptables backend, refuses to change
// anything there (it cannot read its own chains), and says which rule:
// its chain and handle, and the expression, not only the table. The
// rule iptables reads, and moat's rules, stay as they were; status still
// works (it reads moat's chains over netlink).
func TestIncompatibleRuleNamed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "iptables", false)
	policy := "default deny incoming\nallow 22/tcp\nallow 80/tcp\n"
	e.apply(policy)
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout")
	e.run("server", "nft", "add", "rule", "ip", "filter", "INPUT", "ct", "state", "new", "ip", "saddr", "198.51.100.99", "accept")
	handle := ""
	for _, l := range strings.Split(e.run("server", "nft", "-a", "list", "chain", "ip", "filter", "INPUT"), "\n") {
		if strings.Contains(l, "198.51.100.99") {
			if _, h, ok := strings.Cut(l, "# handle "); ok {
				handle = strings.TrimSpace(h)
			}
		}
	}
	if handle == "" {
		t.Fatal("the foreign rule's handle was not found")
	}
	writeFile(t, e.conf, policy+"allow 443/tcp\n")
	out, err := e.moat("enable")
	if err == nil {
		t.Fatalf("moat enable with an incompatible table succeeded:\n%s", out)
	}
	t.Logf("moat enable: %v\n%s", err, out)
	for _, want := range []string{"table ip filter", `rule handle ` + handle + ` in chain "INPUT" (nftables expression ct)`, "nft delete rule ip filter CHAIN handle N"} {
		if !strings.Contains(out, want) {
			t.Errorf("moat enable said:\n%s\nwithout %q", out, want)
		}
	}
	// Status still reads moat's own chains (over netlink: no
	// iptables-save) and says they are as applied.
	if st, err := e.moat("status"); err != nil || !strings.Contains(st, "Status: active") || strings.Contains(st, "changed outside") {
		t.Errorf("moat status with the foreign rule: %v\n%s", err, st)
	}
	// Nothing applied: 443 stays closed, 80 open.
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout")
	// Deleted as told, moat works again.
	e.run("server", "nft", "delete", "rule", "ip", "filter", "INPUT", "handle", handle)
	e.mustMoat("enable")
	e.expect(false, "client tcp 192.0.2.1:443 open", "client tcp [2001:db8::1]:443 open")
}

// A rule's comment holding a newline and the start of iptables-save's
// "incompatible" line (iptables-save prints a comment as it is, its
// quote escaped) is not taken for that line: moat works on, and its
// terminal controls reach no output.
func TestIncompatibleLineInComment(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "iptables", false)
	policy := "default deny incoming\nallow 22/tcp\nallow 80/tcp\n"
	e.apply(policy)
	for _, c := range []string{"a\n# Table `\x1b[31mZ' is incompatible", "b\n# Table `filter' is incompatible, use 'nft' tool.\nc"} {
		e.run("server", "iptables", "-A", "INPUT", "-s", "198.51.100.99", "-m", "comment", "--comment", c, "-j", "ACCEPT")
	}
	writeFile(t, e.conf, policy+"allow 443/tcp\n")
	out, err := e.moat("enable")
	if err != nil || strings.Contains(out, "\x1b") {
		t.Fatalf("moat enable with a comment holding the line: %v\n%q", err, out)
	}
	if st, err := e.moat("status"); err != nil || !strings.Contains(st, "Status: active") || strings.Contains(st, "\x1b") {
		t.Errorf("moat status: %v\n%q", err, st)
	}
	e.expect(false, "client tcp 192.0.2.1:443 open", "client tcp [2001:db8::1]:443 open")
}
