package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// watchdogStarter starts 'moat watchdog ID' so that it outlives the
// command and the SSH session that ran it. Under systemd it runs as its
// own transient service (systemd-run): a logind that kills a session's
// processes when the session ends (KillUserProcesses=yes, 'loginctl
// terminate-session', the session scope stopped) kills everything in the
// session's cgroup, setsid or not, and the change that cut the session
// would then never be rolled back. Without systemd, or when systemd-run
// fails, it falls back to a setsid child (own session, no terminal).
type watchdogStarter struct {
	root     string                                                                 // "/" (tests: a fake root for run/systemd/system)
	lookPath func(string) (string, error)                                           // exec.LookPath
	run      func(ctx context.Context, name string, args ...string) ([]byte, error) // systemd-run, systemctl
	setsid   func(self string, args []string, logf *os.File) (int, error)           // the fallback
	log      *slog.Logger
	env      func(string) string // os.Getenv
	getwd    func() (string, error)
}

// systemdBooted is sd_booted(3): /run/systemd/system is a directory.
func (s *watchdogStarter) systemdBooted() bool {
	fi, err := os.Stat(filepath.Join(s.root, "run", "systemd", "system"))
	return err == nil && fi.IsDir()
}

// initNamespaces checks that moat runs in the network and mount
// namespaces of PID 1: a systemd unit runs in those, and a watchdog there
// would roll back another firewall than the one changed (moat run by 'ip
// netns exec', as the tests do) or read other files. Unreadable counts as
// different.
func (s *watchdogStarter) initNamespaces() error {
	for _, ns := range []string{"net", "mnt"} {
		self, err := os.Readlink(filepath.Join(s.root, "proc", "self", "ns", ns))
		if err != nil {
			return fmt.Errorf("own %s namespace: %w", ns, err)
		}
		pid1, err := os.Readlink(filepath.Join(s.root, "proc", "1", "ns", ns))
		if err != nil {
			return fmt.Errorf("PID 1's %s namespace: %w", ns, err)
		}
		if self != pid1 {
			return fmt.Errorf("moat runs in %s, not in systemd's %s namespace %s (a unit would act there)", self, ns, pid1)
		}
	}
	return nil
}

// start starts the watchdog and returns its PID. logf is the watchdog's
// log, opened (and checked) in the state directory; logPath is its name.
func (s *watchdogStarter) start(self string, args []string, id string, logf *os.File, logPath string) (int, error) {
	if !s.systemdBooted() {
		return s.setsid(self, args, logf)
	}
	if err := s.initNamespaces(); err != nil {
		if s.log != nil {
			s.log.Debug("rollback watchdog: not started as a systemd unit, starting it with setsid", "reason", err)
		}
		return s.setsid(self, args, logf)
	}
	pid, err := s.startUnit(self, args, id, logPath)
	if err == nil {
		return pid, nil
	}
	if s.log != nil {
		s.log.Warn("rollback watchdog: cannot start it as a systemd unit, starting it with setsid (it stays in this login session's cgroup)", "err", err)
	}
	return s.setsid(self, args, logf)
}

// unitEnv are the variables the watchdog reads that systemd would not
// pass on (a transient unit starts with systemd's environment).
var unitEnv = []string{"MOAT_APPS_DIRS", "MOAT_SSHD_CONFIG", "GOGC", "GOMEMLIMIT"}

// startUnit runs the watchdog as a transient service and returns its main
// PID. systemd-run returns once the program is executed (Type=exec); the
// unit does not depend on moat, so a moat killed right after still leaves
// the watchdog running, and --collect removes the unit however it ends.
func (s *watchdogStarter) startUnit(self string, args []string, id, logPath string) (int, error) {
	run, err := s.lookPath("systemd-run")
	if err != nil {
		return 0, fmt.Errorf("systemd-run: %w", err)
	}
	// The unit must run in this working directory: a relative --config
	// or --state-dir (and the policy path the pending change records as
	// given) name files relative to it, and a unit started in / would
	// read another state directory, find no change waiting and never
	// roll it back. A directory that cannot be passed as is: setsid.
	wd, err := s.getwd()
	if err != nil {
		return 0, fmt.Errorf("working directory: %w", err)
	}
	if !safeUnitPath(wd) {
		return 0, fmt.Errorf("working directory %q cannot be given to a unit as it is (relative paths would name other files)", wd)
	}
	unit := unitName(id)
	argv := []string{"--unit=" + unit, "--description=moat rollback watchdog (change " + sanitizeUnit(id) + ")",
		"--collect", "--quiet", "--property=Type=exec"}
	if safeUnitPath(logPath) {
		argv = append(argv, "--property=StandardOutput=append:"+logPath, "--property=StandardError=append:"+logPath)
	}
	argv = append(argv, "--working-directory="+wd) // a relative --config still names the same file
	for _, k := range unitEnv {
		if v := s.env(k); v != "" && !strings.ContainsAny(v, "\x00\n") {
			argv = append(argv, "--setenv="+k+"="+v)
		}
	}
	argv = append(argv, "--", self)
	argv = append(argv, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := s.run(ctx, run, argv...); err != nil {
		return 0, fmt.Errorf("systemd-run --unit=%s: %w: %s", unit, err, strings.TrimSpace(string(out)))
	}
	pid, err := s.mainPID(ctx, unit)
	if err != nil || pid <= 0 {
		// Started but not found: stop it, so the fallback does not leave two.
		_, _ = s.run(ctx, "systemctl", "stop", "--", unit+".service")
		if err == nil {
			err = errors.New("no main PID: it exited at once")
		}
		return 0, fmt.Errorf("unit %s: %w", unit, err)
	}
	return pid, nil
}

// mainPID is the unit's main process (0: none).
func (s *watchdogStarter) mainPID(ctx context.Context, unit string) (int, error) {
	out, err := s.run(ctx, "systemctl", "show", "--property=MainPID", "--value", "--", unit+".service")
	if err != nil {
		return 0, fmt.Errorf("systemctl show: %w: %s", err, strings.TrimSpace(string(out)))
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		return 0, fmt.Errorf("systemctl show MainPID: %q: %w", strings.TrimSpace(string(out)), err)
	}
	return pid, nil
}

// unitName is a unit name of its own for each start (a restarted
// watchdog never meets its predecessor's unit): moat-rollback-ID-RAND.
func unitName(id string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "moat-rollback-" + sanitizeUnit(id) + "-" + hex.EncodeToString(b)
}

// sanitizeUnit keeps letters, digits and '_' of s, at most 64 of them; the
// rest become '_'. The engine's IDs are hex, this is defence in depth.
func sanitizeUnit(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= 64 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		return "_"
	}
	return b.String()
}

// safeUnitPath reports whether p can go into a unit property as is: an
// absolute path of letters, digits and /._-+ only (systemd splits and
// unescapes property values; anything else is left out).
func safeUnitPath(p string) bool {
	if !filepath.IsAbs(p) {
		return false
	}
	for _, r := range p {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("/._-+", r):
		default:
			return false
		}
	}
	return true
}

// execOutput runs a program with an argument list (never a shell).
func execOutput(ctx context.Context, name string, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// startSetsid starts the watchdog in its own session (no terminal; the
// caller's death, SIGHUP and the SSH session being cut do not stop it,
// but a logind killing the session's cgroup does), logging to logf.
func startSetsid(self string, args []string, logf *os.File) (int, error) {
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start rollback watchdog: %w", err)
	}
	pid := cmd.Process.Pid
	// Reap it if it dies while this process still runs (a zombie would
	// look alive), without waiting for it.
	go func() { _ = cmd.Wait() }()
	return pid, nil
}
