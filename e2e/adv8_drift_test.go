package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
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

// A command that finds moat's rules changed by hand rewrites them whole
// (the repair): a second rule put in by hand after that check (held at
// the journal's rename), before the rewrite, was erased in silence: no
// check vouched for the generation the repair wrote at, so it committed
// as it read, and the check after its commit found moat's rules as
// written. It must be named, or kept and reported by status.
func TestHandChangeDuringRepairNamed(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
		first := []string{"nft", "insert", "rule", "inet", "moat", "input", "tcp", "dport", "80", "drop", "comment", `"HANDA"`}
		second := []string{"nft", "insert", "rule", "inet", "moat", "input", "ip6", "saddr", "2001:db8::2", "accept", "comment", `"HANDB"`}
		if b == "iptables" {
			first = []string{"iptables", "-I", "MOAT-INPUT", "1", "-p", "tcp", "--dport", "80", "-m", "comment", "--comment", "HANDA", "-j", "DROP"}
			second = []string{"ip6tables", "-I", "MOAT-INPUT", "1", "-s", "2001:db8::2", "-m", "comment", "--comment", "HANDB", "-j", "ACCEPT"}
		}
		e.run("server", first...)
		out, err := e.heldMoat(filepath.Join(e.stateDir(), "intent.json"), "rename,renameat,renameat2", func() { e.run("server", second...) }, "allow", "8080/tcp")
		if err != nil {
			t.Fatalf("moat allow: %v\n%s", err, out)
		}
		if !strings.Contains(out, "HANDA") {
			t.Errorf("the first hand rule is not reported:\n%s", out)
		}
		e.expect(false, "client tcp 192.0.2.1:8080 open")
		if strings.Contains(out, "HANDB") {
			return // reported by the command
		}
		if status := e.mustMoat("status"); !strings.Contains(status, "HANDB") {
			t.Errorf("the rule put in by hand during the repair is gone unreported:\n%s\nstatus:\n%s", out, status)
		}
	})
}

// moat's rules removed outside moat whole (nft flush ruleset, which a
// restart of nftables.service runs): status said "Status: inactive" and
// nothing more, as after 'moat disable', though the policy was applied and
// saved for boot; an edit said the next apply rewrites moat's rules,
// and then that moat was inactive. Status must say the rules were removed
// outside moat, and 'moat enable' loads them again.
func TestRulesRemovedOutsideMoat(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\n")
		e.run("server", "nft", "flush", "ruleset")
		e.expect(false, "client tcp 192.0.2.1:80 open")
		status := e.mustMoat("status")
		if !strings.Contains(status, "Status: inactive") || !strings.Contains(status, "NOT IN THE KERNEL") || !strings.Contains(status, "removed outside moat") {
			t.Errorf("status does not say moat's rules were removed outside moat:\n%s", status)
		}
		if js := e.mustMoat("status", "--json"); !strings.Contains(js, `"rules_removed"`) || !strings.Contains(js, `"in_sync": false`) {
			t.Errorf("status --json:\n%s", js)
		}
		out := e.mustMoat("allow", "80/tcp")
		if strings.Contains(out, "the next apply rewrites") || !strings.Contains(out, "'moat enable' loads them again") {
			t.Errorf("the edit's message:\n%s", out)
		}
		e.mustMoat("enable")
		e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:25 timeout")
		if status := e.mustMoat("status"); strings.Contains(status, "NOT IN THE KERNEL") {
			t.Errorf("status after enable:\n%s", status)
		}
		e.mustMoat("disable")
		if status := e.mustMoat("status"); strings.Contains(status, "NOT IN THE KERNEL") {
			t.Errorf("status after disable:\n%s", status)
		}
	})
}

// A repair (an edit that finds moat's rules changed by hand and rewrites
// them whole) while another program commits all the time (a table made
// and deleted in a loop, as a busy Docker might): since the repair
// commits only where its check looked, the iptables repair (restores,
// which take long) was refused run after run and failed ('again and
// again (6 times): nothing was changed'), the hand rule left in place,
// and the drift was said on every run. Each repair goes through and
// says the drift once.
func TestRepairDuringForeignChurn(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\n")
		stop := make(chan struct{})
		var wg sync.WaitGroup
		repeatUntil(&wg, stop, func() bool {
			_, err := e.ns("server").Run(context.Background(), "nft", "add table inet churn; delete table inet churn")
			return err == nil
		})
		func() {
			defer func() { close(stop); wg.Wait() }()
			for i, port := range []string{"80", "8080", "6000", "6003"} {
				hand := []string{"nft", "insert", "rule", "inet", "moat", "input", "tcp", "dport", "25", "accept", "comment", fmt.Sprintf(`"churnhand%d"`, i)}
				if b == "iptables" {
					hand = []string{"iptables", "-I", "MOAT-INPUT", "1", "-p", "tcp", "--dport", "25", "-m", "comment", "--comment", fmt.Sprintf("churnhand%d", i), "-j", "ACCEPT"}
				}
				e.run("server", hand...)
				out, err := e.moat("allow", port+"/tcp")
				if err != nil || !strings.Contains(out, fmt.Sprintf("churnhand%d", i)) || strings.Count(out, "the next apply rewrites") != 1 {
					t.Errorf("allow %s, a repair during the churn: %v\n%s", port, err, out)
				}
			}
		}()
		e.expect(false, "client tcp 192.0.2.1:6003 open", "client tcp 192.0.2.1:25 timeout")
		e.expectStatusClean("after the repairs")
	})
}
