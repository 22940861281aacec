package e2e

import (
	"regexp"
	"strings"
	"testing"
)

// An address swapped by hand in one of moat's policy ipsets (one added,
// one deleted: the set's entry count stays) is a change outside moat: the
// fingerprint recorded after the apply must not vouch for it.
func TestHandSwappedSetElement(t *testing.T) {
	t.Parallel()
	b := "iptables"
	requireBackend(t, b)
	e := newEnv(t, b, false)
	e.apply("default allow incoming\ndeny from 192.0.2.3\ndeny from 192.0.2.4\ndeny from 2001:db8::3\ndeny from 2001:db8::4\n")
	for prog, addrs := range map[string][2]string{"iptables-save": {"192.0.2.2", "192.0.2.3"}, "ip6tables-save": {"2001:db8::2", "2001:db8::3"}} {
		set := regexp.MustCompile(`--match-set (moat-\S+) src -m comment --comment "set:`).FindStringSubmatch(e.run("server", prog, "-t", "filter"))
		if set == nil {
			t.Fatal("no set rule in moat's chains")
		}
		e.run("server", "ipset", "add", set[1], addrs[0])
		e.run("server", "ipset", "del", set[1], addrs[1])
	}
	e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 timeout", "client/192.0.2.3 tcp 192.0.2.1:80 open")
	out := e.mustMoat("status")
	if !strings.Contains(out, "changed outside moat") {
		t.Errorf("status after an address was swapped by hand does not say so:\n%s", out)
	}
	if out := e.mustMoat("reload"); !strings.Contains(out, "rewrites moat's rules whole") {
		t.Errorf("reload does not repair:\n%s", out)
	}
	e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 open", "client/192.0.2.3 tcp 192.0.2.1:80 timeout",
		"client/2001:db8::2 tcp [2001:db8::1]:80 open", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
}
