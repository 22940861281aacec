package e2e

import (
	"os"
	"strings"
	"testing"
)

// The README's own sample: 'allow 22/tcp' then 'limit ssh'. As ufw, the
// second command updates the first rule in place, and the limit really
// refuses a source's sixth quick connection (IPv4 and IPv6), counted by the
// kernel. Before, the limit came after the allow and never matched.
func TestLimitUpdatesAllow(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp   # admins\nallow 80/tcp\n")
		out := e.mustMoat("limit", "ssh")
		if !strings.Contains(out, "Rule updated (rule 1): allow 22/tcp -> limit ssh") {
			t.Errorf("limit ssh after allow 22/tcp:\n%s", out)
		}
		if data, _ := os.ReadFile(e.conf); string(data) != "default deny incoming\nlimit ssh   # admins\nallow 80/tcp\n" {
			t.Errorf("policy file after the update:\n%s", data)
		}
		if out := e.mustMoat("limit", "22/tcp"); !strings.Contains(out, "Skipping adding existing rule (rule 1)") {
			t.Errorf("the same limit again:\n%s", out)
		}
		e.expect(true,
			"client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 open",
			"client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 refused",
			"client tcp 192.0.2.1:22 refused",
			"client tcp [2001:db8::1]:22 open", "client tcp [2001:db8::1]:22 open", "client tcp [2001:db8::1]:22 open",
			"client tcp [2001:db8::1]:22 open", "client tcp [2001:db8::1]:22 open", "client tcp [2001:db8::1]:22 refused",
			"client tcp 192.0.2.1:80 open")
		if n := e.counter(1); n == 0 {
			t.Errorf("the limit rule's counter is 0 after 13 connections")
		}
		// Back to a plain allow: updated again, and no limit any more.
		if out := e.mustMoat("allow", "22/tcp"); !strings.Contains(out, "Rule updated (rule 1): limit ssh -> allow 22/tcp") {
			t.Errorf("allow after limit:\n%s", out)
		}
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:22 open")
		e.expect(true, "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 open")
	})
}

// A rule that an earlier one fully covers is named, with the line that
// covers it, by check and by every apply (enable, reload, rule commands),
// for every action and both families; a rule that still matches something
// is not.
func TestCoveredRulesWarned(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		policy := "default deny incoming\n" + // 1
			"allow 22/tcp\n" + // 2
			"limit ssh rate 3/60s\n" + // 3: never matches
			"deny from 2001:db8::/32\n" + // 4
			"allow from 2001:db8::3 to any port 80 proto tcp\n" + // 5: never matches
			"allow 6000:6007/tcp\n" + // 6
			"reject from 192.0.2.3 to any port 6003 proto tcp\n" + // 7: never matches
			"allow from 192.0.2.3 to any port 6007 proto udp\n" // 8: matches (udp)
		writeFile(t, e.conf, policy)
		want := []string{
			e.conf + ":3: 'limit ssh rate 3/60s' never matches: line 2 'allow 22/tcp'",
			e.conf + ":5: 'allow from 2001:db8::3 to any port 80 proto tcp' never matches: line 4 'deny from 2001:db8::/32'",
			e.conf + ":7: 'reject from 192.0.2.3 to any port 6003 proto tcp' never matches: line 6 'allow 6000:6007/tcp'",
		}
		for _, args := range [][]string{{"check"}, {"enable"}, {"reload"}, {"allow", "443/tcp"}} {
			out := e.mustMoat(args...)
			for _, w := range want {
				if !strings.Contains(out, "moat: warning: "+w) {
					t.Errorf("moat %v does not warn %q:\n%s", args, w, out)
				}
			}
			if strings.Contains(out, ":8:") || strings.Count(out, "never matches") != len(want) {
				t.Errorf("moat %v warns about a rule that matches:\n%s", args, out)
			}
		}
		// What the warnings say is what the kernel does.
		e.expect(true, "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 open",
			"client tcp 192.0.2.1:22 open")
		e.expect(false, "client/2001:db8::3 tcp [2001:db8::1]:80 timeout", "client/192.0.2.3 tcp 192.0.2.1:6003 open",
			"client/192.0.2.3 udp 192.0.2.1:6007 open")
	})
}
