package e2e

import (
	"context"
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
// metadata was: the next reload dropped the list (no metadata of its
// source vouched for the copy: "not fetched yet"), and the networks it
// blocks came in until the next update. The kill is real: strace holds
// every rename onto the list's metadata for a while (delay_enter), and
// the test kills the update once the list's copy is in place. A copy in
// place is loaded by the reload; then an update completes it.
func TestBlocklistFirstUpdateKilledBeforeMeta(t *testing.T) {
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace not installed (scripts/setup.sh installs it)")
	}
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		ls := e.dropListServed("192.0.2.3/32\n2001:db8::3/128\n", "")
		dropped := []string{"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout", "client tcp 192.0.2.1:80 open"}
		list := filepath.Join(e.stateDir(), "blocklists", "drop.list")
		meta := filepath.Join(e.stateDir(), "blocklists", "drop.json")

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
		for {
			if _, err := os.Stat(list); err == nil {
				// strace and the update at once (the update is in its
				// rename's delay: its metadata is not written).
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				break
			}
			if ctx.Err() != nil {
				t.Fatal("the update never saved its list")
			}
			time.Sleep(5 * time.Millisecond)
		}
		_ = cmd.Wait()
		if data, err := os.ReadFile(meta); err == nil && strings.Contains(string(data), `"sha256": "`) && !strings.Contains(string(data), `"sha256": ""`) {
			t.Fatalf("the kill came after the metadata: the test proves nothing\n%s", data)
		}
		e.expect(false, dropped...) // the kernel took it before the saves

		out := e.mustMoat("reload")
		e.expect(false, dropped...)
		if !strings.Contains(out, "first update was interrupted") {
			t.Errorf("the reload does not say the list's first update was interrupted:\n%s", out)
		}
		// An update completes it; nothing left to say after.
		if out, err := e.moatTLS(ls, "blocklist", "update"); err != nil {
			t.Fatalf("update after the kill: %v\n%s", err, out)
		}
		if out := e.mustMoat("reload"); strings.Contains(out, "interrupted") || strings.Contains(out, "not fetched") {
			t.Errorf("a reload after the completing update still warns:\n%s", out)
		}
		e.expect(false, dropped...)
		e.expectStatusClean("status sees drift after the completed update")
	})
}
