package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
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

// Filtering added outside moat after moat's iptables chains were loaded
// (so that the filter and raw tables held only moat's chains and jumps
// when the last command looked) is still named by status: a DROP rule in
// mangle, a drop policy on a built-in chain, a DROP in raw beside moat's
// jump.
func TestOtherFilteringAddedAfter(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		cmd  []string
		want string
	}{
		{"mangle rule", []string{"iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--dport", "6007", "-j", "DROP"}, "iptables mangle chain PREROUTING: 1 DROP/REJECT rule"},
		{"input policy", []string{"ip6tables", "-P", "INPUT", "DROP"}, "ip6tables filter chain INPUT: policy DROP"},
		{"raw rule", []string{"iptables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "6003", "-j", "DROP"}, "iptables raw chain PREROUTING: 1 DROP/REJECT rule"},
		{"filter rule", []string{"iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "6005", "-j", "DROP"}, "iptables filter chain INPUT: 1 DROP/REJECT rule"},
	} {
		t.Run(c.name, func(t *testing.T) {
			requireBackend(t, "iptables")
			t.Parallel()
			e := newEnv(t, "iptables", false)
			e.apply("default allow incoming\ndeny from 192.0.2.3\n")
			e.mustMoat("allow", "443/tcp")
			e.run("server", c.cmd...)
			if out := e.mustMoat("status"); !strings.Contains(out, c.want) {
				t.Errorf("status lacks %q:\n%s", c.want, out)
			}
		})
	}
}

// A rule inserted by hand into moat's chain before conntrack (nftables
// chain prerouting, iptables raw MOAT-PREROUTING) is a change outside
// moat, seen by the next command and status, and undone by reload.
func TestHandRuleBeforeConntrack(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default allow incoming\ndeny from 192.0.2.3\n")
		e.mustMoat("allow", "443/tcp")
		if b == "nftables" {
			e.run("server", "nft", "insert", "rule", "inet", "moat", "prerouting", "ip", "saddr", "192.0.2.2", "drop")
			e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 timeout")
		} else {
			// Only a banned or blocklisted source enters MOAT-PREROUTING
			// (the early list): a hand rule there that lets every
			// source past switches the bans off.
			e.mustMoat("ban", "--force", "192.0.2.2")
			e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 timeout")
			e.run("server", "iptables", "-t", "raw", "-I", "MOAT-PREROUTING", "1", "-j", "RETURN")
			e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 open")
		}
		if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
			t.Errorf("status does not see the hand rule:\n%s", out)
		}
		e.mustMoat("reload")
		if b == "nftables" {
			e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 open")
		} else {
			e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 timeout")
		}
	})
}

