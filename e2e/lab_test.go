package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// `moat lab`, the README's demo, passes on both backends and leaves no
// namespace behind.
func TestLabDemo(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		cmd := exec.Command(moatBin, "--backend", b, "lab")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("moat lab: %v\n%s", err, out)
		}
		for _, want := range []string{"IPv4 ssh client→server tcp/22", "IPv6 ping client→server", "All observations match the policy.",
			"$ moat status verbose", "Backend: " + b} {
			if !bytes.Contains(out, []byte(want)) {
				t.Errorf("lab output lacks %q:\n%s", want, out)
			}
		}
		if n := strings.Count(string(out), " ok\n"); n != 14 {
			t.Errorf("%d probes ok, want 14:\n%s", n, out)
		}
		assertNoNamespaces(t, cmd.Process.Pid)
	})
}

// Ctrl-C in the middle of the lab still removes its namespaces.
func TestLabCleansUpOnInterrupt(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(moatBin, "lab")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt once the namespaces exist.
	deadline := time.Now().Add(10 * time.Second)
	for !hasNamespaces(cmd.Process.Pid) {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill() // the test fails anyway
			t.Fatalf("lab made no namespaces:\n%s", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if err == nil {
		t.Errorf("lab succeeded although interrupted:\n%s", out.String())
	}
	// Exit code -1 would mean the signal killed it, skipping the cleanup.
	if code := cmd.ProcessState.ExitCode(); code <= 0 {
		t.Errorf("lab exit code %d after SIGINT, want a clean non-zero exit:\n%s", code, out.String())
	}
	assertNoNamespaces(t, cmd.Process.Pid)
}

func hasNamespaces(pid int) bool {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "moatlab-") && strings.Contains(e.Name(), "-"+strconv.Itoa(pid)+"-") {
			return true
		}
	}
	return false
}

func assertNoNamespaces(t *testing.T, pid int) {
	t.Helper()
	if hasNamespaces(pid) {
		t.Errorf("namespaces of lab process %d left in /run/netns", pid)
	}
}
