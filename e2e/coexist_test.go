package e2e

import (
	"context"
	"strings"
	"testing"
)

// foreign rules another tool (Docker, libvirt, an admin) put in place.
const foreignNft = `table inet foreign {
	chain input {
		type filter hook input priority 10; policy accept;
		tcp dport 8080 counter drop comment "foreign rule"
	}
}
`

func (e *env) run(ns string, args ...string) string {
	e.t.Helper()
	out, err := e.ns(ns).Run(context.Background(), args[0], args[1:]...)
	if err != nil {
		e.t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

// snapshot is everything of the firewall that moat does not own.
func (e *env) foreignState() string {
	e.t.Helper()
	nft := e.run("server", "nft", "-s", "list", "table", "inet", "foreign") // -s: without counters
	var ipt []string
	for _, prog := range []string{"iptables-save", "ip6tables-save"} {
		for _, line := range strings.Split(e.run("server", prog, "-t", "filter"), "\n") {
			if strings.Contains(line, "FOREIGN") {
				ipt = append(ipt, line)
			}
		}
	}
	sets := e.run("server", "ipset", "list", "foreign-set")
	return nft + strings.Join(ipt, "\n") + "\n" + sets
}

func TestCoexistence(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		nftFile := e.dir + "/foreign.nft"
		writeFile(t, nftFile, foreignNft)
		e.run("server", "nft", "-f", nftFile)
		for _, prog := range []string{"iptables", "ip6tables"} {
			e.run("server", prog, "-N", "FOREIGN")
			e.run("server", prog, "-A", "FOREIGN", "-p", "tcp", "--dport", "6007", "-j", "DROP")
			e.run("server", prog, "-A", "INPUT", "-j", "FOREIGN")
		}
		e.run("server", "ipset", "create", "foreign-set", "hash:ip")
		e.run("server", "ipset", "add", "foreign-set", "192.0.2.99")
		before := e.foreignState()

		steps := []struct {
			what string
			do   func()
		}{
			{"apply", func() { e.apply("default allow incoming\nallow 8080/tcp\ndeny from 192.0.2.3\ndeny from 192.0.2.4\n") }},
			{"re-apply", func() { e.apply("default deny incoming\nallow 8080/tcp\nallow 6007/tcp\nallow 22/tcp\n") }},
			{"disable", func() { e.mustMoat("disable") }},
			{"enable", func() { e.mustMoat("enable") }},
			{"reset", func() { e.mustMoat("reset", "--force") }},
		}
		for _, s := range steps {
			s.do()
			if after := e.foreignState(); after != before {
				t.Fatalf("after %s, foreign rules changed:\nbefore:\n%s\nafter:\n%s", s.what, before, after)
			}
			if s.what == "re-apply" {
				// moat allows 8080 and 6007, but the foreign drops still
				// decide: moat only adds its own verdicts.
				e.expect(false, "client tcp 192.0.2.1:8080 timeout", "client tcp 192.0.2.1:6007 timeout",
					"client tcp [2001:db8::1]:6007 timeout", "client tcp 192.0.2.1:22 open")
			}
		}
		// After reset moat is gone: only the foreign drops remain.
		e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:8080 timeout", "client tcp [2001:db8::1]:6007 timeout")
		if out := e.run("server", "nft", "list", "tables"); strings.Contains(out, "moat") {
			t.Errorf("moat's table left after reset:\n%s", out)
		}
		if out := e.run("server", "iptables-save"); strings.Contains(out, "MOAT-") {
			t.Errorf("moat's chains left after reset:\n%s", out)
		}
	})
}
