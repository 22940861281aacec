package e2e

import (
	"strings"
	"testing"
)

// An iptables edit over netlink rewrites only the chains whose rules
// changed (ipt's onlyChanged, from the hashes kept in ipt-chains.json):
// a rule put by hand into one of moat's chains that the next edit does
// not change (filter's MOAT-OUTPUT in IPv4, raw's MOAT-PREROUTING in
// IPv6), must still be said and written over by that edit, never left
// there because its chain's hash is unchanged. Real packets where a
// packet goes through the chain: the hand rule in MOAT-OUTPUT stops the
// server's connections to the client's port 80, and after the edit (of
// MOAT-INPUT alone) they pass again; raw's MOAT-PREROUTING sees only the
// sources of the early lists (banned ones), so there ip6tables-save
// says. Here the drift check finds the hand rule first and the edit
// rewrites every chain (Full); ipt's TestKernelOnlyChangedHandChanges
// holds the hashes alone to the same promise, without that check.
func TestIptablesHandRuleInUnchangedChain(t *testing.T) {
	t.Parallel()
	requireBackend(t, "iptables")
	for _, c := range []struct {
		name, save   string
		hand         []string
		probe        string
		moat, byHand string // the probe's outcome under moat's rules, and under the hand rule
		added        string
	}{
		{"output4", "iptables-save", []string{"iptables", "-I", "MOAT-OUTPUT", "1", "-p", "tcp", "--dport", "80", "-m", "comment", "--comment", "HAND", "-j", "DROP"},
			"server tcp 192.0.2.2:80", "open", "timeout", "client tcp 192.0.2.1:6000"},
		{"raw6", "ip6tables-save", []string{"ip6tables", "-t", "raw", "-I", "MOAT-PREROUTING", "1", "-s", "2001:db8:77::77", "-m", "comment", "--comment", "HAND", "-j", "DROP"},
			"", "", "", "client tcp [2001:db8::1]:6000"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, "iptables", false)
			e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\ndeny out 25/tcp\n")
			// An edit of MOAT-INPUT alone: the chains' hashes are kept.
			e.mustMoat("allow", "7000/tcp")
			if c.probe != "" {
				e.expect(false, c.probe+" "+c.moat)
			}
			e.expect(false, c.added+" timeout")
			e.run("server", c.hand...)
			if c.probe != "" {
				e.expect(false, c.probe+" "+c.byHand)
			}
			if !strings.Contains(e.run("server", c.save), "HAND") {
				t.Fatalf("%s: the hand rule is not there", c.name)
			}
			out := e.mustMoat("allow", "6000/tcp")
			if !strings.Contains(out, "changed outside moat") {
				t.Errorf("an edit after a rule was put by hand into %s does not say so:\n%s", c.name, out)
			}
			if c.probe != "" {
				e.expect(false, c.probe+" "+c.moat)
			}
			e.expect(false, c.added+" open")
			if save := e.run("server", c.save); strings.Contains(save, "HAND") {
				t.Errorf("%s: the hand rule is left after the edit:\n%s", c.name, save)
			}
			e.expectStatusClean("status after the rewrite")
		})
	}
}
