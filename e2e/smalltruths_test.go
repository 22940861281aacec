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

// What status and the other messages say is true in the small things too:
// "1 rule", "disabled (routed)" while moat leaves routed traffic alone,
// "Guard: on" only while a guard runs, and the table names the policy file
// really used.
func TestStatusSmallTruths(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\nguard sshd\n")
		if out := e.mustMoat("enable"); !strings.Contains(out, ": 1 rule from "+e.conf) {
			t.Errorf("enable with one rule says:\n%s", out)
		}
		if out := e.mustMoat("check"); !strings.Contains(out, ": 1 rule, valid") {
			t.Errorf("check with one rule says:\n%s", out)
		}
		out := e.mustMoat("status", "verbose")
		for _, want := range []string{"Default: deny (incoming), allow (outgoing), disabled (routed)", "DISABLED routed",
			"Guard: NOT RUNNING although the policy has 'guard sshd'", "; 0 active bans"} {
			if !strings.Contains(out, want) {
				t.Errorf("status verbose lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "Guard: on") {
			t.Errorf("status says the guard is on while none runs:\n%s", out)
		}

		logFile := e.newFile("auth.log", "")
		stop := e.startGuard("--log-file", logFile)
		waitFor(t, 5*time.Second, "status never saw the running guard", func() bool {
			return strings.Contains(e.mustMoat("status", "verbose"), "Guard: on (pid ")
		})
		// A second guard on the same state is refused, naming the first.
		if out, err := e.moat("guard", "--log-file", logFile); err == nil || !strings.Contains(out, "another moat guard is running (pid ") {
			t.Errorf("a second guard: err %v\n%s", err, out)
		}
		stop(syscall.SIGKILL) // even kill -9 leaves no stale "on"
		if out := e.mustMoat("status", "verbose"); !strings.Contains(out, "Guard: NOT RUNNING") {
			t.Errorf("status after the guard was killed:\n%s", out)
		}

		// A routed default or a route rule turns routed filtering on.
		writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\nroute allow in on eth9 out on eth8\n")
		e.mustMoat("reload")
		if out := e.mustMoat("status", "verbose"); !strings.Contains(out, "allow (routed)") || strings.Contains(out, "disabled") {
			t.Errorf("status with a route rule:\n%s", out)
		}
		if b == "nftables" {
			if out := e.run("server", "nft", "list", "table", "inet", "moat"); !strings.Contains(out, "edit "+e.conf+", not this table") {
				t.Errorf("the table does not name --config %s:\n%s", e.conf, out)
			}
		}
	})
}

// Run as another user, a command that needs root says so in one line, and
// not with the raw errors of nft, iptables and ipset; commands that need no
// root still work.
func TestNonRootOneLine(t *testing.T) {
	t.Parallel()
	// t.TempDir's parent is closed to other users.
	dir, err := os.MkdirTemp("", "moat-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "moat.conf")
	writeFile(t, conf, "default deny incoming\nallow 22/tcp\n")
	// The built binary lives in a directory only root may enter.
	bin := filepath.Join(dir, "moat")
	// Copied by a child process: a file this process opens for writing is
	// inherited by every child the parallel tests fork until it execs,
	// and exec of a file open for writing fails with ETXTBSY ("text file
	// busy").
	if out, err := exec.Command("cp", moatBin, bin).CombinedOutput(); err != nil {
		t.Fatalf("cp %s %s: %v\n%s", moatBin, bin, err, out)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"--config", conf, "--state-dir", filepath.Join(dir, "state")}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, args := range [][]string{{"status"}, {"status", "verbose"}, {"enable"}, {"disable"}, {"reload"}, {"allow", "80/tcp"},
		{"delete", "1"}, {"bans"}, {"ban", "203.0.113.9"}, {"restore"}, {"rollback"}, {"guard"}, {"logging", "on"}, {"blocklist", "update"}} {
		out, err := run(args...)
		name := args[0]
		if name == "blocklist" {
			name += " " + args[1]
		}
		want := "moat: 'moat " + name + "' needs root: it reads or changes the firewall (run it with sudo)\n"
		if err == nil || out != want {
			t.Errorf("moat %v as nobody: err %v, output:\n%s\nwant exactly:\n%s", args, err, out, want)
		}
	}
	for _, args := range [][]string{{"check"}, {"show", "--backend", "nftables"}, {"explain", "in", "tcp", "to", "port", "22"},
		{"--dry-run", "allow", "80/tcp"}, {"guard", "check", "-"}, {"blocklist", "list"}, {"app", "list"}} {
		if out, err := run(args...); err != nil {
			t.Errorf("moat %v as nobody: %v\n%s", args, err, out)
		}
	}
}
