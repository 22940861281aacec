package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// TestUpgradeEarlierOrderNoFalseDrift: after an upgrade, the kernel holds
// moat's rules as the earlier moat ordered them (every built-in first: it
// did not sink them past the rules their packets cannot match; and its
// jumps had no conditions), and the old fingerprint record cannot vouch
// for them. The first commands must
// not call that a change by hand; a real reordering by hand must still be
// reported.
func TestUpgradeEarlierOrderNoFalseDrift(t *testing.T) {
	e := onBackend(t, "iptables")
	list := e.newFile("list.txt", "198.51.100.7\n203.0.113.0/24\n2001:db8:5::/48\n")
	e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\nallow 53/udp\nblocklist big file " + list + "\n")
	const pol = "default deny incoming\nallow 22/tcp\nallow 80/tcp\nallow 53/udp\nblocklist big file "
	earlier := func() {
		t.Helper()
		p, err := policy.NewDocument(e.conf, []byte(pol+list+"\n")).Policy(nil)
		if err != nil {
			t.Fatal(err)
		}
		// Every built-in first, plain jumps: as that moat loaded it.
		e.iptLoadLayout(ruleset.CompileEarlierOrder(p))
	}
	earlier()
	out := e.mustMoat("status")
	if strings.Contains(out, "changed outside moat") || !strings.Contains(out, "earlier version of moat") {
		t.Errorf("status after an upgrade:\n%s", out)
	}
	writeFile(t, list, "198.51.100.7\n203.0.113.0/24\n2001:db8:5::/48\n192.0.2.3\n")
	out = e.mustMoat("blocklist", "update")
	if strings.Contains(out, "outside moat") || strings.Contains(out, "holds other addresses") {
		t.Errorf("the first blocklist update after an upgrade:\n%s", out)
	}
	if out := e.mustMoat("status"); strings.Contains(out, "outside moat") || strings.Contains(out, "earlier version") {
		t.Errorf("status after the update rewrote moat's rules:\n%s", out)
	}
	e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:80 open")

	// A reordering by hand of the earlier order is still a hand change.
	e.mustMoat("reload")
	earlier()
	e.run("server", "iptables", "-D", "MOAT-INPUT", "-p", "tcp", "--dport", "22", "-m", "comment", "--comment", "L2", "-j", "RETURN")
	e.run("server", "iptables", "-A", "MOAT-INPUT", "-p", "tcp", "--dport", "22", "-m", "comment", "--comment", "L2", "-j", "RETURN")
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
		t.Errorf("status does not see rules reordered by hand:\n%s", out)
	}
}

// iptLoadLayout puts in the server's kernel moat's chains and jumps as
// the iptables rendering of rs has them (rules only: the ipsets are
// there already), in place of moat's, as an earlier moat loaded them,
// and removes the fingerprint record (the earlier moat's cannot vouch
// for the kernel).
func (e *env) iptLoadLayout(rs *ruleset.Ruleset) {
	e.t.Helper()
	script, err := ipt.New().Script(rs)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, prog := range []string{"iptables", "ip6tables"} {
		_, section, ok := strings.Cut(script, "# "+prog+"-restore --noflush\n")
		if !ok {
			e.t.Fatalf("no %s section:\n%s", prog, script)
		}
		section, _, _ = strings.Cut(section, "\n# ")
		// moat's jumps now go first: the section inserts its own.
		for _, table := range []string{"raw", "filter"} {
			var del strings.Builder
			for _, l := range strings.Split(e.run("server", prog+"-save", "-t", table), "\n") {
				if _, _, ok := ipt.ParseJump(l); ok {
					del.WriteString("-D " + strings.TrimPrefix(l, "-A ") + "\n")
				}
			}
			section = strings.Replace(section, "*"+table+"\n", "*"+table+"\n"+del.String(), 1)
		}
		f := filepath.Join(e.dir, prog+".layout")
		writeFile(e.t, f, section)
		e.run("server", prog+"-restore", "--noflush", f)
	}
	if err := os.Remove(filepath.Join(e.stateDir(), "kernel-fingerprint.json")); err != nil && !os.IsNotExist(err) {
		e.t.Fatal(err)
	}
}

