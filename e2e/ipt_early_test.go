package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// earlyMembers lists the members of an early list in the server's
// kernel ("" for none).
func (e *env) earlyMembers(name string) string {
	e.t.Helper()
	_, members, _ := strings.Cut(e.run("server", "ipset", "list", name), "Members:\n")
	return strings.Join(strings.Fields(members), " ")
}

// earlyRepaired checks that status reports a hand change of moat's early
// list (with each of notes), and that 'moat reload' repairs the list
// name: it holds want again.
func (e *env) earlyRepaired(name, want string, notes ...string) {
	e.t.Helper()
	out := e.mustMoat("status")
	if !strings.Contains(out, "changed outside moat") {
		e.t.Errorf("status does not see %s changed by hand:\n%s", name, out)
	}
	for _, n := range notes {
		if !strings.Contains(out, n) {
			e.t.Errorf("status does not say %q of %s changed by hand:\n%s", n, name, out)
		}
	}
	e.mustMoat("reload")
	if m := e.earlyMembers(name); m != want {
		e.t.Errorf("%s after the repair: %q", name, m)
	}
}

// TestIptEarlyListsKeptWithLists: on iptables the raw jump is taken only
// by a source in the family's early list (an ipset list:set of the ban
// set and every blocklist's set). The lists follow the policy: a
// blocklist added drops its sources at once (its set is in the list
// before its rule), one removed is destroyed (out of the list first); a
// member deleted by hand (which silently switched that blocklist off) or
// added by hand is reported and repaired; disable removes the lists.
// Real packets, IPv4 and IPv6.
func TestIptEarlyListsKeptWithLists(t *testing.T) {
	e := onBackend(t, "iptables")
	e.addClientAddrs("192.0.2.13/24", "192.0.2.14/24", "2001:db8::13/64", "2001:db8::14/64")
	one := e.newFile("one.list", "192.0.2.13\n2001:db8::13\n")
	two := e.newFile("two.list", "192.0.2.14\n2001:db8::14\n")
	const head = "default deny incoming\nallow 22/tcp\nallow 80/tcp\n"
	e.apply(head + "blocklist one file " + one + "\n")
	for prog, jump := range map[string]string{"iptables": "-A PREROUTING -m set --match-set moat-early4 src -j MOAT-PREROUTING\n",
		"ip6tables": "-A PREROUTING -m set --match-set moat-early6 src -j MOAT-PREROUTING\n"} {
		if save := e.run("server", prog+"-save", "-t", "raw"); !strings.Contains(save, jump) || !strings.Contains(save, "-A MOAT-PREROUTING ! -i lo -m set --match-set moat-bl") {
			t.Errorf("%s: the raw jump is not gated by the early list, or a drop lost its loopback exemption:\n%s", prog, save)
		}
	}
	if m4, m6 := e.earlyMembers("moat-early4"), e.earlyMembers("moat-early6"); m4 != "moat-ban4 moat-bl4_one" || m6 != "moat-ban6 moat-bl6_one" {
		t.Errorf("early lists: %q, %q", m4, m6)
	}
	e.expect(false, "client/192.0.2.13 tcp 192.0.2.1:80 timeout", "client/2001:db8::13 tcp [2001:db8::1]:80 timeout",
		"client/192.0.2.14 tcp 192.0.2.1:80 open", "client/2001:db8::14 tcp [2001:db8::1]:80 open")

	// A second list: its sources are dropped.
	e.apply(head + "blocklist one file " + one + "\nblocklist two file " + two + "\n")
	if m4 := e.earlyMembers("moat-early4"); m4 != "moat-ban4 moat-bl4_one moat-bl4_two" {
		t.Errorf("early list after a blocklist was added: %q", m4)
	}
	e.expect(false, "client/192.0.2.13 tcp 192.0.2.1:80 timeout", "client/2001:db8::14 tcp [2001:db8::1]:80 timeout",
		"client/192.0.2.14 tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:80 open")

	// A member deleted by hand: that list drops nothing any more.
	e.run("server", "ipset", "del", "moat-early6", "moat-bl6_two")
	e.expect(false, "client/2001:db8::14 tcp [2001:db8::1]:80 open")
	e.earlyRepaired("moat-early6", "moat-ban6 moat-bl6_one moat-bl6_two", "set moat-early6 holds other sets than moat loaded: -moat-bl6_two")
	e.expect(false, "client/2001:db8::14 tcp [2001:db8::1]:80 timeout", "client tcp [2001:db8::1]:80 open")
	// One added by hand (the protected set): reported, taken out.
	e.run("server", "ipset", "add", "moat-early4", "moat-protect4")
	e.earlyRepaired("moat-early4", "moat-ban4 moat-bl4_one moat-bl4_two")
	if out := e.mustMoat("status"); strings.Contains(out, "outside moat") {
		t.Errorf("status after the repair:\n%s", out)
	}

	// The first list removed: its sets are gone, its sources pass.
	e.apply(head + "blocklist two file " + two + "\n")
	if m4, m6 := e.earlyMembers("moat-early4"), e.earlyMembers("moat-early6"); m4 != "moat-ban4 moat-bl4_two" || m6 != "moat-ban6 moat-bl6_two" {
		t.Errorf("early lists after a blocklist was removed: %q, %q", m4, m6)
	}
	if sets := e.run("server", "ipset", "list", "-n"); strings.Contains(sets, "bl4_one") || strings.Contains(sets, "bl6_one") || strings.Contains(sets, "moatnew-") {
		t.Errorf("sets after a blocklist was removed:\n%s", sets)
	}
	e.expect(false, "client/192.0.2.13 tcp 192.0.2.1:80 open", "client/2001:db8::13 tcp [2001:db8::1]:80 open",
		"client/192.0.2.14 tcp 192.0.2.1:80 timeout", "client/2001:db8::14 tcp [2001:db8::1]:80 timeout")
	// Bans: the ban set is always a member.
	e.mustMoat("ban", "192.0.2.13", "2001:db8::13")
	e.expect(false, "client/192.0.2.13 tcp 192.0.2.1:80 timeout", "client/2001:db8::13 tcp [2001:db8::1]:80 timeout")

	e.mustMoat("disable")
	if sets := e.run("server", "ipset", "list", "-n"); strings.Contains(sets, "moat") {
		t.Errorf("sets after disable:\n%s", sets)
	}
	for _, prog := range []string{"iptables", "ip6tables"} {
		if save := e.run("server", prog+"-save"); strings.Contains(save, "MOAT-") {
			t.Errorf("%s after disable:\n%s", prog, save)
		}
	}
}

