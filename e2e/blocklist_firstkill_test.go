package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The FIRST 'moat blocklist update' of a url list, SIGKILLed after the
// kernel took the list and its saved copy was written but before its
// final metadata was: the next reload dropped the list (no metadata of
// its source vouched for the copy: "not fetched yet"), and the networks
// it blocks came in until the next update. The kill is real: strace
// holds every rename onto the list's metadata for a while (delay_enter),
// and the test kills the update once that metadata vouches for the copy
// as 'saving' and the kernel change is committed: it is then in the
// delay of its final metadata's rename. A copy in place is loaded by the
// reload; then an update completes it.
func TestBlocklistFirstUpdateKilledBeforeMeta(t *testing.T) {
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace not installed (scripts/setup.sh installs it)")
	}
	eachBackend(t, func(t *testing.T, b string) {
		e, ls, dropped := firstUpdateEnv(t, b)
		list := filepath.Join(e.stateDir(), "blocklists", "drop.list")
		meta := filepath.Join(e.stateDir(), "blocklists", "drop.json")

		applied := filepath.Join(e.stateDir(), "applied.json")
		intent := filepath.Join(e.stateDir(), "intent.json")
		recBefore, err := os.ReadFile(applied)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		full := []string{"-f", "-qq", "-o", "/dev/null", "-P", meta,
			"-e", "trace=rename,renameat,renameat2",
			"-e", "inject=rename,renameat,renameat2:delay_enter=1500000",
			moatBin, "--config", e.conf, "--backend", e.backend, "--state-dir", e.stateDir(), "blocklist", "update"}
		var cmd *exec.Cmd
		if err := e.topo.Server.Do(func() error {
			cmd = exec.CommandContext(ctx, "strace", full...)
			cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+ls.caFile)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			return cmd.Start()
		}); err != nil {
			t.Fatal(err)
		}
		// Once the metadata vouches for the copy as 'saving' and the
		// kernel change is committed (its applied record written, its
		// journal removed), the update is at its copy's write or in the
		// delay of the rename of its final metadata.
		for {
			m, _ := os.ReadFile(meta)
			rec, _ := os.ReadFile(applied)
			_, ierr := os.Lstat(intent)
			if strings.Contains(string(m), `"saving": "`) && len(rec) > 0 && string(rec) != string(recBefore) && errors.Is(ierr, os.ErrNotExist) {
				break
			}
			if ctx.Err() != nil {
				t.Fatal("the update never got past its kernel change")
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond) // the copy's write, in the delay
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if _, err := os.Stat(list); err != nil {
			t.Fatalf("the killed update saved no list (%v): not the step this test is about", err)
		}
		if data, err := os.ReadFile(meta); err != nil || !strings.Contains(string(data), `"saving": "`) || !strings.Contains(string(data), `"sha256": ""`) {
			t.Fatalf("the kill did not come between the list and its final metadata (%v): the test proves nothing\n%s", err, data)
		}
		e.expect(false, dropped...) // the kernel took it before the saves

		e.reloadSaysFirstUpdateInterrupted(dropped)
		e.updateCompletesFirst(ls, dropped)
	})
}

