package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Faults found by an adversarial review of the apply engine, proven with
// real packets on both backends.

// watchdogPID is the PID pending.json records for the watchdog.
func (e *env) watchdogPID() int {
	e.t.Helper()
	p := e.pendingFile()
	if p == nil {
		e.t.Fatal("no pending change")
	}
	wd, _ := p["watchdog"].(map[string]any)
	pid, _ := wd["pid"].(float64)
	if pid <= 0 {
		e.t.Fatalf("no watchdog in pending.json: %v", p)
	}
	return int(pid)
}

// waitRolledBack waits until the pending change is gone.
func (e *env) waitRolledBack(wait time.Duration) {
	e.t.Helper()
	waitFor(e.t, wait, "the unconfirmed change to be rolled back", func() bool { return !e.pending() })
}

// waitOutcome waits until the outcome of change id is recorded
// (last-outcome.json names it) and returns it. The record of the change
// goes before its outcome, the rollback's log line and the watchdog's
// exit: what a rollback writes last.
func (e *env) waitOutcome(id string, wait time.Duration) string {
	e.t.Helper()
	var o struct {
		ID      string `json:"id"`
		Outcome string `json:"outcome"`
	}
	waitFor(e.t, wait, "the outcome of change "+id, func() bool {
		data, err := os.ReadFile(filepath.Join(e.stateDir(), "last-outcome.json"))
		return err == nil && json.Unmarshal(data, &o) == nil && o.ID == id
	})
	return o.Outcome
}

// The deadline passes while the state directory's disk is full: the
// kernel must still go back. The "rolling back" mark was the rollback's
// first write, so the watchdog retried in silence (its log is on the same
// disk) and 443 stayed open.
func TestRollbackOnFullStateDisk(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		dir := e.stateDir()
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k,mode=0700"); err != nil {
			t.Skipf("mount tmpfs: %v", err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
		e.apply(engineBase)
		// 5s: the probes below must come before the deadline, also on
		// a loaded machine.
		e.mustMoat("--confirm", "5s", "--no-wait", "allow", "443/tcp")
		e.expect(false, "client tcp 192.0.2.1:443 open", "client tcp [2001:db8::1]:443 open")
		f, err := os.Create(filepath.Join(dir, "fill"))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		for {
			if _, err := f.Write(buf); err != nil {
				break
			}
		}
		_ = f.Close()
		e.waitRolledBack(10 * time.Second)
		e.expect(false, "client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout", "client tcp 192.0.2.1:22 open")
		if got := e.policyFile(); got != engineBase {
			t.Errorf("policy file after the rollback:\n%s", got)
		}
		if err := os.Remove(filepath.Join(dir, "fill")); err != nil {
			t.Fatal(err)
		}
		e.mustMoat("allow", "80/tcp")
		e.expect(false, "client tcp 192.0.2.1:443 timeout", "client tcp 192.0.2.1:80 open")
	})
}

// The watchdog is killed (kill -9, the OOM killer, 'pkill moat'): status
// says so, and the next state-changing command starts a new one that rolls
// the change back at its deadline. Nothing rolled it back before.
func TestKilledWatchdogIsReplaced(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply(engineBase)
		// 10s: status and the next command must come before the
		// deadline, also on a loaded machine.
		e.mustMoat("--confirm", "10s", "--no-wait", "allow", "443/tcp")
		if err := syscall.Kill(e.watchdogPID(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if out := e.mustMoat("status"); !strings.Contains(out, "is gone") {
			t.Errorf("status does not say the watchdog is gone:\n%s", out)
		}
		// Any state-changing command (this one is refused: a change is
		// pending) starts a new watchdog.
		out, _ := e.moat("allow", "8080/tcp")
		if !strings.Contains(out, "a new one") {
			t.Errorf("the new watchdog was not reported:\n%s", out)
		}
		e.assertNoWatchdogLeftAfter(func() { e.waitRolledBack(20 * time.Second) })
		e.expect(false, "client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout", "client tcp 192.0.2.1:22 open")
		if got := e.policyFile(); got != engineBase {
			t.Errorf("policy file after the rollback:\n%s", got)
		}
	})
}

func (e *env) assertNoWatchdogLeftAfter(fn func()) {
	e.t.Helper()
	fn()
	e.assertNoWatchdog()
}

// The host restarts while a change waits for confirmation (simulated: the
// pending record gets another boot ID, the namespace's ruleset is
// flushed, and 'moat restore' runs as at boot). The boot loads the
// ruleset saved before the change, and the change must leave moat.conf
// too: it stayed there and the next plain 'moat allow' opened 443 again.
func TestRestartDropsUnconfirmedChange(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply(engineBase)
		e.mustMoat("--confirm", "1h", "--no-wait", "allow", "443/tcp")
		e.expect(false, "client tcp 192.0.2.1:443 open")
		if err := syscall.Kill(e.watchdogPID(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		p := e.pendingFile()
		p["boot_id"] = "an-earlier-boot"
		data, _ := json.Marshal(p)
		writeFile(t, filepath.Join(e.stateDir(), "pending.json"), string(data))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		flush := [][]string{{"nft", "flush", "ruleset"}}
		if b == "iptables" {
			flush = [][]string{{"iptables", "-F"}, {"iptables", "-X"}, {"ip6tables", "-F"}, {"ip6tables", "-X"},
				{"iptables", "-t", "raw", "-F"}, {"iptables", "-t", "raw", "-X"}, {"ip6tables", "-t", "raw", "-F"}, {"ip6tables", "-t", "raw", "-X"},
				// Emptied first: a list:set (the early lists) holds its
				// members, and 'ipset destroy' refuses to destroy any set
				// while one is held ("in use by a kernel component").
				{"ipset", "flush"}, {"ipset", "destroy"}}
		}
		for _, c := range flush {
			if out, err := e.topo.Server.Run(ctx, c[0], c[1:]...); err != nil {
				t.Fatalf("%v: %v\n%s", c, err, out)
			}
		}
		e.mustMoat("restore")
		e.expect(false, "client tcp 192.0.2.1:443 timeout", "client tcp 192.0.2.1:22 open")
		if got := e.policyFile(); got != engineBase {
			t.Errorf("policy file after the restart:\n%s", got)
		}
		e.mustMoat("allow", "80/tcp")
		e.expect(false, "client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout", "client tcp 192.0.2.1:80 open")
		if out, _ := e.moat("confirm"); !strings.Contains(out, "restarted") {
			t.Errorf("confirm does not say the restart ended the change:\n%s", out)
		}
	})
}

// The watchdog is killed while the command that armed it waits in the
// foreground for the confirmation: the waiting command gets a new
// watchdog started, and the change is rolled back at its deadline (exit
// 4). It used to wait, then say the watchdog "did not act", and leave the
// change in force.
func TestKilledWatchdogWhileWaiting(t *testing.T) {
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	e.apply(engineBase)
	done := make(chan error, 1)
	go func() {
		_, err := e.moat("--confirm", "3s", "allow", "443/tcp")
		done <- err
	}()
	waitFor(t, 10*time.Second, "the pending change", func() bool {
		p := e.pendingFile()
		wd, _ := p["watchdog"].(map[string]any)
		pid, _ := wd["pid"].(float64)
		return pid > 0
	})
	if err := syscall.Kill(e.watchdogPID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !strings.Contains(fmt.Sprint(err), "exit status 4") {
			t.Errorf("the waiting command: %v, want exit 4 (rolled back)", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the waiting command did not return")
	}
	e.expect(false, "client tcp 192.0.2.1:443 timeout", "client tcp 192.0.2.1:22 open")
	e.assertNoWatchdog()
}