// TestUpgradeLoopbackRawJumpNoFalseDrift: after an upgrade from the moat
// whose raw jump let every source but loopback into MOAT-PREROUTING ("!
// -i lo", the drops without their own exemption; no early list), the
// kernel holds that layout and the old fingerprint record cannot vouch
// for it. Status must call it an earlier version's, not a hand change;
// the next change puts the gated jump where the old one stood (behind a
// foreign rule); a drop changed by hand on that layout is still one.
func TestUpgradeLoopbackRawJumpNoFalseDrift(t *testing.T) {
	e := onBackend(t, "iptables")
	e.addClientAddrs("192.0.2.13/24")
	list := e.newFile("bad.list", "192.0.2.13\n2001:db8::13\n")
	pol := "default deny incoming\nallow 22/tcp\nallow 80/tcp\nblocklist bad file " + list + "\n"
	earlier := func() {
		t.Helper()
		p, err := policy.NewDocument(e.conf, []byte(pol)).Policy(nil)
		if err != nil {
			t.Fatal(err)
		}
		rs := ruleset.Compile(p)
		rs.LoopbackRawJump = true
		e.iptLoadLayout(rs)
		for _, prog := range []string{"iptables", "ip6tables"} {
			if save := e.run("server", prog+"-save", "-t", "raw"); !strings.Contains(save, "-A PREROUTING ! -i lo -j MOAT-PREROUTING\n") || strings.Contains(save, "! -i lo -m set") {
				t.Fatalf("%s: the earlier layout was not loaded:\n%s", prog, save)
			}
		}
	}
	e.apply(pol)
	earlier()
	// A foreign rule first in raw PREROUTING: the new jump must take the
	// old one's place after it.
	e.run("server", "iptables", "-t", "raw", "-I", "PREROUTING", "1", "-s", "198.51.100.9", "-j", "DROP")
	out := e.mustMoat("status")
	if strings.Contains(out, "changed outside moat") || !strings.Contains(out, "earlier version of moat") {
		t.Errorf("status after an upgrade:\n%s", out)
	}
	e.expect(false, "client/192.0.2.13 tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open")
	e.apply(pol + "allow 443/tcp\n")
	save := e.run("server", "iptables-save", "-t", "raw")
	if !strings.Contains(save, "-A PREROUTING -s 198.51.100.9/32 -j DROP\n-A PREROUTING -m set --match-set moat-early4 src -j MOAT-PREROUTING\n") || strings.Count(save, "-j MOAT-PREROUTING") != 1 {
		t.Errorf("the change did not put the gated jump where the old one stood:\n%s", save)
	}
	if out := e.mustMoat("status"); strings.Contains(out, "outside moat") || strings.Contains(out, "earlier version") {
		t.Errorf("status after the change:\n%s", out)
	}
	e.expect(false, "client/192.0.2.13 tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:443 open")

	// On the earlier layout, a drop's exemption changed by hand is a
	// hand change.
	pol += "allow 443/tcp\n"
	earlier()
	if save := e.run("server", "iptables-save", "-t", "raw"); !strings.Contains(save, "-A MOAT-PREROUTING -m set --match-set moat-ban4 src") {
		t.Fatalf("the ban drop is not MOAT-PREROUTING's first rule:\n%s", save)
	}
	e.run("server", "iptables", "-t", "raw", "-R", "MOAT-PREROUTING", "2", "-m", "set", "--match-set", "moat-bl4_bad", "src", "-m", "comment", "--comment", "blocklist:bad", "-j", "DROP")
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
		t.Errorf("status does not see a drop changed by hand on the earlier layout:\n%s", out)
	}
}

