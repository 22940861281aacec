package e2e

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// A port list of moat's nftables rules is an anonymous set bound to its
// rule: a rule replaced by hand with the same matches, comment and verdict
// but another list (8080 out, 3306 in) is a change outside moat. Its
// set's elements were in no rule body, so neither the fingerprint nor the
// comparison with a scratch load saw it: status said nothing, and an
// edit that did not write the input chain kept 3306 open and 8080 closed.
// On iptables the list is multiport's, in the rule's text.
func TestHandChangedPortList(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\nallow 80,443,8080/tcp\n")
		e.expect(false, "client tcp 192.0.2.1:8080 open", "client tcp 192.0.2.1:3306 timeout")
		if b == "nftables" {
			list := e.run("server", "nft", "-a", "list", "chain", "inet", "moat", "input")
			m := regexp.MustCompile(`tcp dport \{ 80, 443, 8080 \}.*comment "(\w+)" # handle (\d+)`).FindStringSubmatch(list)
			if m == nil {
				t.Fatalf("no port list rule in:\n%s", list)
			}
			e.run("server", "nft", "replace", "rule", "inet", "moat", "input", "handle", m[2],
				"tcp", "dport", "{ 80, 443, 3306 }", "counter", "accept", "comment", `"`+m[1]+`"`)
		} else {
			n := 0
			for i, line := range strings.Split(e.run("server", "iptables", "-S", "MOAT-INPUT"), "\n") {
				if strings.Contains(line, "--dports 80,443,8080") {
					n = i // line 0 is the chain's -N
				}
			}
			if n == 0 {
				t.Fatal("no port list rule in MOAT-INPUT")
			}
			e.run("server", "iptables", "-R", "MOAT-INPUT", strconv.Itoa(n), "-p", "tcp", "-m", "multiport", "--dports", "80,443,3306",
				"-m", "comment", "--comment", "L3", "-j", "RETURN")
		}
		// refused: the port passed the firewall, and nothing listens there.
		e.expect(false, "client tcp 192.0.2.1:8080 timeout", "client tcp 192.0.2.1:3306 refused")
		if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
			t.Errorf("status does not see the port list changed by hand:\n%s", out)
		}
		// An edit that does not write the input rules (an outgoing rule)
		// finds the drift and rewrites them.
		e.mustMoat("deny", "out", "25/tcp")
		e.expect(false, "client tcp 192.0.2.1:8080 open", "client tcp 192.0.2.1:3306 timeout")
	})
}
