package cli

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
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
	if _, _, err := findMetricsProgram([]string{beside, lib}); err == nil || !strings.Contains(err.Error(), "go build -o "+filepath.Join(beside, MetricsProgram)) {
		t.Errorf("no program anywhere: %v", err)
	}
	inLib := writeProgram(t, lib, 0o755)
	if got, _ := mustFind(t, beside, lib); got != inLib {
		t.Errorf("in the lib dir: %q", got)
	}
	writeProgram(t, beside, 0o777) // writable by anyone: skipped
	if got, _ := mustFind(t, beside, lib); got != inLib {
		t.Errorf("a world-writable one beside moat was not skipped: %q", got)
	}
	writeProgram(t, beside, 0o644) // not executable
	if _, _, err := findMetricsProgram([]string{beside}); err == nil || !strings.Contains(err.Error(), "not an executable file") {
		t.Errorf("a file that is not executable: %v", err)
	}
	besidePath := writeProgram(t, beside, 0o755)
	if got, _ := mustFind(t, beside, lib); got != besidePath {
		t.Errorf("beside moat comes first: %q", got)
	}
	if err := os.Chown(besidePath, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if got, _ := mustFind(t, beside, lib); got != inLib {
		t.Errorf("one owned by another user was not skipped: %q", got)
	}
}

// A program others could swap is never run: in a directory (or under
// one) others can write without the sticky bit, or behind a symbolic
// link (which anyone who can write a sticky directory can plant, pointing
// to any program of root's). The file found is returned open, and it is
// the one checked: a file renamed over the name afterwards is not it.
func TestFindMetricsProgramHostilePlaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the program must be owned by root or by the user running moat")
	}
	lib := t.TempDir()
	inLib := writeProgram(t, lib, 0o755)

	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	writeProgram(t, open, 0o755)
	if err := os.Chmod(open, 0o777); err != nil { // anyone may rename the program away and put theirs
		t.Fatal(err)
	}
	if got, _ := mustFind(t, open, lib); got != inLib {
		t.Errorf("a program in a directory anyone can write was taken: %q", got)
	}
	if err := os.Chmod(open, 0o777|os.ModeSticky); err != nil { // /tmp's mode: root's file stays root's
		t.Fatal(err)
	}
	if got, _ := mustFind(t, open, lib); got != filepath.Join(open, MetricsProgram) {
		t.Errorf("root's program in a sticky directory was not taken: %q", got)
	}

	parent := filepath.Join(t.TempDir(), "parent")
	under := filepath.Join(parent, "bin")
	if err := os.MkdirAll(under, 0o755); err != nil {
		t.Fatal(err)
	}
	writeProgram(t, under, 0o755)
	if err := os.Chmod(parent, 0o777); err != nil { // anyone may rename bin away
		t.Fatal(err)
	}
	if got, _ := mustFind(t, under, lib); got != inLib {
		t.Errorf("a program under a directory anyone can write was taken: %q", got)
	}

	linked := t.TempDir()
	if err := os.Symlink("/bin/sh", filepath.Join(linked, MetricsProgram)); err != nil {
		t.Fatal(err)
	}
	if got, _ := mustFind(t, linked, lib); got != inLib {
		t.Errorf("a symbolic link to another program of root's was taken: %q", got)
	}

	swapped := t.TempDir()
	path := writeProgram(t, swapped, 0o755)
	got, f := mustFind(t, swapped, lib)
	if got != path {
		t.Fatalf("found %q", got)
	}
	checked, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(swapped, "other")
	if err := os.WriteFile(other, []byte("#!/bin/sh\necho other\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, path); err != nil {
		t.Fatal(err)
	}
	now, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(checked, now) || now.Sys().(*syscall.Stat_t).Ino == inode(t, path) {
		t.Errorf("the file found is not the one checked once another was renamed over its name")
	}
}

func writeProgram(t *testing.T, dir string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, MetricsProgram)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// mustFind is findMetricsProgram in dirs, which must find a program; the
// file it opened is closed at the test's end.
func mustFind(t *testing.T, dirs ...string) (string, *os.File) {
	t.Helper()
	path, f, err := findMetricsProgram(dirs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return path, f
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// A copy of moat installed as moat-guard-metrics would run itself again
// for ever (same PID, a loop of execs): the moat it runs finds the mark
// execMetricsGuard leaves in its environment and refuses.
func TestMetricsProgramThatIsMoat(t *testing.T) {
	t.Setenv(metricsExecEnv, "/usr/lib/moat/"+MetricsProgram)
	saved := GuardMetrics
	GuardMetrics = nil
	t.Cleanup(func() { GuardMetrics = saved })
	a := &app{}
	err := a.runGuard(t.Context(), "", "", "127.0.0.1:9550")
	if err == nil || !strings.Contains(err.Error(), "ran moat again") {
		t.Errorf("moat run in the metrics program's place: %v", err)
	}
}
