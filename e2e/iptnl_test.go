package e2e

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// udataComments counts the rules of moat's input chain of both families
// whose comment is in the rule's user data (nft lists it as `comment
// "..."`), as moat writes them over netlink; iptables-restore writes the
// compat comment match, which nft does not list.
func udataComments(e *env) int {
	e.t.Helper()
	n := 0
	for _, fam := range []string{"ip", "ip6"} {
		n += strings.Count(e.run("server", "nft", "list", "chain", fam, "filter", "MOAT-INPUT"), ` comment "`)
	}
	return n
}

// On iptables-nft a rule change (and the first enable) is written by
// moat over netlink, both families in one transaction: the rules then
// carry their comments in user data, which only moat's own transaction
// writes (iptables-restore writes the compat match). Real packets on
// both families, before and after; status clean; iptables-save lists
// the rules as iptables-restore would ('explain'-style text intact).
func TestIptablesRulesOverNetlink(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	if n := udataComments(e); n == 0 {
		t.Error("the first enable wrote no rule over netlink")
	}
	e.expect(false, "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:8080 timeout", "client tcp [2001:db8::1]:8080 timeout")
	e.mustMoat("allow", "8080/tcp")
	e.expect(false, "client tcp 192.0.2.1:8080 open", "client tcp [2001:db8::1]:8080 open", "client tcp 192.0.2.1:8081 timeout")
	for _, prog := range []string{"iptables-save", "ip6tables-save"} {
		if out := e.run("server", prog, "-t", "filter"); !strings.Contains(out, "-A MOAT-INPUT -p tcp -m tcp --dport 8080 -m comment --comment ") {
			t.Errorf("%s does not list the rule as iptables-restore writes it:\n%s", prog, out)
		}
	}
	for _, fam := range []string{"ip", "ip6"} {
		if out := e.run("server", "nft", "list", "chain", fam, "filter", "MOAT-INPUT"); !strings.Contains(out, `tcp dport 8080 counter packets`) || !strings.Contains(out, `return comment "`) {
			t.Errorf("%s MOAT-INPUT: the new rule not written over netlink:\n%s", fam, out)
		}
	}
	e.expectStatusClean("after a change over netlink")
	e.mustMoat("delete", "allow", "8080/tcp")
	e.expect(false, "client tcp 192.0.2.1:8080 timeout", "client tcp [2001:db8::1]:8080 timeout", "client tcp 192.0.2.1:22 open")
	e.expectStatusClean("after a second change over netlink")
}

