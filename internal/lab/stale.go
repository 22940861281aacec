package lab

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
)

// netnsDir is where named namespaces live (`ip netns`, netns.NewNamed).
const netnsDir = "/run/netns"

// RemoveStale deletes the namespaces made by this package under a name
// of UniqueName (PREFIX-PID-N) starting with prefix, whose process PID is
// gone: those a run killed before its cleanup (kill -9 of a test or a
// benchmark, a timeout) left behind, which stay until deleted by hand.
// A namespace of a live process (this one's, another run's), and any
// name not of that form, is left alone. It returns the names removed.
func RemoveStale(prefix string) ([]string, error) {
	if prefix == "" || strings.ContainsAny(prefix, "/\x00") {
		return nil, fmt.Errorf("bad namespace prefix %q", prefix)
	}
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		name := e.Name()
		pid, ok := ownerPID(name, prefix)
		if !ok || processAlive(pid) {
			continue
		}
		if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete stale namespace %s: %w", name, err))
			continue
		}
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}

// ownerPID reads the PID of a name UniqueName made from a prefix that
// starts with prefix: PREFIX-PID-N, PID and N decimal.
func ownerPID(name, prefix string) (int, bool) {
	if !strings.HasPrefix(name, prefix) {
		return 0, false
	}
	f := strings.Split(name, "-")
	if len(f) < 3 {
		return 0, false
	}
	if _, err := strconv.ParseUint(f[len(f)-1], 10, 63); err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(f[len(f)-2])
	if err != nil || pid <= 0 || strconv.Itoa(pid) != f[len(f)-2] {
		return 0, false
	}
	// The prefix itself ends before the PID (UniqueName's prefix).
	if len(strings.Join(f[:len(f)-2], "-")) < len(prefix) {
		return 0, false
	}
	return pid, true
}

// processAlive says whether a process of that ID exists (kill with no
// signal: EPERM means it exists, owned by another user). In doubt, alive.
func processAlive(pid int) bool {
	if pid == os.Getpid() {
		return true
	}
	err := syscall.Kill(pid, 0)
	return !errors.Is(err, syscall.ESRCH)
}
