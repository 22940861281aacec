package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// compatComments counts the rules of moat's chains (both families, filter
// and raw; MOAT-GEN aside) whose comment is the compat match iptables-restore writes (a
// call on every packet that reaches it) rather than user data.
func compatComments(e *env) int {
	e.t.Helper()
	n := 0
	for _, fam := range []string{"ip", "ip6"} {
		for _, table := range []string{"filter", "raw"} {
			out := e.run("server", "nft", "-j", "list", "table", fam, table)
			for _, rule := range strings.Split(out, `{"rule": `)[1:] {
				// MOAT-GEN's record keeps the compat match (nothing
				// jumps to it: no packet reaches it).
				if strings.Contains(rule, `"chain": "MOAT-`) && !strings.Contains(rule, `"chain": "MOAT-GEN"`) && strings.Contains(rule, `{"xt": {"type": "match", "name": "comment"}}`) {
					n++
				}
			}
		}
	}
	return n
}

// Rules written by iptables-restore (a fallback: here a wrapper on the
// PATH, which moat cannot know to be iptables-nft's own tool) carry the
// compat comment match; the netlink path puts comments in user data.
// The next ordinary edit over netlink rewrote only the chains whose
// rules changed, judged by what moat's own scripts last wrote into
// them, so the chains the restore wrote kept the compat match for good
// (MOAT-OUTPUT, MOAT-FORWARD, the raw chain: until their rules change).
// Now a chain a restore wrote is rewritten by the next change over
// netlink (an edit, or 'moat reload'): every rule of moat's then has its comment in user data, and
// packets and status are right.
func TestIptablesRestoredRulesConverge(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\nallow out 53/udp\n")
	if n := compatComments(e); n != 0 {
		t.Fatalf("%d compat comments after an enable over netlink", n)
	}
	bin := t.TempDir()
	for _, prog := range []string{"iptables-restore", "ip6tables-restore"} {
		real, err := exec.LookPath(prog)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(bin, prog), "#!/bin/sh\nexec "+real+" \"$@\"\n")
		if err := os.Chmod(filepath.Join(bin, prog), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.moatWith(bin, "allow", "8080/tcp")
	if n := compatComments(e); n == 0 {
		t.Fatal("the change through the restores wrote no compat comment: the test proves nothing")
	}
	e.mustMoat("allow", "443/tcp")
	if n := compatComments(e); n != 0 {
		t.Errorf("%d rules of moat's still carry the compat comment after a change over netlink", n)
	}
	e.expect(false, "client tcp 192.0.2.1:443 open", "client tcp [2001:db8::1]:443 open", "client tcp 192.0.2.1:8080 open", "client tcp 192.0.2.1:8081 timeout")
	e.expectStatusClean("after the change over netlink")
	// moat reload (a whole rewrite) over netlink too.
	e.moatWith(bin, "allow", "8443/tcp")
	if n := compatComments(e); n == 0 {
		t.Fatal("the second change through the restores wrote no compat comment")
	}
	e.mustMoat("reload")
	if n := compatComments(e); n != 0 {
		t.Errorf("%d rules of moat's still carry the compat comment after 'moat reload'", n)
	}
	e.expect(false, "client tcp 192.0.2.1:8443 refused", "client tcp [2001:db8::1]:8443 refused", "client tcp 192.0.2.1:8081 timeout")
	e.expectStatusClean("after reload")
	// Converged: a reload again writes nothing (the same rule handles).
	handles := func() string {
		return e.run("server", "nft", "-a", "list", "table", "ip", "filter") + e.run("server", "nft", "-a", "list", "table", "ip6", "raw")
	}
	h := handles()
	e.mustMoat("reload")
	if handles() != h {
		t.Error("a reload of converged rules wrote them again")
	}
}
