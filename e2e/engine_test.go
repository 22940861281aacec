package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// moatPlain runs moat without --backend, as an admin types a plain command.
func (e *env) moatPlain(args ...string) (string, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"--config", e.conf, "--state-dir", e.stateDir()}, args...)
	out, err := e.topo.Server.Run(ctx, moatBin, full...)
	return string(out), err
}

// mustMoatPlain runs moatPlain and fails the test if moat fails.
func (e *env) mustMoatPlain(args ...string) string {
	e.t.Helper()
	out, err := e.moatPlain(args...)
	if err != nil {
		e.t.Fatalf("moat %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (e *env) policyFile() string {
	data, err := os.ReadFile(e.conf)
	if err != nil {
		e.t.Fatal(err)
	}
	return string(data)
}

const engineBase = "default deny incoming\nallow 22/tcp\n"

// Issue 7, defect 1: after any number of unconfirmed changes, the policy
// file and the kernel are exactly as before the first, and a later plain
// change does not bring a rolled-back rule back. confirm then says when
// the change was rolled back.
func TestRolledBackChangesStayGone(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply(engineBase)
		before := e.kernelState()
		for _, port := range []string{"443/tcp", "8080/tcp"} {
			out, err := e.moat("--confirm", "1s", "allow", port)
			if exitCode(err) != 4 {
				t.Fatalf("unconfirmed allow %s: %v\n%s", port, err, out)
			}
			if got := e.policyFile(); got != engineBase {
				t.Fatalf("after the rollback of %s the policy file is:\n%s", port, got)
			}
			if got := e.kernelState(); got != before {
				t.Fatalf("after the rollback of %s the kernel differs:\nbefore:\n%s\nafter:\n%s", port, before, got)
			}
		}
		out, err := e.moat("confirm")
		if err == nil || !strings.Contains(out, "was rolled back at") {
			t.Errorf("confirm after a rollback: %v\n%s", err, out)
		}
		e.mustMoat("allow", "80/tcp")
		if got, want := e.policyFile(), engineBase+"allow 80/tcp\n"; got != want {
			t.Errorf("policy file after a plain allow:\n%s", got)
		}
		e.expect(false, "client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:8080 timeout",
			"client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:22 open")
	})
}

// Issue 7, defect 5: a plain command keeps the backend that is applied; a
// change of backend is explicit, removes the old backend's rules, says so.
func TestPlainCommandKeepsBackend(t *testing.T) {
	requireBackend(t, "nftables")
	requireBackend(t, "iptables")
	t.Parallel()
	e := newEnv(t, "iptables", false)
	e.apply(engineBase)
	out, err := e.moatPlain("allow", "80/tcp")
	if err != nil {
		t.Fatalf("plain allow: %v\n%s", err, out)
	}
	if tables := e.run("server", "nft", "list", "tables"); strings.Contains(tables, "inet moat") {
		t.Errorf("a plain allow moved moat's rules to nftables:\n%s\n%s", out, tables)
	}
	if save := e.run("server", "iptables-save", "-t", "filter"); !strings.Contains(save, "-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n") {
		t.Errorf("moat's iptables rules are gone after a plain allow:\n%s", save)
	}
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:443 timeout")

	// The policy's backend line changes: explicit, and said.
	writeFile(t, e.conf, "backend nftables\n"+e.policyFile())
	out, err = e.moatPlain("enable")
	if err != nil || !strings.Contains(out, "Backend changed from iptables to nftables") {
		t.Errorf("enable with a new backend line: %v\n%s", err, out)
	}
	if save := e.run("server", "ip6tables-save", "-t", "filter"); strings.Contains(save, "MOAT-") {
		t.Errorf("iptables rules left after the switch:\n%s", save)
	}
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:443 timeout")
}

// Issue 8: the confirm watchdog never misses its own change: 50 short
// deadlines in a row, each rolled back, the kernel and file exactly back.
func TestConfirmRaceLoop(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply(engineBase)
		before := e.kernelState()
		left := 0
		for i := 0; i < 50; i++ {
			out, err := e.moat("--force", "--confirm", "200ms", "allow", "443/tcp")
			if exitCode(err) != 4 {
				t.Errorf("round %d: not rolled back: %v\n%s", i, err, out)
				left++
				_, _ = e.moat("rollback")
				continue
			}
			if got := e.policyFile(); got != engineBase {
				t.Errorf("round %d: policy file:\n%s", i, got)
				left++
			}
		}
		if got := e.kernelState(); got != before {
			t.Errorf("kernel after 50 rollbacks differs:\nbefore:\n%s\nafter:\n%s", before, got)
		}
		if left > 0 {
			t.Errorf("%d of 50 unconfirmed changes were left in place", left)
		}
		e.assertNoWatchdog()
	})
}

