package cli

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// fakeStarter is a watchdogStarter over a fake root, runner and setsid.
type fakeStarter struct {
	watchdogStarter
	calls   [][]string
	setsids int
	logBuf  bytes.Buffer
	runErr  error  // systemd-run's error
	mainPID string // systemctl show's output
}

func newFakeStarter(t *testing.T, systemd bool) *fakeStarter {
	t.Helper()
	root := t.TempDir()
	if systemd {
		if err := os.MkdirAll(filepath.Join(root, "run", "systemd", "system"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, pid := range []string{"self", "1"} {
		dir := filepath.Join(root, "proc", pid, "ns")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, ns := range []string{"net", "mnt"} {
			if err := os.Symlink(ns+":[4026531833]", filepath.Join(dir, ns)); err != nil {
				t.Fatal(err)
			}
		}
	}
	f := &fakeStarter{mainPID: "4242\n"}
	f.watchdogStarter = watchdogStarter{
		root:     root,
		lookPath: func(name string) (string, error) { return "/usr/bin/" + name, nil },
		run: func(_ context.Context, name string, args ...string) ([]byte, error) {
			f.calls = append(f.calls, append([]string{name}, args...))
			switch {
			case strings.HasSuffix(name, "systemd-run"):
				if f.runErr != nil {
					return []byte("Failed to start transient service unit"), f.runErr
				}
				return nil, nil
			case name == "systemctl" && len(args) > 0 && args[0] == "show":
				return []byte(f.mainPID), nil
			}
			return nil, nil
		},
		setsid: func(string, []string, *os.File) (int, error) { f.setsids++; return 777, nil },
		env: func(k string) string {
			return map[string]string{"MOAT_APPS_DIRS": "/etc/moat/apps.d", "GOGC": "bad\nvalue"}[k]
		},
		getwd: func() (string, error) { return "/root", nil },
	}
	f.log = slog.New(slog.NewTextHandler(&f.logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return f
}

var wdArgs = []string{"--state-dir", "/var/lib/moat", "--config", "moat.conf", "watchdog", "0123456789abcdef"}

func TestWatchdogNoSystemdUsesSetsid(t *testing.T) {
	f := newFakeStarter(t, false)
	pid, err := f.start("/usr/sbin/moat", wdArgs, "0123456789abcdef", nil, "/var/lib/moat/moat.log")
	if err != nil || pid != 777 || f.setsids != 1 || len(f.calls) != 0 {
		t.Fatalf("pid %d err %v setsids %d calls %q: want the setsid start and no systemd-run", pid, err, f.setsids, f.calls)
	}
}

// /run/systemd/system must be a directory (sd_booted): a file is not systemd.
func TestWatchdogSystemdMarkerFileIsNotSystemd(t *testing.T) {
	f := newFakeStarter(t, false)
	if err := os.MkdirAll(filepath.Join(f.root, "run", "systemd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.root, "run", "systemd", "system"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := f.start("/usr/sbin/moat", wdArgs, "0123456789abcdef", nil, "/var/lib/moat/moat.log"); err != nil || f.setsids != 1 || len(f.calls) != 0 {
		t.Fatalf("err %v setsids %d calls %q", err, f.setsids, f.calls)
	}
}

func TestWatchdogSystemdRunArgv(t *testing.T) {
	f := newFakeStarter(t, true)
	pid, err := f.start("/usr/sbin/moat", wdArgs, "0123456789abcdef", nil, "/var/lib/moat/moat.log")
	if err != nil || pid != 4242 {
		t.Fatalf("pid %d err %v: want the unit's main PID 4242", pid, err)
	}
	if f.setsids != 0 {
		t.Fatal("setsid start as well as the unit")
	}
	if len(f.calls) != 2 {
		t.Fatalf("calls %q: want systemd-run then systemctl show", f.calls)
	}
	run := f.calls[0]
	unit := strings.TrimPrefix(run[1], "--unit=")
	if !regexp.MustCompile(`^moat-rollback-0123456789abcdef-[0-9a-f]{8}$`).MatchString(unit) {
		t.Fatalf("unit name %q", run[1])
	}
	want := []string{"/usr/bin/systemd-run", "--unit=" + unit, "--description=moat rollback watchdog (change 0123456789abcdef)",
		"--collect", "--quiet", "--property=Type=exec",
		"--property=StandardOutput=append:/var/lib/moat/moat.log", "--property=StandardError=append:/var/lib/moat/moat.log",
		"--working-directory=/root", "--setenv=MOAT_APPS_DIRS=/etc/moat/apps.d", // GOGC with a newline is left out
		"--", "/usr/sbin/moat"}
	want = append(want, wdArgs...)
	if !slices.Equal(run, want) {
		t.Fatalf("systemd-run argv\n got %q\nwant %q", run, want)
	}
	show := []string{"systemctl", "show", "--property=MainPID", "--value", "--", unit + ".service"}
	if !slices.Equal(f.calls[1], show) {
		t.Fatalf("systemctl argv %q, want %q", f.calls[1], show)
	}
	// Each start has a unit of its own (a restarted watchdog never meets
	// its predecessor's unit).
	f.calls = nil
	if _, err := f.start("/usr/sbin/moat", wdArgs, "0123456789abcdef", nil, "/var/lib/moat/moat.log"); err != nil {
		t.Fatal(err)
	}
	if f.calls[0][1] == run[1] {
		t.Fatalf("two starts share the unit name %q", run[1])
	}
}

func TestWatchdogSystemdRunFailsFallsBack(t *testing.T) {
	f := newFakeStarter(t, true)
	f.runErr = errors.New("exit status 1")
	pid, err := f.start("/usr/sbin/moat", wdArgs, "0123456789abcdef", nil, "/var/lib/moat/moat.log")
	if err != nil || pid != 777 || f.setsids != 1 {
		t.Fatalf("pid %d err %v setsids %d: want the setsid fallback", pid, err, f.setsids)
	}
	if !strings.Contains(f.logBuf.String(), "setsid") || !strings.Contains(f.logBuf.String(), "Failed to start transient") {
		t.Fatalf("the fallback is not logged with systemd-run's reason: %q", f.logBuf.String())
	}
}

func TestWatchdogNoSystemdRunFallsBack(t *testing.T) {
	f := newFakeStarter(t, true)
	f.lookPath = func(string) (string, error) { return "", errors.New("not found") }
	if pid, err := f.start("/usr/sbin/moat", wdArgs, "0123456789abcdef", nil, "/var/lib/moat/moat.log"); err != nil || pid != 777 || len(f.calls) != 0 {
		t.Fatalf("pid %d err %v calls %q", pid, err, f.calls)
	}
}

// A unit whose main process cannot be found is stopped before the
// fallback, so there are never two watchdogs.
func TestWatchdogNoMainPIDStopsUnitAndFallsBack(t *testing.T) {
	for _, out := range []string{"0\n", "garbage\n"} {
		f := newFakeStarter(t, true)
		f.mainPID = out
		pid, err := f.start("/usr/sbin/moat", wdArgs, "0123456789abcdef", nil, "/var/lib/moat/moat.log")
		if err != nil || pid != 777 || f.setsids != 1 {
			t.Fatalf("MainPID %q: pid %d err %v setsids %d", out, pid, err, f.setsids)
		}
		unit := strings.TrimPrefix(f.calls[0][1], "--unit=")
		if len(f.calls) != 3 || !slices.Equal(f.calls[2], []string{"systemctl", "stop", "--", unit + ".service"}) {
			t.Fatalf("MainPID %q: calls %q: want the unit stopped", out, f.calls)
		}
	}
}

// Hostile text (an ID, a state directory) never reaches a unit name or
// property unsanitized.
func TestWatchdogUnitHostileText(t *testing.T) {
	f := newFakeStarter(t, true)
	id := "../x y;\n--property=User=nobody" + strings.Repeat("z", 300)
	if _, err := f.start("/usr/sbin/moat", wdArgs, id, nil, "/tmp/state dir/moat.log"); err != nil {
		t.Fatal(err)
	}
	run := f.calls[0]
	if !regexp.MustCompile(`^--unit=moat-rollback-[A-Za-z0-9_]{1,64}-[0-9a-f]{8}$`).MatchString(run[1]) {
		t.Fatalf("unit %q", run[1])
	}
	dash := slices.Index(run, "--")
	for _, a := range run[1:dash] {
		if strings.Contains(a, "StandardOutput") || strings.HasPrefix(a, "--working-directory=") && a != "--working-directory=/root" || strings.ContainsAny(a, "\n ;") && !strings.HasPrefix(a, "--description=moat rollback watchdog (change ") {
			t.Fatalf("unsafe systemd-run option %q", a)
		}
	}
}

// A working directory that cannot be given to the unit as it is (hostile
// text, or none) starts the watchdog with setsid, in this directory: a
// unit started elsewhere reads a relative --state-dir and --config (and
// the policy path the pending change records) as other files, finds no
// change waiting and never rolls it back. It left the directory out and
// started the unit in / all the same.
func TestWatchdogUnitUnsafeWorkingDirUsesSetsid(t *testing.T) {
	for _, wd := range []func() (string, error){
		func() (string, error) { return "/tmp/a b\n--property=ExecStartPre=/bin/sh", nil },
		func() (string, error) { return "/root/my configs", nil },
		func() (string, error) { return "", errors.New("getwd: no such file or directory") },
	} {
		f := newFakeStarter(t, true)
		f.getwd = wd
		pid, err := f.start("/usr/sbin/moat", wdArgs, "0123456789abcdef", nil, "/var/lib/moat/moat.log")
		if err != nil || pid != 777 || f.setsids != 1 || len(f.calls) != 0 {
			dir, _ := wd()
			t.Fatalf("working directory %q: pid %d err %v setsids %d calls %q: want the setsid start, no unit", dir, pid, err, f.setsids, f.calls)
		}
		if !strings.Contains(f.logBuf.String(), "working directory") {
			t.Fatalf("the fallback does not say why: %q", f.logBuf.String())
		}
	}
}

// moat run in another network or mount namespace than PID 1 ('ip netns
// exec', the tests) keeps the watchdog there: a unit would roll back the
// host's firewall. Unreadable namespaces count as different.
func TestWatchdogOtherNamespaceUsesSetsid(t *testing.T) {
	for _, tc := range []struct{ pid, ns, link string }{
		{"self", "net", "net:[4026532999]"}, {"self", "mnt", "mnt:[4026532999]"}, {"1", "net", ""}, {"1", "mnt", ""},
	} {
		f := newFakeStarter(t, true)
		p := filepath.Join(f.root, "proc", tc.pid, "ns", tc.ns)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if tc.link != "" {
			if err := os.Symlink(tc.link, p); err != nil {
				t.Fatal(err)
			}
		}
		pid, err := f.start("/usr/sbin/moat", wdArgs, "0123456789abcdef", nil, "/var/lib/moat/moat.log")
		if err != nil || pid != 777 || f.setsids != 1 || len(f.calls) != 0 {
			t.Fatalf("%s %s %q: pid %d err %v setsids %d calls %q: want setsid only", tc.pid, tc.ns, tc.link, pid, err, f.setsids, f.calls)
		}
		if !strings.Contains(f.logBuf.String(), "namespace") {
			t.Fatalf("the reason is not logged: %q", f.logBuf.String())
		}
	}
}

// The watchdog gets what its rollback reads, by absolute names: the
// state directory, the policy file and sshd's configuration (the
// fail-closed last resort opens sshd's ports from it). --sshd-config was
// left out, and relative names were passed as given.
func TestWatchdogArgs(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	a := &app{stateDir: "state", config: "moat.conf", sshdConfig: "sshd/custom_config", verbose: true}
	got := a.watchdogArgs("0123456789abcdef")
	want := []string{"--state-dir", filepath.Join(dir, "state"), "--config", filepath.Join(dir, "moat.conf"),
		"--sshd-config", filepath.Join(dir, "sshd/custom_config"), "--verbose", "watchdog", "0123456789abcdef"}
	if !slices.Equal(got, want) {
		t.Fatalf("watchdog args\n got %q\nwant %q", got, want)
	}
}
