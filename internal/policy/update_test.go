package policy

import (
	"strings"
	"testing"
)

func TestFindMatchAndReplace(t *testing.T) {
	svc := ParseServices([]byte("ssh 22/tcp\nhttp 80/tcp\n"))
	d := NewDocument("moat.conf", []byte("# admins\n  allow 22/tcp   # keep me\nallow 80/tcp\n"))
	parse := func(s string) Rule { return argsRule(t, s, svc, nil) }
	for _, c := range []struct {
		rule string
		want int
	}{
		{"limit ssh", 1}, {"deny 22/tcp", 1}, {"allow proto tcp from any to any port 22", 1}, {"limit 22", 0},
		{"allow 22/udp", 0}, {"allow in on eth0 to any port 22 proto tcp", 0}, {"reject http", 2}, {"allow 80", 0},
	} {
		if n, _ := d.FindMatch(parse(c.rule), svc); n != c.want {
			t.Errorf("FindMatch(%q) = %d, want %d", c.rule, n, c.want)
		}
	}
	old, err := d.ReplaceRule(1, "limit ssh")
	if err != nil || old != "allow 22/tcp" {
		t.Fatalf("ReplaceRule: %q %v", old, err)
	}
	if got := string(d.Bytes()); got != "# admins\n  limit ssh   # keep me\nallow 80/tcp\n" {
		t.Errorf("after ReplaceRule:\n%s", got)
	}
	if _, err := d.ReplaceRule(3, "allow 1/tcp"); err == nil {
		t.Error("ReplaceRule(3) of 2 rules succeeded")
	}
}

// TestFindMatchApps: as ufw, a rule naming an application profile is
// another rule than the same ports written as ports: 'limit ssh' then
// 'allow OpenSSH' adds the profile's rule (ufw lists '22/tcp (OpenSSH)'
// apart) instead of replacing, and so losing, the rate limit; the same
// profile again updates it.
func TestFindMatchApps(t *testing.T) {
	svc := ParseServices([]byte("ssh 22/tcp\n"))
	apps := AppsFromPorts(map[string]string{"OpenSSH": "22/tcp"})
	d := NewDocument("moat.conf", []byte("limit ssh\nallow from 192.0.2.0/24 to any app OpenSSH\nallow OpenSSH\n"))
	d.Apps = apps
	parse := func(s string) Rule { return argsRule(t, s, svc, apps) }
	for _, c := range []struct {
		rule string
		want int
	}{
		{"allow 22/tcp", 1}, {"limit OpenSSH", 3}, {"deny from 192.0.2.0/24 to any app OpenSSH", 2},
		{"allow from 192.0.2.0/24 to any port 22 proto tcp", 0},
	} {
		if n, _ := d.FindMatch(parse(c.rule), svc); n != c.want {
			t.Errorf("FindMatch(%q) = %d, want %d", c.rule, n, c.want)
		}
	}
	d = NewDocument("moat.conf", []byte("limit ssh\n"))
	d.Apps = apps
	if n, _ := d.FindMatch(parse("allow OpenSSH"), svc); n != 0 {
		t.Errorf("FindMatch(allow OpenSSH) = %d in a policy of 'limit ssh', want 0 (a rule of its own, as ufw)", n)
	}
}

// TestFindRuleUnsaidComment: as ufw's 'delete', a rule given without a
// comment finds the rule that has one, when none is equal; one given with
// a comment finds only that comment ('delete allow 2222/tcp' said "could
// not delete non-existent rule" for 'allow 2222/tcp comment admin').
func TestFindRuleUnsaidComment(t *testing.T) {
	svc := ParseServices([]byte("ssh 22/tcp\n"))
	d := NewDocument("moat.conf", []byte("allow 80/tcp\nallow 2222/tcp comment 'admin'\nlimit ssh rate 10/60s\nallow 443/tcp comment 'a'\nallow 443/tcp\n"))
	parse := func(s string) Rule { return argsRule(t, s, svc, nil) }
	for rule, want := range map[string]int{
		"allow 2222/tcp": 2, "allow 2222/tcp comment other": 0, "allow 2222/tcp comment admin": 2,
		"limit 22/tcp rate 10/60s": 3, "limit ssh rate 6/30s": 0, "allow ssh": 0,
		"allow 443/tcp": 5, // the equal rule before the one with a comment
		"deny 2222/tcp": 0, "allow 80/tcp": 1,
	} {
		if got := d.FindRule(parse(rule), svc); got != want {
			t.Errorf("FindRule(%q) = %d, want %d", rule, got, want)
		}
	}
}

// argsRule is the rule of the command-line words in s (as 'moat allow
// ...' reads them), with svc and apps.
func argsRule(t *testing.T, s string, svc Services, apps Apps) Rule {
	t.Helper()
	st, err := ParseStatementApps(ArgsTokens(strings.Fields(s)), Pos{}, svc, apps)
	if err != nil {
		t.Fatal(err)
	}
	return st.Rule
}