// earlyBlocklisted is an iptables env whose policy drops, by blocklist
// bad, the client's 192.0.2.13 in moat's early list (moat-early4).
func earlyBlocklisted(t *testing.T) *env {
	t.Helper()
	e := onBackend(t, "iptables")
	e.addClientAddrs("192.0.2.13/24")
	list := e.newFile("bad.list", "192.0.2.13\n")
	e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\nblocklist bad file " + list + "\n")
	e.expect(false, "client/192.0.2.13 tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:80 open")
	return e
}

// earlyListReplacedByHand makes moat's early list anew by hand, empty
// and of another type (hash:ip), with moat's raw jump through it taken
// out and put back: 192.0.2.13 comes in.
func (e *env) earlyListReplacedByHand() {
	e.t.Helper()
	jump := []string{"PREROUTING", "-m", "set", "--match-set", "moat-early4", "src", "-j", "MOAT-PREROUTING"}
	e.run("server", append([]string{"iptables", "-t", "raw", "-D"}, jump...)...)
	e.run("server", "ipset", "destroy", "moat-early4")
	e.run("server", "ipset", "create", "moat-early4", "hash:ip")
	e.run("server", append([]string{"iptables", "-t", "raw", "-I"}, jump...)...)
	e.expect(false, "client/192.0.2.13 tcp 192.0.2.1:80 open")
}