// Issue 8: 20 parallel 'moat allow' lose nothing; the file and the kernel
// agree afterwards (a reload changes nothing in the kernel).
func TestParallelAllows(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply(engineBase)
		var wg sync.WaitGroup
		outs := make([]string, 20)
		errs := make([]error, 20)
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				outs[i], errs[i] = e.moat("allow", fmt.Sprintf("%d/tcp", 10000+i))
			}()
		}
		wg.Wait()
		waited := false
		for i := range outs {
			if errs[i] != nil || !strings.Contains(outs[i], "Rule added") {
				t.Errorf("allow %d: %v\n%s", 10000+i, errs[i], outs[i])
			}
			waited = waited || strings.Contains(outs[i], "waiting for PID")
		}
		if !waited {
			t.Errorf("no command said it waited for another")
		}
		file := e.policyFile()
		for i := 0; i < 20; i++ {
			if !strings.Contains(file, fmt.Sprintf("allow %d/tcp\n", 10000+i)) {
				t.Errorf("allow %d/tcp lost from the file:\n%s", 10000+i, file)
			}
		}
		k := e.kernelState()
		e.mustMoat("reload")
		if k2 := e.kernelState(); k2 != k {
			t.Errorf("the kernel did not hold the file's rules:\nbefore reload:\n%s\nafter:\n%s", k, k2)
		}
	})
}

// Issue 8: a fail-closed restore stays fail-closed and loud: saved.json is
// not overwritten, the next restore fails closed again, a rule edit is not
// applied on top, until the admin applies a good policy.
func TestRestoreTwiceStaysFailClosed(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply(engineBase + "allow 80/tcp\n")
		saved := filepath.Join(e.stateDir(), "saved.json")
		writeFile(t, saved, "{not json")
		boot := newEnv(t, b, false)
		boot.conf, boot.dir = e.conf, e.dir
		for i := 1; i <= 2; i++ {
			out, err := boot.moat("restore")
			if err == nil || !strings.Contains(out, "fail-closed") {
				t.Fatalf("restore %d: %v\n%s", i, err, out)
			}
			if data, _ := os.ReadFile(saved); string(data) != "{not json" {
				t.Fatalf("restore %d rewrote saved.json:\n%s", i, data)
			}
			boot.expect(false, "client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open", "client tcp 192.0.2.1:80 timeout")
		}
		out, err := boot.moat("allow", "443/tcp")
		if err != nil || !strings.Contains(out, "FAIL-CLOSED") {
			t.Errorf("allow while fail-closed: %v\n%s", err, out)
		}
		boot.expect(false, "client tcp 192.0.2.1:443 timeout", "client tcp 192.0.2.1:80 timeout")
		boot.mustMoat("enable")
		boot.expect(false, "client tcp 192.0.2.1:443 open", "client tcp 192.0.2.1:80 open")
		if out, err := boot.moat("restore"); err != nil || !strings.Contains(out, "Restored") {
			t.Errorf("restore after a good enable: %v\n%s", err, out)
		}
	})
}

// Issue 7: reset without a terminal says to use --force.
func TestResetWithoutTerminal(t *testing.T) {
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	e.apply(engineBase)
	out, err := e.moat("reset")
	if err == nil || !strings.Contains(out, "--force") || strings.Contains(out, "EOF") {
		t.Errorf("reset without a terminal: %v\n%s", err, out)
	}
	if e.policyFile() != engineBase {
		t.Errorf("reset without an answer changed the policy")
	}
	e.expect(false, "client tcp 192.0.2.1:80 timeout")
}

