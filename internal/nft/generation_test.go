package nft

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The generation moves with a change of any table and stays without one
// (in a network namespace of the test's own).
func TestGeneration(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("no nft")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		g1, err := Generation()
		if err != nil {
			t.Error(err)
			return
		}
		if g2, err := Generation(); err != nil || g2 != g1 {
			t.Errorf("generation moved without a change: %d, %d, %v", g1, g2, err)
		}
		cmd := exec.Command("nft", "add table inet gentest")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("nft: %v %s", err, out)
			return
		}
		if g3, err := Generation(); err != nil || g3 == g1 {
			t.Errorf("generation did not move with a change: %d, %d, %v", g1, g3, err)
		}
	}()
	<-done
}

// The boot id is read once per process and is the kernel's, each time
// it is asked; GenerationScope names it.
func TestBootIDKept(t *testing.T) {
	data, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skip(err)
	}
	want := strings.TrimSpace(string(data))
	for i := 0; i < 2; i++ {
		if got, err := bootID(); err != nil || got != want {
			t.Fatalf("ask %d: %q (%v), want %q", i, got, err, want)
		}
	}
	if boot, _, ok := GenerationScope(); ok && boot != want {
		t.Errorf("GenerationScope names boot %q, want %q", boot, want)
	}
}