// iptLoadPlainJumps puts in the server's kernel moat's rules for the
// policy text pol (applied already) as the moat whose jumps had no
// conditions loaded them (iptLoadLayout).
func (e *env) iptLoadPlainJumps(pol string) {
	e.t.Helper()
	p, err := policy.NewDocument(e.conf, []byte(pol)).Policy(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	rs := ruleset.Compile(p)
	rs.PlainJumps = true
	e.iptLoadLayout(rs)
}

// TestUpgradeEarlierLayoutIptNoFalseDrift: after an upgrade from the moat
// whose iptables jumps had no conditions (every packet jumped to
// MOAT-INPUT, whose first rule returned the established ones; each early
// drop tested '! -i lo'), the kernel holds that layout and the old
// fingerprint record cannot vouch for it. Status must call it an earlier
// version's, not a hand change; real packets pass as before; the next
// change puts the conditional jumps where the plain ones stood; and a
// jump changed by hand on this layout is one (a plain jump into a chain
// without the established accept would drop every established packet
// the policy does not allow anew).
func TestUpgradeEarlierLayoutIptNoFalseDrift(t *testing.T) {
	e := onBackend(t, "iptables")
	const pol = "default deny incoming\nallow 22/tcp\nallow 80/tcp\n"
	e.apply(pol)
	e.iptLoadPlainJumps(pol)
	// A foreign rule first in INPUT: the new jump must take the old one's
	// place after it, not go before it.
	e.run("server", "iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT")
	save := e.run("server", "iptables-save", "-t", "filter")
	if !strings.Contains(save, "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\n-A INPUT -j MOAT-INPUT\n") || !strings.Contains(save, `"builtin:established"`) {
		t.Fatalf("the earlier layout was not loaded:\n%s", save)
	}
	out := e.mustMoat("status")
	if strings.Contains(out, "changed outside moat") || !strings.Contains(out, "earlier version of moat") {
		t.Errorf("status after an upgrade:\n%s", out)
	}
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:22 open", "client tcp 192.0.2.1:443 timeout", "client tcp 192.0.2.1:8080 open")

	const pol2 = pol + "allow 443/tcp\n"
	if err := os.WriteFile(e.conf, []byte(pol2), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := e.mustMoat("reload"); strings.Contains(out, "changed outside moat") {
		t.Errorf("the first change after an upgrade:\n%s", out)
	}
	save = e.run("server", "iptables-save")
	for _, want := range []string{"-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\n-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n",
		"-A PREROUTING -m set --match-set moat-early4 src -j MOAT-PREROUTING\n", "-A OUTPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-OUTPUT\n"} {
		if !strings.Contains(save, want) {
			t.Errorf("the change did not load this version's jumps (%q):\n%s", want, save)
		}
	}
	if strings.Contains(save, "-j MOAT-INPUT\n-A INPUT -j MOAT-INPUT") || strings.Contains(save, "-A INPUT -j MOAT-INPUT\n") || strings.Contains(save, `"builtin:established"`) || strings.Contains(save, "-A PREROUTING -j MOAT-PREROUTING") {
		t.Errorf("the earlier layout's jump or rules are left:\n%s", save)
	}
	if out := e.mustMoat("status"); strings.Contains(out, "outside moat") || strings.Contains(out, "earlier version") {
		t.Errorf("status after the change:\n%s", out)
	}
	e.expect(false, "client tcp 192.0.2.1:443 open", "client tcp [2001:db8::1]:443 open", "client tcp 192.0.2.1:8081 timeout")

	// The jump made plain by hand: established packets now meet moat's
	// rules without the accept the condition stands for.
	plain := e.newFile("plain.rules", "*filter\n-R INPUT 2 -j MOAT-INPUT\nCOMMIT\n")
	e.run("server", "iptables-restore", "--noflush", plain)
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") || !strings.Contains(out, "jumps to MOAT-INPUT for every packet") {
		t.Errorf("status does not see the jump changed by hand:\n%s", out)
	}
	e.mustMoat("reload")
	if save := e.run("server", "iptables-save", "-t", "filter"); !strings.Contains(save, "-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n") || strings.Contains(save, "-A INPUT -j MOAT-INPUT\n") {
		t.Errorf("reload did not repair the jump:\n%s", save)
	}
	// A second jump beside moat's (an earlier moat run after this one
	// adds its plain jump): reported, and removed by the next apply.
	e.run("server", "iptables", "-A", "INPUT", "-j", "MOAT-INPUT")
	if out := e.mustMoat("status"); !strings.Contains(out, "jumps to MOAT-INPUT 2 times") {
		t.Errorf("status does not see a second jump:\n%s", out)
	}
	e.mustMoat("reload")
	if save := e.run("server", "iptables-save", "-t", "filter"); strings.Count(save, "-j MOAT-INPUT\n") != 1 {
		t.Errorf("reload left two jumps:\n%s", save)
	}
}

// TestFileListEditedNoFalseDrift: a file blocklist edited since moat
// loaded it is not in the kernel yet: when the fingerprint record cannot
// vouch (removed here, as after an upgrade), the full comparison must
// compare with the copy moat loaded, not with the file, and 'moat
// blocklist update' must not report the new lines as a hand change. A
// member removed by hand is still reported.
func TestFileListEditedNoFalseDrift(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		list := e.newFile("list.txt", "198.51.100.7\n203.0.113.0/24\n2001:db8:5::/48\n")
		e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\nblocklist big file " + list + "\n")
		e.removeFingerprintIfAny()
		writeFile(t, list, "198.51.100.7\n203.0.113.0/24\n2001:db8:5::/48\n192.0.2.3\n2001:db8::3\n")
		if out := e.mustMoat("status"); strings.Contains(out, "outside moat") {
			t.Errorf("status with the list file edited:\n%s", out)
		}
		if out := e.mustMoat("blocklist", "update"); strings.Contains(out, "outside moat") || strings.Contains(out, "holds other addresses") {
			t.Errorf("blocklist update with the list file edited:\n%s", out)
		}
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
		if backend == "iptables" {
			e.removeFingerprintIfAny()
			e.run("server", "ipset", "del", "moat-bl4_big", "198.51.100.7")
			if out := e.mustMoat("status"); !strings.Contains(out, "holds other addresses") {
				t.Errorf("status does not see a member deleted by hand:\n%s", out)
			}
			// The update finds it, rewrites whole, and then checks what its
			// restores left against the lists it loaded, not against the
			// copies it saves only afterwards.
			writeFile(t, list, "198.51.100.7\n203.0.113.0/24\n2001:db8:5::/48\n192.0.2.3\n2001:db8::3\n198.51.100.8\n")
			out := e.mustMoat("blocklist", "update")
			if !strings.Contains(out, "holds other addresses") || strings.Contains(out, "while this command ran") {
				t.Errorf("blocklist update after a member deleted by hand:\n%s", out)
			}
			if out := e.mustMoat("status"); strings.Contains(out, "outside moat") {
				t.Errorf("status after the update:\n%s", out)
			}
		}
	})
}

