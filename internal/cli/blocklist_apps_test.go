package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// 'moat blocklist update' parses the applied policy with the application
// profiles, as the apply did: a policy naming a profile used to make every
// update fail ("bad port 'Web'").
func TestBlocklistUpdateWithProfile(t *testing.T) {
	r := newSMRig(t, "nftables", 1)
	apps := t.TempDir()
	if err := os.WriteFile(filepath.Join(apps, "web"), []byte("[Web]\ntitle=Web\ndescription=test\nports=8080/tcp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MOAT_APPS_DIRS", apps)
	list := filepath.Join(t.TempDir(), "local.netset")
	if err := os.WriteFile(list, []byte("192.0.2.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.conf, []byte("default deny incoming\nallow 22/tcp\nallow Web\nblocklist local file "+list+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := r.moat("--backend", "nftables", "enable"); code != 0 {
		t.Fatalf("enable: %d\n%s", code, out)
	}
	if err := os.WriteFile(list, []byte("198.51.100.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := r.moat("blocklist", "update"); code != 0 {
		t.Fatalf("blocklist update: exit %d\n%s", code, out)
	}
	if got := r.fakes["nftables"].Loaded(); !strings.Contains(got, "198.51.100.0/24") || !strings.Contains(got, "8080") {
		t.Errorf("after the update the kernel holds:\n%s", got)
	}
}
