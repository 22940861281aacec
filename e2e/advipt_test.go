package e2e

import (
	"strings"
	"testing"
)

// TestAdvDriftUnreadableIsNoProof: a comparison of moat's rules that
// cannot be made is no proof that nothing changed. A rule opening port
// 80 is inserted by hand into MOAT-INPUT together with an nftables rule
// iptables-save cannot print (in a chain of its own, which moat's
// fingerprint leaves out), so that every iptables-save fails. The next
// command fails (it cannot read moat's chains), but its drift check took
// the failed comparison for "no difference" and recorded the kernel's
// fingerprint, hand rule included, as moat's own: once the unreadable
// rule was deleted, status said nothing and the port stayed open through
// every later command. The comparison that fails must leave the record
// as it was (the next command compares again) and make the next apply
// rewrite moat's rules whole.
func TestAdvDriftUnreadableIsNoProof(t *testing.T) {
	t.Parallel()
	requireBackend(t, "iptables")
	e := newEnv(t, "iptables", false)
	e.apply("default deny incoming\nallow 22/tcp\n")
	e.expect(false, "client tcp 192.0.2.1:80 timeout")
	e.run("server", "iptables", "-I", "MOAT-INPUT", "1", "-p", "tcp", "--dport", "80", "-j", "RETURN")
	e.run("server", "nft", "add", "chain", "ip", "filter", "ADVIPT")
	e.run("server", "nft", "add", "rule", "ip", "filter", "ADVIPT", "ip", "length", "100", "accept")
	if out, err := e.moat("deny", "from", "192.0.2.98"); err == nil {
		t.Logf("the command with iptables-save failing succeeded:\n%s", out)
	}
	e.run("server", "nft", "flush", "chain", "ip", "filter", "ADVIPT")
	e.run("server", "nft", "delete", "chain", "ip", "filter", "ADVIPT")
	e.expect(false, "client tcp 192.0.2.1:80 open")
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
		t.Errorf("status does not see the rule inserted by hand while iptables-save could not read the table:\n%s", out)
	}
	e.mustMoat("deny", "from", "192.0.2.98")
	e.expect(false, "client tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:22 open")
	if out := e.mustMoat("status"); strings.Contains(out, "changed outside moat") {
		t.Errorf("status after the repair:\n%s", out)
	}
}