// TestIpsetNomatchHoleIsDrift: 'ipset add SET ADDR nomatch' by hand takes
// an address out of a blocklist network that holds it (real packets pass
// again), though the address is still covered by the set's networks: a
// hand change status must report, and 'moat reload' repairs.
func TestIpsetNomatchHoleIsDrift(t *testing.T) {
	e := onBackend(t, "iptables")
	list := e.newFile("list.txt", "192.0.2.4/31\n2001:db8::4/127\n")
	e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\nblocklist big file " + list + "\n")
	blocked := []string{"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout"}
	e.expect(false, blocked...)
	e.run("server", "ipset", "add", "moat-bl4_big", "192.0.2.4", "nomatch")
	e.run("server", "ipset", "add", "moat-bl6_big", "2001:db8::4", "nomatch")
	e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:80 open", "client/2001:db8::4 tcp [2001:db8::1]:80 open")
	for _, fp := range []bool{true, false} {
		if !fp {
			// Without the record: the full comparison alone.
			e.removeFingerprintIfAny()
		}
		out := e.mustMoat("status")
		if !strings.Contains(out, "moat-bl4_big holds other addresses") || !strings.Contains(out, "192.0.2.4 nomatch") ||
			!strings.Contains(out, "moat-bl6_big holds other addresses") {
			t.Errorf("status (record %v) does not see the nomatch holes:\n%s", fp, out)
		}
	}
	e.mustMoat("reload")
	e.expect(false, blocked...)
	if out := e.mustMoat("status"); strings.Contains(out, "outside moat") {
		t.Errorf("status after the reload:\n%s", out)
	}
}