// Issue 8: kill -9 of moat while it applies: whatever moment it dies, the
// next command finds the kernel, the policy file and moat's records in
// agreement (the change wholly there or wholly undone), and says so when it
// had to repair.
func TestKillDuringApply(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		var pol strings.Builder
		pol.WriteString(engineBase)
		for i := 0; i < 1500; i++ {
			fmt.Fprintf(&pol, "deny proto tcp from 203.0.113.%d to any port %d\n", i%250+1, 20000+i)
		}
		e.apply(pol.String())
		rng := rand.New(rand.NewPCG(1, uint64(len(b))))
		repaired := 0
		for i := 0; i < 12; i++ {
			before := e.policyFile()
			cmd := exec.Command(moatBin, "--config", e.conf, "--backend", b, "--state-dir", e.stateDir(), "allow", fmt.Sprintf("%d/tcp", 30000+i))
			if err := e.topo.Server.Start(cmd); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
			_ = cmd.Process.Signal(syscall.SIGKILL)
			_ = cmd.Wait()
			// The next command (one that changes nothing) repairs.
			out, _ := e.moat("rollback")
			if strings.Contains(out, "interrupted") {
				repaired++
			}
			after := e.policyFile()
			added := before + fmt.Sprintf("allow %d/tcp\n", 30000+i)
			if after != before && after != added {
				t.Fatalf("kill %d: the policy file is neither old nor new:\n%s", i, after)
			}
			k := e.kernelState()
			e.mustMoat("reload")
			if k2 := e.kernelState(); k2 != k {
				t.Fatalf("kill %d: the kernel did not hold the file's rules after the repair (%s):\n%s", i, out, lineDiff(k, k2))
			}
		}
		t.Logf("%d of 12 kills needed a repair", repaired)
	})
}

// lineDiff lists the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	for l, n := range count {
		switch {
		case n > 0:
			out = append(out, "- "+l)
		case n < 0:
			out = append(out, "+ "+l)
		}
	}
	if len(out) > 40 {
		out = append(out[:40], "...")
	}
	return strings.Join(out, "\n")
}

// disable with a change waiting for confirmation stops its watchdog at
// once (SIGTERM, after checking it is the watchdog), as confirm and
// rollback do.
func TestDisableStopsWatchdog(t *testing.T) {
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	e.apply(engineBase)
	e.mustMoat("--confirm", "60s", "--no-wait", "enable")
	if !e.pending() {
		t.Fatal("no pending change")
	}
	e.mustMoat("disable")
	e.assertNoWatchdog()
}

// Issue 8: a corrupted snapshot does not mean "leave it": at the deadline
// the rollback falls back to the policy applied before.
func TestCorruptSnapshotStillRollsBack(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply(engineBase)
		// 5s: the probe below must come before the deadline, also on
		// a loaded machine.
		e.mustMoat("--confirm", "5s", "--no-wait", "allow", "443/tcp")
		e.expect(false, "client tcp 192.0.2.1:443 open")
		writeFile(t, filepath.Join(e.stateDir(), "pending.snapshot"), "not a snapshot at all")
		start := time.Now()
		for e.pending() {
			if time.Since(start) > 20*time.Second {
				t.Fatal("the change with a corrupted snapshot was never rolled back")
			}
			time.Sleep(100 * time.Millisecond)
		}
		e.expect(false, "client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout", "client tcp 192.0.2.1:22 open")
		if got := e.policyFile(); got != engineBase {
			t.Errorf("policy file after the rollback:\n%s", got)
		}
		if log, _ := os.ReadFile(filepath.Join(e.stateDir(), "moat.log")); !strings.Contains(string(log), "snapshot") {
			t.Errorf("the watchdog's log does not say the snapshot was unusable:\n%s", log)
		}
	})
}

// Issue 8: 'moat confirm' never signals a process just because
// pending.json names its PID: the watchdog's start time and arguments
// must match.
func TestConfirmSignalsOnlyTheWatchdog(t *testing.T) {
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	e.apply(engineBase)
	e.mustMoat("--confirm", "60s", "--no-wait", "allow", "443/tcp")
	victim := exec.Command("sleep", "30")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = victim.Process.Kill(); _ = victim.Wait() })
	path := filepath.Join(e.stateDir(), "pending.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	if err := json.Unmarshal(data, &p); err != nil {
		t.Fatal(err)
	}
	wd := p["watchdog"].(map[string]any)
	realPID := int(wd["pid"].(float64))
	wd["pid"] = victim.Process.Pid
	data, _ = json.Marshal(p)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e.mustMoat("confirm")
	time.Sleep(200 * time.Millisecond)
	if err := victim.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("confirm signalled the process pending.json named: %v", err)
	}
	// The real watchdog stops by itself: its change is confirmed.
	waitFor(t, 5*time.Second, "the watchdog to exit", func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d/cmdline", realPID))
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", realPID))
		return err != nil || strings.Contains(string(st), ") Z ")
	})
	e.expect(false, "client tcp 192.0.2.1:443 open")
}
