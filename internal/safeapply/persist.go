package safeapply

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/statedir"
	"github.com/moat-fw/moat/internal/statetext"
	"github.com/moat-fw/moat/packaging"
)

// Saved is what `moat restore` loads at boot.
type Saved struct {
	Backend string `json:"backend"`
	Policy  string `json:"policy"` // the policy file's text as applied
	// PolicyFile names the state file that holds a large Policy
	// (statetext: policy.<sha256>); empty in memory.
	PolicyFile string `json:"policy_file,omitempty"`
	Source     string `json:"source"` // the policy file it came from
	// Apps are the application profiles' ports when it was saved (name →
	// ports), so a profile removed later does not break the boot.
	Apps  map[string]string `json:"apps,omitempty"`
	Saved time.Time         `json:"saved"`
}

const savedFile = "saved.json"

// Save records the applied policy for the next boot (atomically).
func Save(dir string, s Saved) error {
	data, err := savedData(dir, s)
	if err != nil {
		return err
	}
	if err := statedir.WriteFile(dir, savedFile, data); err != nil {
		return fmt.Errorf("save ruleset: %w", err)
	}
	return nil
}

// PrepareSave is Save up to the rename (statedir.Prepare): the record is
// written and synced, and takes effect when the caller commits it and
// syncs dir.
func PrepareSave(dir string, s Saved) (*atomicfile.Prepared, error) {
	data, err := savedData(dir, s)
	if err != nil {
		return nil, err
	}
	p, err := statedir.Prepare(dir, savedFile, data)
	if err != nil {
		return nil, fmt.Errorf("save ruleset: %w", err)
	}
	return p, nil
}

// savedData is the text of saved.json for s (a long policy goes to a
// text file of its own, written first).
func savedData(dir string, s Saved) ([]byte, error) {
	s.Saved = time.Now().UTC()
	s.PolicyFile = ""
	if len(s.Policy) >= statetext.InlineMax {
		name, err := statetext.Put(dir, s.Policy)
		if err != nil {
			return nil, fmt.Errorf("save ruleset: %w", err)
		}
		s.Policy, s.PolicyFile = "", name
	}
	return statedir.MarshalJSON(s)
}

// LoadSaved reads what Save wrote. A reader without moat's lock (status)
// that reads the record just before a change replaces it and removes the
// text it names reads the new record (statetext.Reread).
func LoadSaved(dir string) (*Saved, error) {
	read := func() ([]byte, error) {
		data, err := statedir.ReadFile(dir, savedFile)
		if err != nil {
			return nil, fmt.Errorf("read saved ruleset: %w", err)
		}
		return data, nil
	}
	return statetext.Reread(read, func(data []byte) (*Saved, error) { return decodeSaved(dir, data) })
}

// savedRead, when set (by tests), runs between reading the record and
// reading the text it names.
var savedRead func()

