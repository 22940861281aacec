package safeapply

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moat-fw/moat/packaging"
)

// fakeSystemd is a Systemd in temporary folders that records systemctl.
func fakeSystemd(t *testing.T) (Systemd, string, *[]string) {
	root := t.TempDir()
	var calls []string
	sd := Systemd{
		Dir:        filepath.Join(root, "etc"),
		VendorDirs: []string{filepath.Join(root, "usr-lib"), filepath.Join(root, "lib")},
		BinDirs:    []string{filepath.Join(root, "sbin")},
		Run: func(ctx context.Context, args ...string) error {
			calls = append(calls, strings.Join(args, " "))
			return nil
		},
	}
	for _, d := range append([]string{sd.Dir}, append(sd.VendorDirs, sd.BinDirs...)...) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return sd, root, &calls
}

func TestInstallRefusesABuildPath(t *testing.T) {
	sd, root, calls := fakeSystemd(t)
	self := filepath.Join(root, "src", "moat")
	err := sd.Install(context.Background(), BootUnit, self)
	var nie *NotInstalledError
	if !errors.As(err, &nie) {
		t.Fatalf("Install from a build folder: err = %v, want NotInstalledError", err)
	}
	if !strings.Contains(err.Error(), "install -m 0755") {
		t.Errorf("error does not say what to do: %v", err)
	}
	if _, err := os.Stat(filepath.Join(sd.Dir, "moat.service")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a unit was written: %v", err)
	}
	if len(*calls) != 0 {
		t.Errorf("systemctl was called: %q", *calls)
	}
}

func TestInstallWritesInstalledPath(t *testing.T) {
	sd, root, calls := fakeSystemd(t)
	self := filepath.Join(root, "sbin", "moat")
	if err := sd.Install(context.Background(), GuardUnit, self); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(sd.Dir, "moat-guard.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "ExecStart="+self+" guard\n") || strings.Contains(string(data), packaging.UnitExecPath+" ") {
		t.Errorf("unit does not run %s:\n%s", self, data)
	}
	if want := []string{"daemon-reload", "enable --now moat-guard.service"}; !slices.Equal(*calls, want) {
		t.Errorf("systemctl calls %q, want %q", *calls, want)
	}
	*calls = nil
	if err := sd.Uninstall(context.Background(), GuardUnit); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(sd.Dir, "moat-guard.service")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unit left behind: %v", err)
	}
	if want := []string{"disable --now moat-guard.service", "daemon-reload"}; !slices.Equal(*calls, want) {
		t.Errorf("systemctl calls %q, want %q", *calls, want)
	}
}

func TestInstallUsesThePackagedUnit(t *testing.T) {
	sd, root, calls := fakeSystemd(t)
	vendor := filepath.Join(sd.VendorDirs[1], "moat.service")
	if err := os.WriteFile(vendor, []byte(packaging.MoatService), 0o644); err != nil {
		t.Fatal(err)
	}
	// A copy an earlier source install wrote would shadow the package's.
	own := filepath.Join(sd.Dir, "moat.service")
	if err := os.WriteFile(own, []byte(writtenMark+"[Service]\nExecStart=/usr/local/sbin/moat restore\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Even from a build folder: the packaged unit runs /usr/sbin/moat.
	if err := sd.Install(context.Background(), BootUnit, filepath.Join(root, "src", "moat")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(own); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("moat's old copy still shadows the packaged unit: %v", err)
	}
	if want := []string{"daemon-reload", "enable moat.service"}; !slices.Equal(*calls, want) {
		t.Errorf("systemctl calls %q, want %q", *calls, want)
	}
	*calls = nil
	if err := sd.Uninstall(context.Background(), BootUnit); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vendor); err != nil {
		t.Errorf("the packaged unit was removed: %v", err)
	}
	if want := []string{"disable moat.service", "daemon-reload"}; !slices.Equal(*calls, want) {
		t.Errorf("systemctl calls %q, want %q", *calls, want)
	}
}

func TestUninstallKeepsTheAdminsOverride(t *testing.T) {
	sd, _, _ := fakeSystemd(t)
	vendor := filepath.Join(sd.VendorDirs[0], "moat.service")
	if err := os.WriteFile(vendor, []byte(packaging.MoatService), 0o644); err != nil {
		t.Fatal(err)
	}
	admin := filepath.Join(sd.Dir, "moat.service")
	if err := os.WriteFile(admin, []byte("[Service]\nExecStart=/opt/moat restore\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sd.Uninstall(context.Background(), BootUnit); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(admin); err != nil {
		t.Errorf("the admin's own unit was removed: %v", err)
	}
}

func TestPackagedUnitsRunUsrSbin(t *testing.T) {
	for _, u := range []Unit{BootUnit, GuardUnit} {
		if !strings.Contains(u.Text, "ExecStart=/usr/sbin/moat ") {
			t.Errorf("%s does not run /usr/sbin/moat", u.Name)
		}
	}
}

// A kill while moat writes a unit (beside it, renamed over it) left
// .moat.service.N.tmp in /etc/systemd/system for good. The next install
// or removal of that unit removes what a killed write of it left; other
// files stay.
func TestInstallRemovesLeftTemps(t *testing.T) {
	sd, root, _ := fakeSystemd(t)
	self := filepath.Join(root, "sbin", "moat")
	for _, op := range []string{"install", "uninstall"} {
		left := filepath.Join(sd.Dir, ".moat.service.123.tmp")
		kept := filepath.Join(sd.Dir, ".moat-guard.service.456.tmp")
		for _, f := range []string{left, kept} {
			if err := os.WriteFile(f, []byte("[Unit]\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		var err error
		if op == "install" {
			err = sd.Install(context.Background(), BootUnit, self)
		} else {
			err = sd.Uninstall(context.Background(), BootUnit)
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(left); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: left: %v", op, err)
		}
		if _, err := os.Stat(kept); err != nil {
			t.Errorf("%s: another unit's file was removed: %v", op, err)
		}
	}
}
