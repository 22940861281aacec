package e2e

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// withoutLoginSets makes moat's rules in the server's kernel those of a
// moat before the port scan trap's login sets (an upgrade): the rules
// that use them, and the sets, are taken out.
func (e *env) withoutLoginSets(backend string) {
	e.t.Helper()
	if backend == "nftables" {
		handle := regexp.MustCompile(`# handle (\d+)$`)
		chain := ""
		for _, l := range strings.Split(e.run("server", "nft", "-a", "list", "table", "inet", "moat"), "\n") {
			l = strings.TrimSpace(l)
			if c, ok := strings.CutPrefix(l, "chain "); ok {
				chain, _, _ = strings.Cut(c, " ")
				continue
			}
			if m := handle.FindStringSubmatch(l); m != nil && strings.Contains(l, "login") && !strings.HasPrefix(l, "set ") {
				e.run("server", "nft", "delete", "rule", "inet", "moat", chain, "handle", m[1])
			}
		}
		e.run("server", "nft", "delete", "set", "inet", "moat", "login4")
		e.run("server", "nft", "delete", "set", "inet", "moat", "login6")
		return
	}
	for _, f := range []string{"iptables", "ip6tables"} {
		var keep []byte
		for _, l := range strings.Split(e.run("server", f+"-save"), "\n") {
			if !strings.Contains(l, "login") {
				keep = append(keep, l+"\n"...)
			}
		}
		if err := e.topo.Server.Do(func() error {
			c := exec.Command(f + "-restore")
			c.Stdin = bytes.NewReader(keep)
			if out, err := c.CombinedOutput(); err != nil {
				return fmt.Errorf("%s-restore: %v: %s", f, err, out)
			}
			return nil
		}); err != nil {
			e.t.Fatal(err)
		}
	}
	e.run("server", "ipset", "destroy", "moat-login4")
	e.run("server", "ipset", "destroy", "moat-login6")
}

// A change of backend to rules with the port scan trap, from rules
// without its login sets (a moat from before them: an upgrade), read the
// old backend's login sets to carry their exemptions, found no sets, and
// warned "cannot read the port scan trap's login exemptions ...: they are
// lost" of exemptions that never were. No login sets is none to carry:
// nothing is said (a read that fails is still said:
// TestLoginsReadFailureSaid). Both directions.
func TestBackendSwitchNoLoginSetsNoWarning(t *testing.T) {
	eachBackendSwitch(t, func(t *testing.T, from, to string) {
		e := newEnv(t, from, false)
		e.apply("default deny incoming\nallow 80/tcp\nguard portscan ports 10 within 60s bantime 1h\n")
		e.withoutLoginSets(from)
		e.backend = to
		out := e.mustMoat("enable")
		if !strings.Contains(out, "Backend changed") {
			t.Fatalf("no change of backend:\n%s", out)
		}
		if strings.Contains(out, "login exemptions") {
			t.Errorf("a warning about login sets the old rules never had:\n%s", out)
		}
		e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open")
		e.expectStatusClean("status after the switch")
	})
}
