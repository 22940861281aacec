package e2e

import (
	"strings"
	"testing"
)

// A command that finds moat's rules changed by hand rewrites them whole:
// its message must name every difference it erases. It named the first
// alone, so a rule accepting a source in IPv6 (or in another chain),
// put in beside one in IPv4, was gone without a word: the message spoke
// of the other, and status after the rewrite had nothing left to show.
func TestDriftMessageNamesEveryChange(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\n")
		if b == "nftables" {
			e.run("server", "nft", "insert", "rule", "inet", "moat", "input", "ip", "saddr", "198.51.100.7", "accept", "comment", `"handfour"`)
			e.run("server", "nft", "insert", "rule", "inet", "moat", "output", "ip6", "daddr", "2001:db8::7", "accept", "comment", `"handsix"`)
		} else {
			e.run("server", "iptables", "-I", "MOAT-INPUT", "3", "-s", "198.51.100.7", "-m", "comment", "--comment", "handfour", "-j", "ACCEPT")
			e.run("server", "ip6tables", "-I", "MOAT-INPUT", "3", "-s", "2001:db8::7", "-m", "comment", "--comment", "handsix", "-j", "ACCEPT")
		}
		out := e.mustMoat("allow", "80/tcp")
		if !strings.Contains(out, "changed outside moat") || !strings.Contains(out, "handfour") || !strings.Contains(out, "handsix") {
			t.Errorf("the edit that rewrote moat's rules does not name both rules put in by hand:\n%s", out)
		}
		e.expectStatusClean("after the rewrite")
	})
}
