package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// moat links no metrics library: --metrics-listen runs moat-guard-metrics,
// found beside moat or in /usr/lib/moat, only when it is an executable
// file nobody else can write; otherwise the guard refuses, saying where it
// looked and how to get the program.
func TestFindMetricsProgram(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the program must be owned by root or by the user running moat")
	}
	beside, lib := t.TempDir(), t.TempDir()
	if _, err := findMetricsProgram([]string{beside, lib}); err == nil || !strings.Contains(err.Error(), "go build -o "+filepath.Join(beside, MetricsProgram)) {
		t.Errorf("no program anywhere: %v", err)
	}
	write := func(dir string, mode os.FileMode) string {
		path := filepath.Join(dir, MetricsProgram)
		if err := os.WriteFile(path, []byte("#!/bin/sh\n"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	inLib := write(lib, 0o755)
	if got, err := findMetricsProgram([]string{beside, lib}); err != nil || got != inLib {
		t.Errorf("in the lib dir: %q %v", got, err)
	}
	write(beside, 0o777) // writable by anyone: skipped
	if got, err := findMetricsProgram([]string{beside, lib}); err != nil || got != inLib {
		t.Errorf("a world-writable one beside moat was not skipped: %q %v", got, err)
	}
	write(beside, 0o644) // not executable
	if _, err := findMetricsProgram([]string{beside}); err == nil || !strings.Contains(err.Error(), "not an executable file") {
		t.Errorf("a file that is not executable: %v", err)
	}
	besidePath := write(beside, 0o755)
	if got, err := findMetricsProgram([]string{beside, lib}); err != nil || got != besidePath {
		t.Errorf("beside moat comes first: %q %v", got, err)
	}
	if err := os.Chown(besidePath, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if got, err := findMetricsProgram([]string{beside, lib}); err != nil || got != inLib {
		t.Errorf("one owned by another user was not skipped: %q %v", got, err)
	}
}
