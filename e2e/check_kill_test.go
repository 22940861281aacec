package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// heldCheck starts 'moat check' (iptables) held by strace at each start
// of iptables-restore (the check's --test), once its throwaway ipsets are
// made: it returns the command (in its own process group) once they are
// all in the kernel, with the check sets then there.
func (e *env) heldCheck(ctx context.Context, hold time.Duration) (*exec.Cmd, []string) {
	e.t.Helper()
	return e.heldCheckUnder(ctx, hold)
}

// heldCheckUnder is heldCheck with strace started by the command in
// under (a program and its arguments; none: strace itself).
func (e *env) heldCheckUnder(ctx context.Context, hold time.Duration, under ...string) (*exec.Cmd, []string) {
	e.t.Helper()
	before := checkSets(e)
	restore, err := exec.LookPath("iptables-restore")
	if err != nil {
		e.t.Fatal(err)
	}
	args := append(append([]string{}, under...), "strace", "-f", "-qq", "-o", "/dev/null", "-P", restore, "-e", "trace=execve",
		"-e", fmt.Sprintf("inject=execve:delay_enter=%d", hold.Microseconds()),
		moatBin, "--config", e.conf, "--backend", e.backend, "--state-dir", e.stateDir(), "check")
	var cmd *exec.Cmd
	if err := e.topo.Server.Do(func() error {
		cmd = exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		return cmd.Start()
	}); err != nil {
		e.t.Fatal(err)
	}
	for {
		// The early lists are made last (the policy has both).
		if now := checkSets(e); len(now) > len(before) && slices.ContainsFunc(now, func(n string) bool {
			return strings.HasSuffix(n, "-early6") && !slices.Contains(before, n)
		}) {
			return cmd, now
		}
		if ctx.Err() != nil {
			e.t.Fatal("the check never made its throwaway ipsets")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkSets are the names of the ipsets of checks (moatchk...).
func checkSets(e *env) []string {
	var out []string
	for _, n := range strings.Fields(e.run("server", "ipset", "list", "-n")) {
		if strings.HasPrefix(n, "moatchk") {
			out = append(out, n)
		}
	}
	return out
}

// 'moat check' (iptables) makes throwaway ipsets for iptables-restore
// --test and destroys them after; SIGKILLed in between it left them for
// good (moatchk... in 'ipset list', each check adding more). The next
// check, reload or disable destroys them; a check running at the same
// time keeps its own and succeeds.
func TestCheckKilledLeavesNoSets(t *testing.T) {
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace not installed (scripts/setup.sh installs it)")
	}
	t.Parallel()
	e := newEnv(t, "iptables", false)
	list := filepath.Join(e.dir, "bad.list")
	writeFile(t, list, "192.0.2.3\n2001:db8::3\n")
	e.apply(fmt.Sprintf("default deny incoming\nallow 80/tcp\nblocklist bad file %s\n", list))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	for _, next := range [][]string{{"check"}, {"reload"}, {"disable"}} {
		cmd, sets := e.heldCheck(ctx, 30*time.Second)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if got := checkSets(e); len(got) != len(sets) {
			t.Fatalf("the kill did not leave the check's sets (%v, then %v): the test proves nothing", sets, got)
		}
		out := e.mustMoat(next...)
		if got := checkSets(e); len(got) != 0 {
			t.Errorf("'moat %s' after a killed check left %v\n%s", strings.Join(next, " "), got, out)
		}
		if next[0] == "disable" {
			e.mustMoat("enable")
		}
	}
	e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:80 open")
	e.expectStatusClean("status after the killed checks")

	// Interrupted (Ctrl-C, SIGTERM) while iptables-restore tests: it
	// destroys its sets itself before it ends (as it did before; an
	// interrupt during their create: TestCheckCreateFailedRemovesItsSets).
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		// (A child held by strace dies only when strace lets it go: the
		// check then ends after the hold.)
		cmd, _ := e.heldCheck(ctx, 2*time.Second)
		// moat alone (strace's child), as a terminal's Ctrl-C or
		// systemd's stop would.
		children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		var pid int
		if _, serr := fmt.Sscan(string(children), &pid); err != nil || serr != nil {
			t.Fatalf("the check's PID: %v %v %q", err, serr, children)
		}
		_ = syscall.Kill(pid, sig)
		_ = cmd.Wait()
		if got := checkSets(e); len(got) != 0 {
			t.Errorf("a check interrupted by %v left %v", sig, got)
		}
	}

	// A check held mid-way while another check, a reload and a
	// disable run: its sets stay, it succeeds, and it destroys them.
	for _, other := range [][]string{{"check"}, {"reload"}, {"disable"}} {
		cmd, sets := e.heldCheck(ctx, 1500*time.Millisecond)
		out := e.mustMoat(other...)
		if got := checkSets(e); len(got) < len(sets) {
			t.Errorf("'moat %s' destroyed the sets of a check running meanwhile (%v, then %v)\n%s", strings.Join(other, " "), sets, got, out)
		}
		// (A check whose rules' jumps a disable removed meanwhile may
		// fail its test, which is not about the sets.)
		if err := cmd.Wait(); err != nil && other[0] != "disable" {
			t.Errorf("the check running during 'moat %s' failed: %v", strings.Join(other, " "), err)
		}
		if got := checkSets(e); len(got) != 0 {
			t.Errorf("sets left after the check finished: %v", got)
		}
		if other[0] == "disable" {
			e.mustMoat("enable")
		}
	}
	_ = os.Remove(list)
}