// TestIpsetHandChangeDuringRefresh: a member added by hand while a
// blocklist update runs, after its drift check read the sets and before
// it loads its change, is not vouched for by the fingerprint taken from
// what the update loaded: status reports it, and the next update repairs
// it. The update runs no program any more (its set change goes over
// netlink), so strace stops it (SIGSTOP) where it writes its journal:
// after the drift check, before anything reaches the kernel. The hand
// change is made while it is stopped; nothing in the test's timing
// decides the step.
func TestIpsetHandChangeDuringRefresh(t *testing.T) {
	t.Parallel()
	requireBackend(t, "iptables")
	if _, err := exec.LookPath("strace"); err != nil {
		t.Fatalf("strace is needed (scripts/setup.sh installs it): %v", err)
	}
	e := newEnv(t, "iptables", false)
	list := e.newFile("list.txt", "198.51.100.7\n2001:db8:5::/48\n")
	e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\nblocklist big file " + list + "\n")
	writeFile(t, list, "198.51.100.7\n198.51.100.8\n2001:db8:5::/48\n")
	trace := filepath.Join(t.TempDir(), "strace.out")
	renames := "rename,renameat,renameat2"
	cmd := exec.Command("strace", "-f", "-qq", "-o", trace, "-P", filepath.Join(e.stateDir(), "intent.json"),
		"-e", "trace="+renames, "-e", "inject="+renames+":signal=SIGSTOP:when=1",
		moatBin, "--config", e.conf, "--backend", "iptables", "--state-dir", e.stateDir(), "blocklist", "update")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := e.topo.Server.Start(cmd); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	done := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(done) }()
	pid := 0
	t.Cleanup(func() {
		// A test stopped half way leaves neither strace nor a stopped moat.
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	for deadline := time.Now().Add(60 * time.Second); pid == 0; time.Sleep(20 * time.Millisecond) {
		select {
		case <-done:
			t.Fatalf("the update ended before it wrote its journal (%v):\n%s", waitErr, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the update was not stopped at its journal")
		}
		data, _ := os.ReadFile(trace)
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.Fields(l); len(f) > 1 && strings.Contains(l, "--- stopped by SIGSTOP ---") {
				pid, _ = strconv.Atoi(f[0])
			}
		}
	}
	// Stopped after its drift check, before its change: the kernel holds
	// the list as it was.
	if sets := e.run("server", "ipset", "list", "moat-bl4_big"); strings.Contains(sets, "198.51.100.8") {
		t.Fatalf("the update loaded its list before it was stopped:\n%s", sets)
	}
	e.run("server", "ipset", "add", "moat-bl4_big", "192.0.2.4")
	e.run("server", "ipset", "add", "moat-bl6_big", "2001:db8::4")
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	<-done
	if waitErr != nil {
		t.Fatalf("the update: %v\n%s", waitErr, out.String())
	}
	if sets := e.run("server", "ipset", "list", "moat-bl4_big"); !strings.Contains(sets, "198.51.100.8") {
		t.Fatalf("the update did not load its list:\n%s\n%s", sets, out.String())
	}
	e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout")
	st := e.mustMoat("status")
	if !strings.Contains(st, "+192.0.2.4/32") || !strings.Contains(st, "+2001:db8::4/128") {
		t.Errorf("status does not see members added during the update:\n%s", st)
	}
	writeFile(t, list, "198.51.100.7\n2001:db8:5::/48\n")
	e.mustMoat("blocklist", "update")
	e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:80 open", "client/2001:db8::4 tcp [2001:db8::1]:80 open")
	if st := e.mustMoat("status"); strings.Contains(st, "outside moat") {
		t.Errorf("status after the next update:\n%s", st)
	}
}

// TestKilledUpdateBeforeRecordNoFalseDrift: 'moat blocklist update'
// killed after the kernel took a file list, before the fingerprint record
// and the saved copy were written: the kernel holds the file's networks,
// the saved copy the old ones, and the update's marker names the list.
// That is no hand change: status must not report one, and the next update
// (or status after it) neither.
func TestKilledUpdateBeforeRecordNoFalseDrift(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		list := e.newFile("bad.list", "192.0.2.3\n2001:db8::3\n")
		e.apply("default deny incoming\nallow 80/tcp\nblocklist bad file " + list + "\n")
		saved := filepath.Join(e.stateDir(), "blocklists")
		before := filepath.Join(e.dir, "saved-before")
		writeFile(t, list, "192.0.2.4\n2001:db8::4\n")
		copyDir(t, saved, before)
		e.mustMoat("blocklist", "update")
		restoreDir(t, before, saved)
		writeFile(t, filepath.Join(e.stateDir(), "blocklist-update.pending"), "bad\n")
		e.removeFingerprint()
		e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout")
		if out := e.mustMoat("status"); strings.Contains(out, "outside moat") {
			t.Errorf("status after the killed update:\n%s", out)
		}
		if out := e.mustMoat("blocklist", "update"); strings.Contains(out, "outside moat") {
			t.Errorf("the update after the killed one:\n%s", out)
		}
		e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/192.0.2.3 tcp 192.0.2.1:80 open")
		if out := e.mustMoat("status"); strings.Contains(out, "outside moat") {
			t.Errorf("status after the next update:\n%s", out)
		}
		if b == "iptables" {
			// The same kill, and a member added by hand: reported.
			writeFile(t, list, "192.0.2.3\n2001:db8::3\n")
			copyDir(t, saved, before)
			e.mustMoat("blocklist", "update")
			restoreDir(t, before, saved)
			writeFile(t, filepath.Join(e.stateDir(), "blocklist-update.pending"), "bad\n")
			e.removeFingerprint()
			e.run("server", "ipset", "add", "moat-bl4_bad", "198.51.100.99")
			if out := e.mustMoat("status"); !strings.Contains(out, "+198.51.100.99/32") {
				t.Errorf("status does not see a member added by hand after a killed update:\n%s", out)
			}
		}
	})
}

