package e2e

import (
	"os"
	"path/filepath"
	"regexp"
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

// The covered-rule search keeps its result for the address rules between
// commands (covered-rules.cache): a port rule added or deleted after them
// warns exactly as before; lines among them changed by hand between two
// commands are searched again (a new cover named while the one kept
// still holds, then a cover gone); a cache file spoiled by hand is not
// used.
func TestCoveredRulesKeptBetweenEdits(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		policy := "default deny incoming\n" + // 1
			"allow 22/tcp\n" + // 2
			"deny from 198.51.100.0/24\n" + // 3
			"deny from 198.51.100.7\n" + // 4: never matches
			"deny from 2001:db8:1::/48\n" + // 5
			"deny from 2001:db8:2::5\n" // 6
		writeFile(t, e.conf, policy)
		line4 := e.conf + ":4: 'deny from 198.51.100.7' never matches: line 3 'deny from 198.51.100.0/24'"
		line6 := e.conf + ":6: 'deny from 2001:db8::/32' never matches: line 5 'deny from 2001:db8::/31'"
		check := func(out string, want ...string) {
			t.Helper()
			for _, w := range want {
				if !strings.Contains(out, "moat: warning: "+w) {
					t.Errorf("no warning %q:\n%s", w, out)
				}
			}
			if n := strings.Count(out, "never matches"); n != len(want) {
				t.Errorf("%d warnings, want %d:\n%s", n, len(want), out)
			}
		}
		cache := filepath.Join(e.stateDir(), "covered-rules.cache")
		check(e.mustMoat("enable"), line4)
		if _, err := os.Stat(cache); err != nil {
			t.Fatalf("no cache of the covered rules: %v", err)
		}
		check(e.mustMoat("allow", "443/tcp"), line4)
		check(e.mustMoat("delete", "allow", "443/tcp"), line4)
		// By hand: line 6 is now covered too.
		edit := func(from, to string) {
			t.Helper()
			data, err := os.ReadFile(e.conf)
			if err != nil || !strings.Contains(string(data), from) {
				t.Fatalf("%s: %v, or no %q", e.conf, err, from)
			}
			writeFile(t, e.conf, strings.Replace(string(data), from, to, 1))
		}
		edit("deny from 2001:db8:1::/48\ndeny from 2001:db8:2::5", "deny from 2001:db8::/31\ndeny from 2001:db8::/32")
		check(e.mustMoat("allow", "443/tcp"), line4, line6)
		check(e.mustMoat("delete", "allow", "443/tcp"), line4, line6)
		// By hand: line 4 is no longer covered.
		edit("198.51.100.7", "203.0.113.7")
		check(e.mustMoat("allow", "443/tcp"), line6)
		check(e.mustMoat("delete", "allow", "443/tcp"), line6)
		// A cache that hides the covered rule, written by hand: the one
		// moat wrote, its pairs emptied and its MAC kept (all else holds:
		// the MAC alone refuses it).
		data, err := os.ReadFile(cache)
		if err != nil {
			t.Fatal(err)
		}
		forged := regexp.MustCompile(`"pairs":\[\[[0-9,\[\]]*\]\]`).ReplaceAllString(string(data), `"pairs":[]`)
		if forged == string(data) {
			t.Fatalf("no covered rule in the cache: %s", data)
		}
		writeFile(t, cache, forged)
		check(e.mustMoat("allow", "443/tcp"), line6)
		check(e.mustMoat("delete", "allow", "443/tcp"), line6)
	})
}
