package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// heldMoat runs moat (args) under strace, which holds each of the given
// system calls on path for 1.5 s (delay_enter), and runs during() while
// the first of them is held: strace writes a call's start to its output
// when it stops it. It returns moat's output (stdout and stderr) and
// error once it ends.
func (e *env) heldMoat(path, calls string, during func(), args ...string) (string, error) {
	e.t.Helper()
	if _, err := exec.LookPath("strace"); err != nil {
		e.t.Skip("strace not installed (scripts/setup.sh installs it)")
	}
	trace := filepath.Join(e.dir, "strace.out")
	_ = os.Remove(trace)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	full := append([]string{"-f", "-qq", "-o", trace, "-P", path, "-e", "trace=" + calls,
		"-e", "inject=" + calls + ":delay_enter=1500000",
		moatBin, "--config", e.conf, "--backend", e.backend, "--state-dir", e.stateDir()}, args...)
	var cmd *exec.Cmd
	var out strings.Builder
	if err := e.topo.Server.Do(func() error {
		cmd = exec.CommandContext(ctx, "strace", full...)
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		return cmd.Start()
	}); err != nil {
		e.t.Fatal(err)
	}
	for {
		if data, _ := os.ReadFile(trace); strings.Contains(string(data), path) {
			break
		}
		if ctx.Err() != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
			e.t.Fatalf("moat %s never made the held call on %s:\n%s", strings.Join(args, " "), path, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	during()
	err := cmd.Wait()
	return out.String(), err
}

// A rule put by hand into moat's rules while `moat allow` runs, after its
// drift check found them to be what moat applied: before its read of the
// kernel (held at the journal's rename), or between that read and its
// commit (iptables: held at the open of the protected set's record). The
// commit was refused (the ruleset's generation moved) or planned from a
// read holding the hand rule, then made another way (iptables-restore,
// nft -f) that wrote moat's chains whole: "Rule added", the hand rule gone, status clean. Now the command
// checks moat's rules again and reports the drift as at its start (it
// then rewrites them whole), or the hand rule stays and status says so:
// never lost in silence. A change of another table in the same hold lets
// the edit go through with no drift reported, the other table kept.
func TestHandChangeWhileCommandHeld(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		holds := map[string][2]string{"after-check": {"intent.json", "rename,renameat,renameat2"}}
		if b == "iptables" {
			// After Apply's read of the kernel, before its commit (the
			// protected set's record). nftables: nft's
			// TestKernelCheckedChangeBeforeSend.
			holds["after-read"] = [2]string{"ipset.moat-protect4", "openat"}
		} else {
			// After the commit (the element store's record of the
			// protected set): the fingerprint must not vouch for it.
			holds["after-commit"] = [2]string{"nft-set.protect4", "openat"}
		}
		for name, hold := range holds {
			t.Run(name, func(t *testing.T) {
				t.Run("hand", func(t *testing.T) {
					t.Parallel()
					e := newEnv(t, b, false)
					e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
					hand := []string{"nft", "insert", "rule", "inet", "moat", "input", "tcp", "dport", "80", "drop", "comment", "HAND"}
					if b == "iptables" {
						hand = []string{"iptables", "-I", "MOAT-INPUT", "1", "-p", "tcp", "--dport", "80", "-m", "comment", "--comment", "HAND", "-j", "DROP"}
					}
					out, err := e.heldMoat(filepath.Join(e.stateDir(), hold[0]), hold[1], func() { e.run("server", hand...) }, "allow", "8080/tcp")
					if err != nil {
						t.Fatalf("moat allow: %v\n%s", err, out)
					}
					e.expect(false, "client tcp 192.0.2.1:8080 open")
					if strings.Contains(out, "changed outside moat") {
						return // reported (then rewritten whole, or kept)
					}
					status := e.mustMoat("status")
					if !strings.Contains(status, "changed outside moat") {
						t.Errorf("the hand rule is not reported, by the command nor by status:\n%s\nstatus:\n%s", out, status)
					}
					e.expect(false, "client tcp 192.0.2.1:80 timeout")
				})
				t.Run("foreign", func(t *testing.T) {
					t.Parallel()
					e := newEnv(t, b, false)
					e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
					foreign := []string{"nft", "add", "table", "inet", "genrace"}
					out, err := e.heldMoat(filepath.Join(e.stateDir(), hold[0]), hold[1], func() { e.run("server", foreign...) }, "allow", "8080/tcp")
					if err != nil {
						t.Fatalf("moat allow: %v\n%s", err, out)
					}
					if strings.Contains(out, "changed outside moat") || strings.Contains(out, "warning") {
						t.Errorf("a change of another table taken for drift:\n%s", out)
					}
					e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:8080 open")
					if status := e.mustMoat("status"); strings.Contains(status, "changed outside moat") {
						t.Errorf("status after the edit:\n%s", status)
					}
					e.run("server", "nft", "list", "table", "inet", "genrace")
				})
			})
		}
	})
}

// Another program committing all the time (a table made and deleted in
// a loop, as a busy Docker or fail2ban might) moves the generation
// between each command's drift check and its commit: every edit still
// goes through (Apply checks moat's rules again itself, and the command
// runs again a bounded number of times), with no drift reported.
func TestEditsDuringForeignChurn(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\n")
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var churns atomic.Int64
		repeatUntil(&wg, stop, func() bool {
			churns.Add(1)
			_, err := e.ns("server").Run(context.Background(), "nft", "add table inet churn; delete table inet churn")
			return err == nil
		})
		func() {
			defer func() { close(stop); wg.Wait() }()
			// Three edits, and more (6001, 6002, ...) until ten foreign
			// commits came during them: an edit takes about as long
			// as one churn, and three were once over after nine.
			for i := 0; i < 3 || churns.Load() < 10 && i < 40; i++ {
				port := []string{"80", "8080", "6000"}[min(i, 2)]
				if i > 2 {
					port = fmt.Sprint(6000 + i - 2)
				}
				out, err := e.moat("allow", port+"/tcp")
				if err != nil || strings.Contains(out, "changed outside moat") {
					t.Errorf("allow %s during the churn: %v\n%s", port, err, out)
				}
			}
		}()
		if n := churns.Load(); n < 10 {
			t.Errorf("only %d foreign commits during the edits", n)
		}
		e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:8080 open", "client tcp 192.0.2.1:6000 open")
		if status := e.mustMoat("status"); strings.Contains(status, "changed outside moat") {
			t.Errorf("status after the edits:\n%s", status)
		}
	})
}