// TestHiddenNftRuleInIptChains: moat's rule for port 80 replaced by hand
// (nft, in iptables-nft's table) with one that also looks up an nftables
// set: iptables-save lists it exactly as moat's rule, yet it drops the
// set's addresses. Status must report it, with or without the fingerprint
// record, and 'moat reload' repair it. IPv4 and IPv6, real packets.
func TestHiddenNftRuleInIptChains(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	open := []string{"client/192.0.2.3 tcp 192.0.2.1:80 open", "client/2001:db8::3 tcp [2001:db8::1]:80 open"}
	e.expect(false, open...)
	for _, f := range []struct{ fam, typ, addr, saddr string }{
		{"ip", "ipv4_addr", "192.0.2.3", "ip"},
		{"ip6", "ipv6_addr", "2001:db8::3", "ip6"},
	} {
		listing := e.run("server", "nft", "-a", "list", "chain", f.fam, "filter", "MOAT-INPUT")
		handle := ""
		for _, l := range strings.Split(listing, "\n") {
			if strings.Contains(l, "tcp dport 80 ") {
				handle = l[strings.LastIndex(l, " ")+1:]
			}
		}
		if handle == "" {
			t.Fatalf("no rule for port 80:\n%s", listing)
		}
		before := e.run("server", f.fam+"tables-save", "-t", "filter")
		if f.fam == "ip" {
			before = e.run("server", "iptables-save", "-t", "filter")
		}
		e.run("server", "nft", "add", "set", f.fam, "filter", "hs", "{ type "+f.typ+"; }")
		e.run("server", "nft", "add", "element", f.fam, "filter", "hs", "{ "+f.addr+" }")
		e.run("server", "nft", "insert", "rule", f.fam, "filter", "MOAT-INPUT", "position", handle,
			f.saddr, "saddr", "!=", "@hs", "tcp", "dport", "80", "counter", "return", "comment", `"L3"`)
		e.run("server", "nft", "delete", "rule", f.fam, "filter", "MOAT-INPUT", "handle", handle)
		after := e.run("server", "iptables-save", "-t", "filter")
		if f.fam == "ip6" {
			after = e.run("server", "ip6tables-save", "-t", "filter")
		}
		if strings.Count(after, "--comment L3") != strings.Count(before, "--comment L3") {
			t.Logf("%stables-save shows the hand rule otherwise now:\n%s", f.fam, after)
		}
	}
	e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
	for _, record := range []bool{true, false} {
		if !record {
			e.removeFingerprintIfAny()
		}
		out := e.mustMoat("status")
		if !strings.Contains(out, "chain ip MOAT-INPUT rule") || !strings.Contains(out, "chain ip6 MOAT-INPUT rule") {
			t.Errorf("status (record %v) does not see the hidden rules:\n%s", record, out)
		}
	}
	e.mustMoat("reload")
	e.expect(false, open...)
	if out := e.mustMoat("status"); strings.Contains(out, "outside moat") {
		t.Errorf("status after the reload:\n%s", out)
	}
}