// TestIptEarlyListReplacedByHand: an early list made anew by hand under
// its name as another type (moat's jump put back by hand) drops nothing
// of a blocklist's sources; status reports it and 'moat reload' repairs
// it (it failed: the list's create was refused, every apply too). Real
// packets.
func TestIptEarlyListReplacedByHand(t *testing.T) {
	e := earlyBlocklisted(t)
	e.earlyListReplacedByHand()
	e.earlyRepaired("moat-early4", "moat-ban4 moat-bl4_bad", "-moat-bl4_bad (its sources are no longer dropped)")
	e.expect(false, "client/192.0.2.13 tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:80 open")
	if out := e.mustMoat("status"); strings.Contains(out, "outside moat") {
		t.Errorf("status after the repair:\n%s", out)
	}
}

// TestIptRollbackOverEarlyListReplacedByHand: an early list made anew by
// hand as another type while a --confirm change waits: 'moat rollback'
// (and the watchdog at the deadline) failed, its ipset swap refused
// ("their type does not match"), until an apply repaired the list. The
// rollback repairs it as apply does: real packets from the blocklist's
// source are dropped again, the change is undone, status is clean.
func TestIptRollbackOverEarlyListReplacedByHand(t *testing.T) {
	for _, by := range []string{"rollback", "watchdog"} {
		t.Run(by, func(t *testing.T) {
			e := earlyBlocklisted(t)
			confirm := "1h"
			if by == "watchdog" {
				confirm = "2s"
			}
			e.mustMoat("--confirm", confirm, "--no-wait", "allow", "443/tcp")
			id, _ := e.pendingFile()["id"].(string)
			// The hand change is made before the watchdog acts: moat's
			// lock is held meanwhile (the watchdog waits for it past its
			// deadline). A deadline alone came first on a loaded machine.
			unlock := e.holdLock()
			e.earlyListReplacedByHand()
			unlock()
			if by == "rollback" {
				out, err := e.moat("rollback")
				if err != nil {
					t.Fatalf("rollback over the early list replaced by hand: %v\n%s", err, out)
				}
				// It fell back to loading the previous policy (the
				// file lists' copies, the bans' snapshot not put back).
				if strings.Contains(out, "cannot restore the snapshot") || strings.Contains(out, "failed") {
					t.Errorf("the snapshot's restore failed:\n%s", out)
				}
			} else {
				// Its outcome, written after its log line: the pending
				// record goes first (the log was read empty between).
				if o := e.waitOutcome(id, 20*time.Second); o != "rolled back" {
					t.Errorf("the watchdog's outcome: %q", o)
				}
				wlog, _ := os.ReadFile(filepath.Join(e.stateDir(), "moat.log"))
				if !strings.Contains(string(wlog), "rolled back") || strings.Contains(string(wlog), "cannot restore the snapshot") || strings.Contains(string(wlog), "failed") {
					t.Errorf("the watchdog's rollback (its log):\n%s", wlog)
				}
			}
			e.expect(false, "client/192.0.2.13 tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:443 timeout")
			if out := e.mustMoat("status"); strings.Contains(out, "outside moat") || strings.Contains(out, "waiting") {
				t.Errorf("status after the rollback:\n%s", out)
			}
			if typ := e.run("server", "ipset", "-t", "list", "moat-early4"); !strings.Contains(typ, "list:set") {
				t.Errorf("moat-early4 after the rollback:\n%s", typ)
			}
		})
	}
}

// holdLock takes moat's state lock as a moat command does (a flock on
// STATE_DIR/lock) and returns what lets it go: no moat command and no
// watchdog acts meanwhile.
func (e *env) holdLock() (unlock func()) {
	e.t.Helper()
	f, err := os.OpenFile(filepath.Join(e.stateDir(), "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		_ = f.Close()
		e.t.Fatal(err)
	}
	done := false
	unlock = func() {
		if !done {
			done = true
			_ = f.Close() // lets the flock go
		}
	}
	e.t.Cleanup(unlock)
	return unlock
}
