package e2e

import (
	"regexp"
	"strings"
	"testing"

	gnft "github.com/google/nftables"
)

// TestIptablesOddChainNames: a chain made over netlink in ip filter under
// a name holding a newline is printed by iptables-save as lines of its
// own. Here the name holds the text of a rule of moat's that was deleted
// by hand: read as text, the rule looks present. status must report the
// chain (escaped) and the drift, and 'moat reload' must remove the chain
// and put the rule back (real packets). Before, status said nothing of
// the rule (or reported a rule of MOAT-INPUT that does not exist), and
// reload "succeeded" and left the chain.
func TestIptablesOddChainNames(t *testing.T) {
	e := newEnv(t, "iptables", false)
	e.apply("default deny incoming\nallow 22/tcp\nallow 8080/tcp\n")
	e.expect(false, "client tcp 192.0.2.1:8080 open")
	var rule string
	for _, line := range strings.Split(e.run("server", "iptables-save", "-t", "filter"), "\n") {
		if strings.HasPrefix(line, "-A MOAT-INPUT") && strings.Contains(line, "--dport 8080") {
			rule = line
		}
	}
	if rule == "" {
		t.Fatal("no rule for 8080 in MOAT-INPUT")
	}
	e.run("server", append([]string{"iptables", "-D"}, strings.Fields(strings.TrimPrefix(strings.ReplaceAll(rule, `"`, ""), "-A "))...)...)
	e.expect(false, "client tcp 192.0.2.1:8080 timeout")
	name := "MOAT-X\n" + rule
	if err := e.ns("server").Do(func() error {
		c, err := gnft.New()
		if err != nil {
			return err
		}
		c.AddChain(&gnft.Chain{Name: name, Table: &gnft.Table{Name: "filter", Family: gnft.TableFamilyIPv4}})
		return c.Flush()
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.run("server", "iptables-save", "-t", "filter"), "\n"+rule+" - [0:0]") {
		t.Fatal("iptables-save does not print the forged line (the test proves nothing)")
	}
	out, _ := e.moat("status")
	if !strings.Contains(out, "changed outside moat") || !strings.Contains(out, `chain ip filter "MOAT-X\n-A MOAT-INPUT`) {
		t.Errorf("status does not name the chain added:\n%s", out)
	}
	if regexp.MustCompile(`(?m)^-A MOAT-INPUT`).MatchString(out) {
		t.Errorf("status printed the chain's name raw:\n%s", out)
	}
	e.mustMoat("reload")
	e.expect(false, "client tcp 192.0.2.1:8080 open")
	if save := e.run("server", "iptables-save", "-t", "filter"); strings.Contains(save, "MOAT-X") {
		t.Errorf("reload left the chain:\n%s", save)
	}
	e.expectStatusClean("after reload")
	// An edit (the drift check, then its change) removes one too.
	if err := e.ns("server").Do(func() error {
		c, err := gnft.New()
		if err != nil {
			return err
		}
		c.AddChain(&gnft.Chain{Name: "odd\n-A MOAT-INPUT -j ACCEPT", Table: &gnft.Table{Name: "filter", Family: gnft.TableFamilyIPv6}})
		return c.Flush()
	}); err != nil {
		t.Fatal(err)
	}
	e.mustMoat("allow", "443/tcp")
	e.expect(false, "client tcp 192.0.2.1:443 open", "client tcp [2001:db8::1]:443 open", "client tcp [2001:db8::1]:8081 timeout")
	if save := e.run("server", "ip6tables-save", "-t", "filter"); strings.Contains(save, "odd") {
		t.Errorf("an edit left the chain:\n%s", save)
	}
	e.expectStatusClean("after the edit")
}