// decodeSaved reads saved.json's bytes.
func decodeSaved(dir string, data []byte) (*Saved, error) {
	var s Saved
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("read saved ruleset %s: %w", filepath.Join(dir, savedFile), err)
	}
	if s.Backend == "" {
		return nil, fmt.Errorf("read saved ruleset %s: no backend", filepath.Join(dir, savedFile))
	}
	if s.PolicyFile != "" {
		if s.Policy != "" {
			return nil, fmt.Errorf("read saved ruleset %s: it has a policy and names the file %q too", filepath.Join(dir, savedFile), s.PolicyFile)
		}
		if savedRead != nil {
			savedRead()
		}
		text, err := statetext.Get(dir, s.PolicyFile)
		if err != nil {
			return nil, fmt.Errorf("read saved ruleset %s: %w", filepath.Join(dir, savedFile), err)
		}
		s.Policy, s.PolicyFile = text, ""
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

// Systemd manages moat's units. Dir is where moat writes units
// (/etc/systemd/system); VendorDirs are where a package puts them
// (/usr/lib/systemd/system, /lib/systemd/system). Units are only installed
// where systemd runs.
type Systemd struct {
	Dir        string
	VendorDirs []string
	// BinDirs are the installed locations moat may run from when it writes
	// a unit itself (nil: InstalledDirs).
	BinDirs []string
	// Run runs systemctl with these arguments (nil: the real one).
	Run func(ctx context.Context, args ...string) error
}

// HostSystemd is systemd on this host.
var HostSystemd = Systemd{
	Dir:        "/etc/systemd/system",
	VendorDirs: []string{"/usr/lib/systemd/system", "/lib/systemd/system"},
}

// Unit is a unit moat installs.
type Unit struct {
	Name string
	Text string
	// Start also starts it now (the guard); the boot unit only runs at boot.
	Start bool
	// WriteOnly units are written but not enabled (a timer starts them).
	WriteOnly bool
}

// Units are moat.service and moat-guard.service.
var (
	BootUnit  = Unit{Name: "moat.service", Text: packaging.MoatService}
	GuardUnit = Unit{Name: "moat-guard.service", Text: packaging.GuardService, Start: true}
	// BlocklistUnits fetch url blocklists: the service, then its timer.
	BlocklistUnits = []Unit{{Name: "moat-blocklist.service", Text: packaging.BlocklistService, WriteOnly: true},
		{Name: "moat-blocklist.timer", Text: packaging.BlocklistTimer, Start: true}}
)

// writtenMark starts every unit moat writes itself, so that moat removes
// only those (never a unit the admin wrote or overrode).
const writtenMark = "# Written by 'moat enable' (moat's built-in copy of the unit).\n"

// InstalledDirs are where moat may run from when it writes a unit itself:
// installed locations, never a build or source folder.
var InstalledDirs = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"}

// NotInstalledError says the unit was not written because the running
// binary is not installed.
type NotInstalledError struct{ Path string }

func (e *NotInstalledError) Error() string {
	return fmt.Sprintf("moat runs from %s, which is not an installed location: install the package, or 'install -m 0755 %s /usr/local/sbin/moat' and run 'moat enable' from there, so the unit does not depend on a build folder", e.Path, e.Path)
}

// Running reports whether systemd is the init system here.
func (s Systemd) Running() bool {
	st, err := os.Stat("/run/systemd/system")
	return err == nil && st.IsDir()
}

func (s Systemd) systemctl(ctx context.Context, args ...string) error {
	if s.Run != nil {
		return s.Run(ctx, args...)
	}
	if out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Packaged returns the path of the unit a package installed, if any.
func (s Systemd) Packaged(u Unit) (string, bool) {
	for _, d := range s.VendorDirs {
		p := filepath.Join(d, u.Name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, true
		}
	}
	return "", false
}

// removeLeft removes what a write of u killed half way left beside it
// (".NAME.N.tmp": nothing renames it later). Units are written by moat
// commands under moat's lock; a file that cannot be removed is hidden and
// harmless.
func (s Systemd) removeLeft(u Unit) {
	_ = atomicfile.RemoveHidden(s.Dir, "."+u.Name+".", ".tmp")
}

// ownUnit reports whether the unit in Dir was written by moat.
func (s Systemd) ownUnit(u Unit) bool {
	data, err := os.ReadFile(filepath.Join(s.Dir, u.Name))
	return err == nil && strings.HasPrefix(string(data), writtenMark)
}

// Install enables a unit (and starts it, for the guard). The packaged unit
// is used when there is one (a copy moat wrote earlier is removed, so it
// does not shadow it); otherwise moat writes its built-in copy with self's
// path, but only when self is installed (see InstalledDirs): a unit never
// points into a build folder.
func (s Systemd) Install(ctx context.Context, u Unit, self string) error {
	s.removeLeft(u)
	if _, ok := s.Packaged(u); ok {
		if s.ownUnit(u) {
			if err := os.Remove(filepath.Join(s.Dir, u.Name)); err != nil {
				return fmt.Errorf("install %s: remove moat's old copy: %w", u.Name, err)
			}
		}
	} else {
		if real, err := filepath.EvalSymlinks(self); err == nil {
			self = real
		}
		bins := s.BinDirs
		if bins == nil {
			bins = InstalledDirs
		}
		if !slices.Contains(bins, filepath.Dir(self)) {
			return &NotInstalledError{Path: self}
		}
		text := writtenMark + strings.ReplaceAll(u.Text, packaging.UnitExecPath, self)
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			return fmt.Errorf("install %s: %w", u.Name, err)
		}
		if err := atomicfile.WriteFile(filepath.Join(s.Dir, u.Name), []byte(text), 0o644); err != nil {
			return fmt.Errorf("install %s: %w", u.Name, err)
		}
	}
	if err := s.systemctl(ctx, "daemon-reload"); err != nil {
		return err
	}
	if u.WriteOnly {
		return nil
	}
	if u.Start {
		return s.systemctl(ctx, "enable", "--now", u.Name)
	}
	return s.systemctl(ctx, "enable", u.Name)
}

// Uninstall stops and disables a unit, and removes it if moat wrote it
// (a packaged unit stays, disabled).
func (s Systemd) Uninstall(ctx context.Context, u Unit) error {
	s.removeLeft(u)
	path := filepath.Join(s.Dir, u.Name)
	_, packaged := s.Packaged(u)
	_, err := os.Stat(path)
	written := err == nil
	if !packaged && !written {
		return nil
	}
	args := []string{"disable", u.Name}
	if u.WriteOnly {
		args = []string{"stop", u.Name}
	}
	if u.Start {
		args = []string{"disable", "--now", u.Name}
	}
	if err := s.systemctl(ctx, args...); err != nil {
		return err
	}
	if written && (s.ownUnit(u) || !packaged) {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove %s: %w", path, err)
		}
	}
	return s.systemctl(ctx, "daemon-reload")
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