// With a wrapper on the PATH in place of iptables-nft's own restore
// (which moat cannot know to be one), the change goes through the
// restores whole, as before: the rewritten chains carry the compat
// comment again, packets and status are right, and the next change
// without the wrapper goes over netlink again.
func TestIptablesRulesRestoreFallback(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	bin := t.TempDir()
	for _, prog := range []string{"iptables-restore", "ip6tables-restore"} {
		real, err := exec.LookPath(prog)
		if err != nil {
			t.Fatal(err)
		}
		script := "#!/bin/sh\ntouch " + filepath.Join(bin, "ran-"+prog) + "\nexec " + real + " \"$@\"\n"
		writeFile(t, filepath.Join(bin, prog), script)
		if err := os.Chmod(filepath.Join(bin, prog), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.moatWith(bin, "allow", "8080/tcp")
	for _, prog := range []string{"iptables-restore", "ip6tables-restore"} {
		if _, err := os.Stat(filepath.Join(bin, "ran-"+prog)); err != nil {
			t.Errorf("the change ran no %s", prog)
		}
	}
	if n := udataComments(e); n != 0 {
		t.Errorf("%d rules of MOAT-INPUT written over netlink with a wrapper on the PATH", n)
	}
	e.expect(false, "client tcp 192.0.2.1:8080 open", "client tcp [2001:db8::1]:8080 open", "client tcp 192.0.2.1:8081 timeout")
	e.expectStatusClean("after a change through the restores")
	e.mustMoat("allow", "443/tcp")
	if n := udataComments(e); n == 0 {
		t.Error("the change without the wrapper was not written over netlink")
	}
	e.expect(false, "client tcp 192.0.2.1:443 open", "client tcp [2001:db8::1]:443 open", "client tcp 192.0.2.1:8080 open")
	e.expectStatusClean("after a change over netlink")
}

// A rule change on iptables-nft killed with SIGKILL at any point leaves
// both families wholly the old rules or wholly the new ones, never one
// family of each (one transaction; the restores, one per family, could
// be cut between them, which Split reported and the next run repaired).
// A change of rules alone (no set touched): nothing is reported split
// either. The next run then loads the new rules, and real packets prove
// them.
func TestIptablesKillDuringRuleChange(t *testing.T) {
	e := onBackend(t, "iptables")
	ctx := context.Background()
	view, split := viewOf("iptables", e.topo.Server)
	policies := []string{"default deny incoming\nallow 22/tcp\nallow 443/tcp\n", "default deny incoming\nallow 22/tcp\nallow 80/tcp\nreject 8080/tcp\n"}
	fps := make([]string, 2)
	var change time.Duration
	for i, p := range policies {
		e.apply(p)
		start := time.Now()
		e.mustMoat("enable", "--force") // the same again: a rewrite's time
		change = time.Since(start)
		fp, err := view.Fingerprint(ctx)
		if err != nil || fp == "" {
			t.Fatalf("fingerprint: %q %v", fp, err)
		}
		fps[i] = fp
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	cur, counts := 1, map[string]int{}
	for k := 0; k < 20; k++ {
		next := 1 - cur
		writeFile(t, e.conf, policies[next])
		delay := time.Duration(rng.Int64N(int64(change) * 6 / 5))
		exited := e.killMoatAfter(delay, "enable", "--force")
		fp, err := view.Fingerprint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case fp == fps[next]:
			counts["new"]++
			cur = next
		case exited:
			t.Fatalf("kill %d: moat finished but the kernel does not hold the new rules:\n%s", k, e.moatKernel())
		case fp == fps[cur]:
			counts["old"]++
		default:
			s, _ := split(ctx)
			t.Fatalf("kill %d after %v: neither the old nor the new rules (split: %q):\n%s", k, delay, s, e.moatKernel())
		}
		if s, err := split(ctx); err != nil || s != "" {
			t.Fatalf("kill %d after %v: %q (%v)", k, delay, s, err)
		}
	}
	t.Logf("20 kills: %v (a rewrite took %v)", counts, change)
	writeFile(t, e.conf, policies[1])
	e.mustMoat("enable", "--force")
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open",
		"client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout", "client tcp 192.0.2.1:22 open")
	e.expectStatusClean("after the kills and a run")
}

// A built-in chain replaced by hand with a regular chain of its name
// (nft delete chain ip filter INPUT; nft add chain ip filter INPUT),
// which no packet goes through: moat must not put its jump there and
// call itself active. The change went over netlink, said nothing, and
// the status was clean while IPv4 took every port; now it goes through
// iptables-restore, which refuses the chain (as it did before the
// netlink path): the command fails, and IPv6, whose INPUT is iptables'
// own, still filters.
func TestIptablesBuiltinReplacedByRegularChain(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	e.expect(false, "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:8080 timeout", "client tcp [2001:db8::1]:8080 timeout")
	e.run("server", "nft", "flush", "chain", "ip", "filter", "INPUT")
	e.run("server", "nft", "delete", "chain", "ip", "filter", "INPUT")
	e.run("server", "nft", "add", "chain", "ip", "filter", "INPUT")
	for _, args := range [][]string{{"reload"}, {"allow", "80/tcp"}} {
		if out, err := e.moat(args...); err == nil {
			t.Errorf("moat %v over a regular chain INPUT succeeded:\n%s\n%s", args, out, e.run("server", "nft", "list", "table", "ip", "filter"))
		} else if !strings.Contains(out, "ip filter INPUT: a regular chain") || !strings.Contains(out, "nft delete chain ip filter INPUT") {
			t.Errorf("moat %v does not say which chain iptables-restore refused and what to do:\n%s", args, out)
		}
	}
	if out := e.run("server", "nft", "list", "chain", "ip", "filter", "INPUT"); strings.Contains(out, "MOAT-INPUT") {
		t.Errorf("moat's jump in a chain no packet goes through:\n%s", out)
	}
	if st, _ := e.moat("status"); !strings.Contains(st, "INPUT no longer jumps to MOAT-INPUT") {
		t.Errorf("status does not say that IPv4's INPUT does not reach moat:\n%s", st)
	}
	e.expect(false, "client tcp [2001:db8::1]:8080 timeout", "client tcp [2001:db8::1]:22 open")
}
