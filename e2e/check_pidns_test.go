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

// A 'moat check' in another PID namespace sharing the network namespace
// (a container with the host's network): its throwaway ipsets were named
// after its PID there, which this namespace's /proc judged as another
// process or none, so a check, reload or disable run here meanwhile took
// them for a killed check's and destroyed them under it, and its check
// failed. Now a check holds an abstract unix socket (the network
// namespace's, as the sets are) while it runs: its sets are left alone
// and it succeeds; killed, its sets are destroyed by the next command.
func TestCheckInOtherPIDNamespace(t *testing.T) {
	for _, p := range []string{"strace", "unshare"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s not installed", p)
		}
	}
	t.Parallel()
	e := newEnv(t, "iptables", false)
	e.apply("default deny incoming\nallow 80/tcp\ndeny from 192.0.2.3\ndeny from 2001:db8::3\n")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	held := func(hold time.Duration) (*exec.Cmd, []string) {
		t.Helper()
		return e.heldCheckUnder(ctx, hold, "unshare", "--pid", "--fork", "--mount-proc")
	}
	for _, other := range [][]string{{"check"}, {"reload"}} {
		cmd, sets := held(1500 * time.Millisecond)
		out := e.mustMoat(other...)
		if got := checkSets(e); len(got) < len(sets) {
			t.Errorf("'moat %s' destroyed the sets of a check running in another PID namespace (%v, then %v)\n%s", strings.Join(other, " "), sets, got, out)
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("the check in another PID namespace during 'moat %s' failed: %v", strings.Join(other, " "), err)
		}
		if got := checkSets(e); len(got) != 0 {
			t.Errorf("sets left after the check finished: %v", got)
		}
	}
	// Killed: the next command destroys what it left.
	cmd, sets := held(30 * time.Second)
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Wait()
	if got := checkSets(e); len(got) != len(sets) {
		t.Fatalf("the kill did not leave the check's sets (%v, then %v): the test proves nothing", sets, got)
	}
	// unshare itself dies at once; the processes of its namespace a
	// moment later.
	for deadline := time.Now().Add(10 * time.Second); running(e.stateDir()); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the killed check still runs")
		}
	}
	e.mustMoat("check")
	if got := checkSets(e); len(got) != 0 {
		t.Errorf("'moat check' after a killed check in another PID namespace left %v", got)
	}
}

// running says whether a process whose command line names dir runs.
func running(dir string) bool {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(data), dir) && !strings.Contains(string(data), "ipset") {
			if stat, err := os.ReadFile(filepath.Join(filepath.Dir(p), "stat")); err == nil && !strings.Contains(string(stat), ") Z ") {
				return true
			}
		}
	}
	return false
}
