package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

func TestOwnerPID(t *testing.T) {
	for name, want := range map[string]int{
		"moatpps-srv-123-4": 123, "moatpps-1-2": 1, "moatppsx-77-1": 77,
		"moatpps-srv-0-4": 0, "moatpps-srv-x-4": 0, "moatpps-srv-12-": 0, "moatpps-12": 0, "moatpps": 0,
		"other-123-4": 0, "moatpps-srv-+12-4": 0, "moatpps-srv-012-4": 0, "moat-5-6": 0,
	} {
		pid, ok := ownerPID(name, "moatpps")
		if ok != (want > 0) || pid != want && ok {
			t.Errorf("ownerPID(%q) = %d, %v; want %d", name, pid, ok, want)
		}
	}
}

// A namespace left by a run killed with kill -9 (its owner's PID gone) is
// removed; one of a live process, and one of another name, are not.
func TestRemoveStale(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	prefix := fmt.Sprintf("moatstale%d", os.Getpid())
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	names := []string{
		fmt.Sprintf("%s-srv-%d-1", prefix, child.Process.Pid), // the killed run's
		fmt.Sprintf("%s-cli-%d-2", prefix, os.Getpid()),       // this live run's
		prefix + "-keep", // not of UniqueName's form
	}
	for _, n := range names {
		ns, err := NewNS(n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ns.Close() })
	}
	exists := func(n string) bool { _, err := os.Stat(filepath.Join(netnsDir, n)); return err == nil }
	// The owner still runs: nothing removed.
	if got, err := RemoveStale(prefix); err != nil || len(got) != 0 {
		t.Fatalf("with the owner alive: removed %q (%v)", got, err)
	}
	// kill -9: its namespace is stale.
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait() // killed: the error says so
	got, err := RemoveStale(prefix)
	if err != nil || !slices.Equal(got, names[:1]) {
		t.Errorf("removed %q (%v), want %q", got, err, names[:1])
	}
	if exists(names[0]) || !exists(names[1]) || !exists(names[2]) {
		t.Errorf("after the removal: %s %v, %s %v, %s %v", names[0], exists(names[0]), names[1], exists(names[1]), names[2], exists(names[2]))
	}
}
