package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/nft"
)

// Adversary of the nftables speed-ups (the first enable's stage, the
// fingerprint taken from what was loaded): hand changes made at the
// moments the fast paths trust the generations.

// nftWrapper writes an nft into a fresh directory that, on the first
// 'nft -f' only, runs pre (shell, with $nft the real nft) before the real
// transaction and post after it, and returns the directory (for PATH)
// and the marker that says it ran.
func nftWrapper(t *testing.T, pre, post string) (bin, once string) {
	t.Helper()
	real := realNft(t)
	bin = t.TempDir()
	once = filepath.Join(bin, "once")
	writeFile(t, filepath.Join(bin, "nft"), "#!/bin/sh\nnft="+real+"\nif [ \"$1\" = -f ] && mkdir "+once+" 2>/dev/null; then\n"+
		pre+"\n$nft \"$@\"; rc=$?\n"+post+"\nexit $rc\nfi\nexec $nft \"$@\"\n")
	if err := os.Chmod(filepath.Join(bin, "nft"), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, once
}

func realNft(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("no nft")
	return ""
}

// nftKiller is a directory with an nft that kills its caller when asked
// to load a file (nft -f): moat run with it first in PATH is killed
// between the stage's netlink transaction and nft's.
func nftKiller(t *testing.T) string {
	t.Helper()
	real := realNft(t)
	bin := t.TempDir()
	writeFile(t, filepath.Join(bin, "nft"), "#!/bin/sh\nif [ \"$1\" = -f ]; then kill -9 $PPID; exit 1; fi\nexec "+real+" \"$@\"\n")
	if err := os.Chmod(filepath.Join(bin, "nft"), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// policySet4 is the shell that puts the name of moat's IPv4 source deny set
// in $set.
const policySet4 = "set=$($nft list sets inet | sed -n 's/.*set \\(input_deny_src4_[0-9]*\\) .*/\\1/p')"

// enableWithStagedSetEdit runs the first enable (nftables; deny from
// 192.0.2.3, 192.0.2.9 and 2001:db8::3) in a parallel test, with the
// shell pre run between the stage's netlink transaction and nft's and
// post after nft's (nftWrapper; $set names a set with policySet4), and
// fails the test if the enable ran no nft -f.
func enableWithStagedSetEdit(t *testing.T, pre, post string) *env {
	t.Helper()
	e := onBackend(t, "nftables")
	bin, once := nftWrapper(t, pre, post)
	writeFile(t, e.conf, "default allow incoming\ndeny from 192.0.2.3\ndeny from 192.0.2.9\ndeny from 2001:db8::3\n")
	e.moatWith(bin, "enable")
	if _, err := os.Stat(once); err != nil {
		t.Fatal("the enable ran no nft -f: the hand change was not made during it")
	}
	return e
}

// An element added by hand to a set the first enable staged, between the
// stage's netlink transaction and nft's (nft only declares the staged sets,
// so the element stays): the fingerprint must not vouch for it; status
// names the drift and the next change takes the element out.
func TestAdvHandElementBetweenStageAndRules(t *testing.T) {
	e := enableWithStagedSetEdit(t, policySet4+"\n$nft add element inet moat \"$set\" '{ 192.0.2.2 }'", "")
	if out := e.run("server", "nft", "list", "table", "inet", "moat"); !strings.Contains(out, "192.0.2.2") {
		t.Fatalf("the hand element was not made between the stage and the rules (no stage?):\n%s", out)
	}
	expectHandDropRepaired(t, e, "the element added between the stage and the rules")
}

// An element deleted by hand from a staged set in the same window: the
// deny it made is gone from the kernel; moat must not record the table as
// its own (status names the drift, the next change puts the element back).
func TestAdvHandDeleteBetweenStageAndRules(t *testing.T) {
	e := enableWithStagedSetEdit(t, policySet4+"\n$nft delete element inet moat \"$set\" '{ 192.0.2.3 }'", "")
	e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 open")
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
		t.Errorf("status does not see the element deleted between the stage and the rules:\n%s", out)
	}
	e.mustMoat("allow", "8081/tcp")
	e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
}

// A hand-made table inet moat before the first enable, holding a set with
// the very name moat gives its IPv4 deny set (another type) used by a hand
// base chain that drops 192.0.2.4: there is a table, so nothing is staged;
// the whole commit replaces the hand objects; packets follow the policy
// and no drift is reported.
func TestAdvHandTableWithMoatsSetNames(t *testing.T) {
	e := onBackend(t, "nftables")
	pol := "default allow incoming\ndeny from 192.0.2.3\ndeny from 2001:db8::3\n"
	// Learn the set's name from a first enable, then start again.
	e.apply(pol)
	names := e.run("server", "nft", "list", "sets", "inet")
	set := ""
	for _, f := range strings.Fields(names) {
		if strings.HasPrefix(f, "input_deny_src4_") {
			set = f
		}
	}
	if set == "" {
		t.Fatalf("no input_deny_src4_ set:\n%s", names)
	}
	e.mustMoat("disable")
	script := "table inet moat {\n set " + set + " { type ipv4_addr; elements = { 192.0.2.4, 192.0.2.6 } }\n" +
		" set hand { type inet_service; }\n" +
		" chain input { type filter hook input priority 0; policy accept; ip saddr @" + set + " drop; }\n}\n"
	writeFile(t, filepath.Join(e.dir, "hand.nft"), script)
	e.run("server", "nft", "-f", filepath.Join(e.dir, "hand.nft"))
	e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:80 timeout")
	e.mustMoat("enable", "--force")
	e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:80 open", "client/192.0.2.3 tcp 192.0.2.1:80 timeout",
		"client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
	e.expectStatusClean("status sees drift after the whole commit over the hand table")
	if out := e.run("server", "nft", "list", "table", "inet", "moat"); strings.Contains(out, "192.0.2.4") || strings.Contains(out, "inet_service") {
		t.Errorf("hand objects left in moat's table:\n%s", out)
	}
}

// The generation recorded with the fingerprint counts from boot in each
// network namespace: a record taken in one namespace must not vouch for
// another's table that happens to be at the same generation (a state dir
// kept across a reboot, a container's namespace made again). Here a second
// namespace holds moat's table with a rule added by hand, brought to the
// very generation of the record: status run there with the first
// namespace's state must still see the hand rule.
func TestAdvFingerprintRecordOtherNamespace(t *testing.T) {
	t.Parallel()
	requireBackend(t, "nftables")
	a := newEnv(t, "nftables", false)
	b := newEnv(t, "nftables", false)
	gen := func(e *env) uint32 {
		var g uint32
		if err := e.topo.Server.Do(func() (err error) { g, err = nft.Generation(); return err }); err != nil {
			t.Fatal(err)
		}
		return g
	}
	pad := func(e *env) {
		e.run("server", "nft", "add", "table", "inet", "advpad")
		e.run("server", "nft", "delete", "table", "inet", "advpad")
	}
	// Namespace b: moat's table as a copy of a's, with a hand drop of
	// port 80, at a small generation.
	a.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	table := a.run("server", "nft", "list", "table", "inet", "moat")
	writeFile(t, filepath.Join(b.dir, "moat.nft"), table)
	b.run("server", "nft", "-f", filepath.Join(b.dir, "moat.nft"))
	b.run("server", "nft", "insert", "rule", "inet", "moat", "input", "tcp", "dport", "80", "drop")
	// a's record must be at a later generation than b's: pad a, then
	// a change that records the fingerprint anew.
	for gen(a) <= gen(b)+2 {
		pad(a)
	}
	a.mustMoat("allow", "8080/tcp")
	data, err := os.ReadFile(filepath.Join(a.stateDir(), "kernel-fingerprint.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Gen uint32 `json:"nft_generation"`
	}
	if err := json.Unmarshal(data, &rec); err != nil || rec.Gen == 0 {
		t.Fatalf("record: %v %s", err, data)
	}
	for gen(b) < rec.Gen {
		pad(b)
	}
	if g := gen(b); g != rec.Gen {
		t.Fatalf("b at generation %d, the record at %d", g, rec.Gen)
	}
	b.expect(false, "client tcp 192.0.2.1:80 timeout")
	out, err := b.topo.Server.Run(context.Background(), moatBin, "--config", a.conf, "--backend", "nftables", "--state-dir", a.stateDir(), "status")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "changed outside moat") {
		t.Errorf("a record of another namespace at the same generation vouched for a table changed by hand:\n%s", out)
	}
}

// Real packets from listed sources while a first enable stages its sets
// (the table and filled sets over netlink, then nft's chains and rules):
// default deny with 'allow from' the client's .3 addresses among 50,000
// entries. A packet that met moat's rules with an empty or half-filled
// allow set would be dropped; every one must pass, before, during and
// after each enable. A source not listed (.4) goes from open (no firewall
// yet) to dropped once, never back.
func TestAdvPacketsDuringStagedEnable(t *testing.T) {
	e := onBackend(t, "nftables")
	var b strings.Builder
	b.WriteString("default deny incoming\nallow 22/tcp\n")
	// Sources of the documentation ranges only, none adjacent: a few
	// IPv4 (203.0.113.0/24 here, 198.51.100.128/25 below), the rest
	// IPv6, 25,000 a list.
	for i := range 12500 {
		src := fmt.Sprintf("2001:db8:5%03x:%x::/64", i>>7, 2*(i&127))
		if i%100 == 0 {
			src = fmt.Sprintf("203.0.113.%d", 2*(i/100))
		}
		fmt.Fprintf(&b, "allow from %s\nallow from 2001:db8:%x:%x::/64\n", src, i>>7, 2*(i&127))
	}
	b.WriteString("allow from 192.0.2.3\nallow from 2001:db8::3\n")
	for i := range 12500 {
		src := fmt.Sprintf("2001:db8:6%03x:%x::/64", i>>7, 2*(i&127))
		if i%200 == 0 {
			src = fmt.Sprintf("198.51.100.%d", 128+2*(i/200))
		}
		fmt.Fprintf(&b, "deny from %s\ndeny from 2001:db8:f%x:%x::/64\n", src, i>>7, 2*(i&127))
	}
	writeFile(t, e.conf, b.String())
	probe := func(src, dst string) lab.Probe {
		return lab.Probe{Proto: "tcp", Src: netip.MustParseAddr(src), Dst: netip.MustParseAddrPort(dst)}
	}
	listed := []lab.Probe{probe("192.0.2.3", "192.0.2.1:80"), probe("2001:db8::3", "[2001:db8::1]:80")}
	other := probe("192.0.2.4", "192.0.2.1:80")
	ctx := context.Background()
	for round := range 3 {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var mu sync.Mutex
		var bad []string
		sent, nbad := 0, 0
		for _, p := range append(listed, listed...) {
			repeatUntil(&wg, stop, func() bool {
				out, err := e.topo.Client.Send(ctx, p)
				mu.Lock()
				sent++
				if err != nil || out != lab.Open {
					nbad++
					if len(bad) < 20 {
						bad = append(bad, fmt.Sprintf("%s: %s %v", p, out, err))
					}
				}
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
				return true
			})
		}
		var seq []lab.Outcome // the unlisted source's outcomes, repeats left out
		repeatUntil(&wg, stop, func() bool {
			out, _ := e.topo.Client.Send(ctx, other)
			mu.Lock()
			if len(seq) == 0 || seq[len(seq)-1] != out {
				seq = append(seq, out)
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			return true
		})
		e.mustMoat("enable")
		time.Sleep(200 * time.Millisecond)
		close(stop)
		wg.Wait()
		if nbad > 0 {
			t.Errorf("round %d: packets from a listed source dropped during the enable (%d of %d):\n%s", round, nbad, sent, strings.Join(bad, "\n"))
		}
		if len(seq) > 2 || (len(seq) == 2 && seq[0] != lab.Open) {
			t.Errorf("round %d: the unlisted source's outcomes, in turn: %v", round, seq)
		}
		t.Logf("round %d: %d listed probes, unlisted %v", round, sent, seq)
		e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/192.0.2.3 tcp 192.0.2.1:80 open")
		e.mustMoat("disable")
	}
}

// The same fault twice: the first enable killed between its stage and
// nft's transaction, then the next enable (which first undoes the killed
// one) killed at the very same point, then a status and an enable without
// the fault: the kernel holds the policy whole (real packets), no drift,
// nothing interrupted left.
func TestAdvKillBetweenStageAndRulesTwice(t *testing.T) {
	e := onBackend(t, "nftables")
	bin := nftKiller(t)
	writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\ndeny from 198.51.100.0/24\ndeny from 2001:db8:ffff::/48\nallow 80/tcp\n")
	for k := range 2 {
		out, err := e.moatWithErr(bin, "enable")
		if err == nil {
			t.Fatalf("kill %d: moat was not killed:\n%s", k, out)
		}
		table := e.run("server", "nft", "list", "table", "inet", "moat")
		if strings.Contains(table, "chain ") || !strings.Contains(table, "198.51.100.0/24") {
			t.Fatalf("kill %d did not fall between the two transactions:\n%s", k, table)
		}
		e.expect(false, "client tcp 192.0.2.1:443 open", "client tcp [2001:db8::1]:443 open")
		if st := e.mustMoat("status"); !strings.Contains(st, "INTERRUPTED") || strings.Contains(st, "changed outside moat") {
			t.Errorf("status after kill %d:\n%s", k, st)
		}
	}
	e.mustMoat("enable")
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout",
		"client tcp [2001:db8::1]:80 open")
	if st := e.mustMoat("status"); strings.Contains(st, "INTERRUPTED") || strings.Contains(st, "changed outside moat") || !strings.Contains(st, "active") {
		t.Errorf("status after the enable:\n%s", st)
	}
	e.mustMoat("allow", "8080/tcp")
	e.expect(false, "client tcp 192.0.2.1:8080 open")
	e.expectStatusClean("status after an edit")
}

// A staged table left by a killed first enable whose state was lost (the
// state directory removed, so no journal undoes it): the next enable finds
// a table of sets and no chains, does not stage over it, replaces it whole,
// and records it as moat's (no drift; real packets).
func TestAdvLeftoverStageWithoutJournal(t *testing.T) {
	e := onBackend(t, "nftables")
	bin := nftKiller(t)
	writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\ndeny from 198.51.100.0/24\ndeny from 2001:db8:ffff::/48\nallow 80/tcp\n")
	if out, err := e.moatWithErr(bin, "enable"); err == nil {
		t.Fatalf("moat was not killed:\n%s", out)
	}
	if err := os.RemoveAll(e.stateDir()); err != nil {
		t.Fatal(err)
	}
	// The policy changes meanwhile: the leftover sets hold the old one.
	writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\ndeny from 203.0.113.0/24\nallow 80/tcp\nallow from 192.0.2.3\n")
	e.mustMoat("enable", "--force")
	table := e.run("server", "nft", "list", "table", "inet", "moat")
	if strings.Contains(table, "198.51.100.0/24") || strings.Contains(table, "2001:db8:ffff::/48") {
		t.Errorf("the leftover staged sets' elements are still in moat's table:\n%s", table)
	}
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:443 timeout", "client/192.0.2.3 tcp 192.0.2.1:443 open")
	if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") || strings.Contains(st, "INTERRUPTED") {
		t.Errorf("status:\n%s", st)
	}
}

// moat's table made dormant by hand ('nft add table inet moat { flags
// dormant; }': one committed change, no rule or set touched) stops every
// base chain of it: nothing moat applied filters any more. Real packets
// show it; status must name it as a change made outside moat, and the next
// command must repair it.
func TestAdvDormantTableIsDrift(t *testing.T) {
	t.Parallel()
	dormantIsDrift(t, "nftables", "inet", "moat")
}

// The same on iptables-nft: the nftables tables that hold moat's iptables
// chains (here ip filter) made dormant by hand stop every rule of them,
// which iptables-save does not show: status names it, the next change
// wakes the table.
func TestAdvDormantIptablesTableIsDrift(t *testing.T) {
	t.Parallel()
	dormantIsDrift(t, "iptables", "ip", "filter")
}

// dormantIsDrift makes the nftables table FAMILY NAME dormant by hand
// under the policy moat applied with backend: the IPv4 port it closed
// opens, status names a change made outside moat, and the next change
// wakes the table.
func dormantIsDrift(t *testing.T, backend, family, name string) {
	requireBackend(t, backend)
	e := newEnv(t, backend, false)
	e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	e.expect(false, "client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout")
	e.run("server", "nft", "add", "table", family, name, "{ flags dormant; }")
	e.expect(false, "client tcp 192.0.2.1:443 open")
	if st := e.mustMoat("status"); !strings.Contains(st, "changed outside moat") {
		t.Errorf("status does not see %s %s made dormant:\n%s", family, name, st)
	}
	e.mustMoat("allow", "8080/tcp")
	e.expect(false, "client tcp 192.0.2.1:443 timeout", "client tcp 192.0.2.1:8080 open", "client tcp [2001:db8::1]:443 timeout")
	e.expectStatusClean("status after the repair")
}