// A DROP in a legacy x_tables table (iptables-legacy) beside moat's
// iptables-nft chains is other filtering, named by status.
func TestLegacyTableNamed(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("iptables-legacy"); err != nil {
		t.Skip("no iptables-legacy")
	}
	requireBackend(t, "iptables")
	e := newEnv(t, "iptables", false)
	e.apply("default allow incoming\ndeny from 192.0.2.3\n")
	e.mustMoat("allow", "443/tcp")
	e.run("server", "iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "6007", "-j", "DROP")
	e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:6007 timeout")
	if out := e.mustMoat("status"); !strings.Contains(out, "iptables-legacy filter chain INPUT: 1 DROP/REJECT rule (input)") {
		t.Errorf("status does not name the legacy DROP:\n%s", out)
	}
}

// A rule added by hand to a chain of moat's table that a command does
// not rewrite, while that command runs (between its drift check and its
// commit: here from inside the nft it starts), is drift all the same:
// the fingerprint recorded after the command must not vouch for it, so
// the next command finds it and rewrites the table, and status says so.
func TestHandChangeDuringCommand(t *testing.T) {
	e := onBackend(t, "nftables")
	e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	real, err := exec.LookPath("nft")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	writeFile(t, filepath.Join(bin, "nft"), "#!/bin/sh\nif [ \"$1\" = -f ] && mkdir "+filepath.Join(bin, "once")+" 2>/dev/null; then\n"+
		real+" insert rule inet moat output ip daddr 192.0.2.2 tcp sport 80 drop\nfi\nexec "+real+" \"$@\"\n")
	if err := os.Chmod(filepath.Join(bin, "nft"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A source and a destination address in one rule (adjacent compares
	// nft merges): a rule the netlink encoder does not write, so the
	// change goes through nft -f, where the hand change is made (an
	// encoded edit's case: nft's TestKernelEncodedEditAfterHandChange).
	e.moatWith(bin, "allow", "from", "192.0.2.0/24", "to", "192.0.2.1", "port", "8080", "proto", "tcp")
	if _, err := os.Stat(filepath.Join(bin, "once")); err != nil {
		t.Fatal("the command ran no nft -f: the hand change was not made during it")
	}
	e.expect(false, "client tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:8080 open")
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
		t.Errorf("status does not see the rule added during the command:\n%s", out)
	}
	e.mustMoat("allow", "8081/tcp")
	e.expect(false, "client tcp 192.0.2.1:80 open")
}

// TestHandChangeDuringCommand for edits that go over netlink (no nft
// process to make the hand change from): the hand rule is added at a
// random moment while `moat allow` runs, some of the times before the
// command verified the table (then it repairs it, through nft), some
// after (the encoded edit, refused by the kernel if the rule came between
// its plan and its send, and planned again). Whenever the hand rule is in
// the kernel after the command, status names the drift and the next
// command takes the rule out. nft's TestKernelEncodedEditAfterHandChange
// puts the rule between the plan and the send every time.
func TestHandChangeDuringEncodedEdit(t *testing.T) {
	e := onBackend(t, "nftables")
	e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	hand := []string{"nft", "insert", "rule", "inet", "moat", "output", "ip", "daddr", "192.0.2.2", "tcp", "sport", "80", "drop"}
	took, rng := e.timedMoat(17, "allow", "8000/tcp")
	encoded := 0
	for k := 0; k < 8; k++ {
		bin, once := nftWrapper(t, "", "")
		done := make(chan string, 1)
		go func() {
			out, err := e.moatWithErr(bin, "allow", fmt.Sprintf("%d/tcp", 8001+k))
			if err != nil {
				out = append(out, []byte("\nerror: "+err.Error())...)
			}
			done <- string(out)
		}()
		time.Sleep(time.Duration(rng.Int64N(int64(took))))
		e.run("server", hand...)
		if out := <-done; strings.Contains(out, "error: ") {
			t.Fatalf("edit %d: %s", k, out)
		}
		if _, err := os.Stat(once); err != nil {
			encoded++
		}
		if !strings.Contains(e.run("server", "nft", "list", "chain", "inet", "moat", "output"), "192.0.2.2 tcp sport 80 drop") {
			continue // seen before the edit and repaired
		}
		if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
			t.Fatalf("edit %d: status does not see the rule added during the command:\n%s", k, out)
		}
		e.mustMoat("allow", fmt.Sprintf("%d/tcp", 9001+k))
		if strings.Contains(e.run("server", "nft", "list", "chain", "inet", "moat", "output"), "192.0.2.2 tcp sport 80 drop") {
			t.Fatalf("edit %d: the next command left the hand rule", k)
		}
	}
	t.Logf("%d of 8 edits encoded (an edit %v)", encoded, took)
	if encoded == 0 {
		t.Error("no edit went over netlink")
	}
	e.expect(false, "client tcp 192.0.2.1:80 open")
}

// The same after a commit that rewrote moat's table whole (the first
// enable): the table is what moat committed only while the generation is
// the one right after that commit; a rule added by hand after it, before
// the fingerprint is recorded, is drift.
func TestHandChangeAfterWholeCommit(t *testing.T) {
	e := onBackend(t, "nftables")
	bin, once := nftWrapper(t, "", "$nft insert rule inet moat output ip daddr 192.0.2.2 tcp sport 80 drop")
	writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	e.moatWith(bin, "enable")
	if _, err := os.Stat(once); err != nil {
		t.Fatal("the enable ran no nft -f: the hand change was not made during it")
	}
	e.expect(false, "client tcp 192.0.2.1:80 timeout")
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
		t.Errorf("status does not see the rule added after the whole commit:\n%s", out)
	}
	e.mustMoat("allow", "8081/tcp")
	e.expect(false, "client tcp 192.0.2.1:80 open")
}

// The same with an address added by hand to one of moat's policy sets
// right after the first enable's whole commit, or between its two
// transactions (the sets are staged over netlink before the nft
// transaction that adds the rules): that commit's fingerprint is taken
// from what moat loaded, not read back from the kernel, only while the
// generation is the one right after the commit and the commit followed
// the stage at once, so the element is drift all the same (named by
// status, taken out by the next change).
func TestHandElementAfterWholeCommit(t *testing.T) {
	t.Parallel()
	for _, when := range []string{"after", "between"} {
		t.Run(when, func(t *testing.T) {
			hand := policySet4 + "\n$nft add element inet moat \"$set\" '{ 192.0.2.2 }' || exit 9"
			pre, post := hand, "" // between: before nft's transaction
			if when == "after" {
				pre, post = "", hand
			}
			e := enableWithStagedSetEdit(t, pre, post)
			expectHandDropRepaired(t, e, "the element added "+when+" the whole commit")
		})
	}
}

// An address added by hand to a protected set (the SSH sessions and the
// allowlist at the apply, which drift's layout cannot compare) is spared
// every ban: it is drift, named by status and taken out by reload.
func TestHandAddedProtectedAddress(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default allow incoming\ndeny from 192.0.2.3\n")
		if b == "nftables" {
			e.run("server", "nft", "add", "element", "inet", "moat", "protect4", "{ 192.0.2.2 }")
		} else {
			e.run("server", "ipset", "add", "moat-protect4", "192.0.2.2")
		}
		e.mustMoat("ban", "192.0.2.2")
		e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 open")
		if out := e.mustMoat("status"); !strings.Contains(out, "protect4 holds other addresses than moat loaded") {
			t.Errorf("status does not see the address added to protect4:\n%s", out)
		}
		if out := e.mustMoat("reload"); !strings.Contains(out, "rewrites moat's rules whole") {
			t.Errorf("reload does not repair:\n%s", out)
		}
		e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 timeout")
		if st := e.truth(); !st.InSync {
			t.Errorf("status after reload: %+v", st)
		}
	})
}

// expectHandDropRepaired: 192.0.2.2, dropped by a hand change (what)
// made during the first enable of the policy denying 192.0.2.3,
// 192.0.2.9 and 2001:db8::3, is dropped (real packets) and status names
// the drift; the next change takes the hand change out: 192.0.2.2 passes
// again, moat's denies stay.
func expectHandDropRepaired(t *testing.T, e *env, what string) {
	t.Helper()
	e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 timeout", "client/192.0.2.3 tcp 192.0.2.1:80 timeout")
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
		t.Errorf("status does not see %s:\n%s", what, out)
	}
	e.mustMoat("allow", "8081/tcp")
	e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 open", "client/192.0.2.3 tcp 192.0.2.1:80 timeout",
		"client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
}
