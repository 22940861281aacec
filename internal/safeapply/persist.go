package safeapply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/statedir"
	"github.com/moat-fw/moat/packaging"
)

// Saved is what `moat restore` loads at boot.
type Saved struct {
	Backend string    `json:"backend"`
	Policy  string    `json:"policy"` // the policy file's text as applied
	Source  string    `json:"source"` // the policy file it came from
	Saved   time.Time `json:"saved"`
}

const savedFile = "saved.json"

// Save records the applied policy for the next boot (atomically).
func Save(dir string, s Saved) error {
	if err := statedir.Ensure(dir); err != nil {
		return fmt.Errorf("save ruleset: %w", err)
	}
	s.Saved = time.Now().UTC()
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := statedir.WriteFile(dir, savedFile, data); err != nil {
		return fmt.Errorf("save ruleset: %w", err)
	}
	return nil
}

// LoadSaved reads what Save wrote.
func LoadSaved(dir string) (*Saved, error) {
	data, err := statedir.ReadFile(dir, savedFile)
	if err != nil {
		return nil, fmt.Errorf("read saved ruleset: %w", err)
	}
	var s Saved
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("read saved ruleset %s: %w", filepath.Join(dir, savedFile), err)
	}
	if s.Backend == "" {
		return nil, fmt.Errorf("read saved ruleset %s: no backend", filepath.Join(dir, savedFile))
	}
	return &s, nil
}

// Enabled reports whether a ruleset is saved for boot.
func Enabled(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, savedFile))
	return err == nil
}

// Forget removes the saved ruleset.
func Forget(dir string) error {
	if err := statedir.Remove(dir, savedFile); err != nil {
		return fmt.Errorf("remove saved ruleset: %w", err)
	}
	return nil
}

// FailClosedPolicy is what boot loads when the saved ruleset is missing or
// broken: nothing comes in but SSH, so the admin can still log in and fix
// it.
func FailClosedPolicy(sshdConfig string) string {
	ports := SSHDConfigPorts(sshdConfig)
	var b strings.Builder
	b.WriteString("# moat fail-closed ruleset: the saved ruleset was missing or broken\n")
	b.WriteString("default deny incoming\ndefault allow outgoing\n")
	for _, p := range ports {
		fmt.Fprintf(&b, "allow %d/tcp comment 'sshd (fail-closed)'\n", p)
	}
	return b.String()
}

// Systemd manages moat's units. Dir is where units go
// (/etc/systemd/system); units are only installed where systemd runs.
type Systemd struct {
	Dir string
}

// Unit is a unit moat installs.
type Unit struct {
	Name string
	Text string
	// Start also starts it now (the guard); the boot unit only runs at boot.
	Start bool
}

// Units are moat.service and moat-guard.service.
var (
	BootUnit  = Unit{Name: "moat.service", Text: packaging.MoatService}
	GuardUnit = Unit{Name: "moat-guard.service", Text: packaging.GuardService, Start: true}
)

// Running reports whether systemd is the init system here.
func (s Systemd) Running() bool {
	st, err := os.Stat("/run/systemd/system")
	return err == nil && st.IsDir()
}

func systemctl(ctx context.Context, args ...string) error {
	if out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Install writes a unit with this binary's path and enables it (and
// starts it, for the guard).
func (s Systemd) Install(ctx context.Context, u Unit, self string) error {
	text := strings.ReplaceAll(u.Text, packaging.UnitExecPath, self)
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return fmt.Errorf("install %s: %w", u.Name, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(s.Dir, u.Name), []byte(text), 0o644); err != nil {
		return fmt.Errorf("install %s: %w", u.Name, err)
	}
	if err := systemctl(ctx, "daemon-reload"); err != nil {
		return err
	}
	if u.Start {
		return systemctl(ctx, "enable", "--now", u.Name)
	}
	return systemctl(ctx, "enable", u.Name)
}

// Uninstall stops, disables and removes a unit, if it is there.
func (s Systemd) Uninstall(ctx context.Context, u Unit) error {
	path := filepath.Join(s.Dir, u.Name)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	args := []string{"disable", u.Name}
	if u.Start {
		args = []string{"disable", "--now", u.Name}
	}
	if err := systemctl(ctx, args...); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return systemctl(ctx, "daemon-reload")
}

// DefaultStateDir is where moat keeps its state.
const DefaultStateDir = "/var/lib/moat"

// InHostNamespace reports whether this process runs in the network
// namespace of PID 1: only then does a boot unit make sense (and tests in
// their own namespaces never touch the host's init system).
func InHostNamespace() bool {
	self, err1 := os.Readlink("/proc/self/ns/net")
	init, err2 := os.Readlink("/proc/1/ns/net")
	return err1 == nil && err2 == nil && self == init
}

const appliedFile = "applied.conf"

// RecordApplied keeps the text of the policy now in the kernel, so that a
// rollback can put the policy file back to what was really applied.
func RecordApplied(dir string, policyText []byte) error {
	if err := statedir.Ensure(dir); err != nil {
		return fmt.Errorf("record applied policy: %w", err)
	}
	if err := statedir.WriteFile(dir, appliedFile, policyText); err != nil {
		return fmt.Errorf("record applied policy: %w", err)
	}
	return nil
}

// LastApplied returns the policy text last applied, if moat recorded one.
func LastApplied(dir string) ([]byte, bool) {
	data, err := statedir.ReadFile(dir, appliedFile)
	return data, err == nil
}