// The FIRST 'moat blocklist update' of a url list, SIGKILLed after the
// kernel took the list and before any of its copy was saved (strace
// kills it at the removal of its apply's journal, which comes after the
// kernel batch and before the saves): the next reload dropped the list
// (no copy, "not fetched yet"), and the networks it blocks came in until
// the next update. The copy of a first save is written before the kernel
// changes, vouched for by its metadata's 'saving' checksum: the reload
// loads it, says so, and an update completes it.
func TestBlocklistFirstUpdateKilledAfterKernel(t *testing.T) {
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace not installed (scripts/setup.sh installs it)")
	}
	eachBackend(t, func(t *testing.T, b string) {
		e, ls, dropped := firstUpdateEnv(t, b)
		intent := filepath.Join(e.stateDir(), "intent.json")
		meta := filepath.Join(e.stateDir(), "blocklists", "drop.json")

		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		full := []string{"-f", "-qq", "-o", "/dev/null", "-P", intent, "-e", "trace=unlink,unlinkat",
			"-e", "inject=unlink,unlinkat:error=EIO:signal=SIGKILL",
			moatBin, "--config", e.conf, "--backend", e.backend, "--state-dir", e.stateDir(), "blocklist", "update"}
		var out []byte
		err := e.topo.Server.Do(func() error {
			cmd := exec.CommandContext(ctx, "strace", full...)
			cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+ls.caFile)
			var err error
			out, err = cmd.CombinedOutput()
			return err
		})
		if err == nil {
			t.Fatalf("the update was not killed at its journal's removal:\n%s", out)
		}
		if _, err := os.Lstat(intent); err != nil {
			t.Fatalf("the killed update left no journal (%v): not the step this test is about\n%s", err, out)
		}
		if data, err := os.ReadFile(meta); err == nil && strings.Contains(string(data), `"sha256": "`) && !strings.Contains(string(data), `"sha256": ""`) {
			t.Fatalf("the kill came after the metadata: the test proves nothing\n%s", data)
		}
		e.expect(false, dropped...) // the kernel took it

		e.reloadSaysFirstUpdateInterrupted(dropped)
		e.expectStatusClean("status sees drift after the reload")
		if l := e.mustMoat("blocklist", "list"); !strings.Contains(l, "first update was interrupted") || !strings.Contains(strings.Join(strings.Fields(l), " "), "drop 2 ") {
			t.Errorf("blocklist list after the killed first update:\n%s", l)
		}
		e.updateCompletesFirst(ls, dropped)
	})
}

// A url list's first copy, saved before the kernel takes it, is saved
// under moat's lock after the drift check that runs first: saved before,
// the full comparison (no fingerprint to vouch for the kernel) compared
// the kernel without the list with a copy holding it, and said moat's
// rules were changed outside moat, of the update's own copy. Both
// backends; status clean after.
func TestBlocklistFirstUpdateNoFalseDrift(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e, ls, dropped := firstUpdateEnv(t, b)
		for _, f := range []string{"kernel-fingerprint.json", "kernel-chains"} {
			if err := os.Remove(filepath.Join(e.stateDir(), f)); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
		out, err := e.moatTLS(ls, "blocklist", "update")
		if err != nil || !strings.Contains(out, "drop: 2 networks (+2 -0)") {
			t.Fatalf("first update: %v\n%s", err, out)
		}
		if strings.Contains(out, "outside moat") {
			t.Errorf("the first update took its own copy for a change outside moat:\n%s", out)
		}
		e.expect(false, dropped...)
		e.expectStatusClean("status after the first update")
	})
}

// firstUpdateEnv is an env of backend b whose policy holds a url list,
// drop, not fetched yet, of two networks (192.0.2.3, 2001:db8::3) its
// list server serves; dropped is what real traffic shows while the list
// is in force (its networks dropped, the client's usual address let in).
func firstUpdateEnv(t *testing.T, b string) (e *env, ls *listServer, dropped []string) {
	t.Helper()
	e = newEnv(t, b, false)
	return e, e.dropListServed("192.0.2.3/32\n2001:db8::3/128\n", ""),
		[]string{"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout", "client tcp 192.0.2.1:80 open"}
}

// reloadSaysFirstUpdateInterrupted reloads after a url list's first update
// was killed: the list's saved copy is loaded (the traffic is as dropped
// says) and the reload says the first update was interrupted.
func (e *env) reloadSaysFirstUpdateInterrupted(dropped []string) {
	e.t.Helper()
	out := e.mustMoat("reload")
	e.expect(false, dropped...)
	if !strings.Contains(out, "first update was interrupted") {
		e.t.Errorf("the reload does not say the list's first update was interrupted:\n%s", out)
	}
}

// updateCompletesFirst runs the update that completes an interrupted
// first update: nothing is left to say after, in a reload or in status,
// and the traffic is as dropped says.
func (e *env) updateCompletesFirst(ls *listServer, dropped []string) {
	e.t.Helper()
	if out, err := e.moatTLS(ls, "blocklist", "update"); err != nil {
		e.t.Fatalf("update after the kill: %v\n%s", err, out)
	}
	if out := e.mustMoat("reload"); strings.Contains(out, "interrupted") || strings.Contains(out, "not fetched") {
		e.t.Errorf("a reload after the completing update still warns:\n%s", out)
	}
	e.expect(false, dropped...)
	e.expectStatusClean("status sees drift after the completed update")
}
