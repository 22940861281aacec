package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Two guards on one state directory: the second refuses to start and says
// which PID holds it; after the first is killed with SIGKILL (no cleanup),
// a new one starts.
func TestGuardSingleInstance(t *testing.T) {
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	logFile := e.newFile("auth.log", "")
	e.apply("default deny incoming\nallow 22/tcp\nguard sshd maxretry 2 findtime 10m bantime 1h\n")
	stop := e.startGuard("--log-file", logFile)
	first := e.guard.Process.Pid
	start := time.Now()
	out, err := e.moat("guard", "--log-file", logFile)
	if err == nil {
		t.Fatalf("a second guard ran on the same state directory:\n%s", out)
	}
	for _, want := range []string{fmt.Sprintf("pid %d", first), e.stateDir()} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("the second guard waited instead of refusing")
	}
	// The first still works.
	appendLog(t, logFile, "Nov 25 11:40:01 srv sshd[812]: Failed password for root from 203.0.113.70 port 1 ssh2\n"+
		"Nov 25 11:40:02 srv sshd[812]: Failed password for root from 203.0.113.70 port 2 ssh2\n")
	waitFor(t, 5*time.Second, "the first guard stopped banning", func() bool {
		_, ok := e.bans()["203.0.113.70"]
		return ok
	})
	stop(syscall.SIGKILL)
	e.startGuard("--log-file", logFile)
	if e.guard.Process.Pid == first {
		t.Fatal("same process")
	}
}

// A symbolic link planted in the state directory is never followed: the
// guard refuses to start, naming the file and the fix, and the link's
// target is untouched. A state directory others can write to is refused
// by the guard and by apply, before the kernel changes.
func TestGuardHostileStateDir(t *testing.T) {
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	logFile := e.newFile("auth.log", "")
	e.apply("default deny incoming\nallow 22/tcp\nguard sshd maxretry 1 findtime 10m bantime 1h\n")
	victim := e.newFile("victim", "root:x:0:0::/root:/bin/bash\n")
	for _, name := range []string{"guard.journal", "guard.json"} {
		link := filepath.Join(e.stateDir(), name)
		if err := os.Symlink(victim, link); err != nil {
			t.Fatal(err)
		}
		out, err := e.moat("guard", "--log-file", logFile)
		if err == nil || !strings.Contains(out, link+" is a symbolic link") || !strings.Contains(out, "rm "+link) {
			t.Errorf("guard with %s a link: %v\n%s", name, err, out)
		}
		must(t, os.Remove(link))
	}
	// moat ban appends its bans to the history's journal: not through a
	// link either.
	link := filepath.Join(e.stateDir(), "guard.journal")
	must(t, os.Symlink(victim, link))
	out, _ := e.moat("ban", "203.0.113.71")
	if !strings.Contains(out, "symbolic link") {
		t.Errorf("moat ban with guard.journal a link:\n%s", out)
	}
	if data, _ := os.ReadFile(victim); string(data) != "root:x:0:0::/root:/bin/bash\n" {
		t.Errorf("the link's target was written: %q", data)
	}
	if fi, _ := os.Stat(victim); fi.Mode().Perm() != 0o644 {
		t.Errorf("the link's target changed mode: %v", fi.Mode())
	}
	must(t, os.Remove(link))

	// World-writable: refused with the fix; apply changes nothing.
	if err := os.Chmod(e.stateDir(), 0o777); err != nil {
		t.Fatal(err)
	}
	out, err := e.moat("guard", "--log-file", logFile)
	if err == nil || !strings.Contains(out, e.stateDir()) || !strings.Contains(out, "chmod 0700 "+e.stateDir()) {
		t.Errorf("guard in a 0777 state directory: %v\n%s", err, out)
	}
	before := e.kernelState()
	guardPolicy, _ := os.ReadFile(e.conf)
	must(t, os.WriteFile(e.conf, append(guardPolicy, "allow 80/tcp\n"...), 0o644))
	out, err = e.moat("apply", "--force")
	if err == nil || !strings.Contains(out, "writable by group or others") {
		t.Errorf("apply with a 0777 state directory: %v\n%s", err, out)
	}
	if after := e.kernelState(); after != before {
		t.Errorf("the kernel changed although the state directory was refused:\n%s", after)
	}
	must(t, os.Chmod(e.stateDir(), 0o700))
	must(t, os.WriteFile(e.conf, guardPolicy, 0o644))
	e.startGuard("--log-file", logFile)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
