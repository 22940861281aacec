package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runMoat runs moat with its state in the test's own folder, never the
// host's /var/lib/moat.
func runMoat(t *testing.T, args ...string) (string, int) {
	t.Helper()
	args = append([]string{"--state-dir", filepath.Join(t.TempDir(), "state")}, args...)
	var out bytes.Buffer
	code := Main(context.Background(), args, &out, &out)
	return out.String(), code
}

func TestImportWrite(t *testing.T) {
	t.Setenv("MOAT_APPS_DIRS", "../policy/testdata/apps")
	conf := filepath.Join(t.TempDir(), "moat.conf")
	ufw := []string{"--config", conf, "import", "ufw", "--from", "../importer/testdata/ufw/etc/ufw", "--defaults", "../importer/testdata/ufw/etc/default/ufw"}
	out, code := runMoat(t, ufw...)
	if code != 0 || !strings.Contains(out, "\nallow in to any app OpenSSH\n") || !strings.Contains(out, "not imported: allow in from 10.0.0.0/255.0.255.0") {
		t.Fatalf("print: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(conf); err == nil {
		t.Fatal("printing wrote the policy file")
	}
	if out, code := runMoat(t, append(ufw, "--write")...); code != 0 || !strings.Contains(out, "Nothing is applied") {
		t.Fatalf("write: exit %d\n%s", code, out)
	}
	data, err := os.ReadFile(conf)
	if err != nil || !strings.Contains(string(data), "limit in proto tcp to any port 22 comment 'brute force'\n") {
		t.Fatalf("written policy: %v\n%s", err, data)
	}
	// A policy with rules is not replaced without --force.
	if out, code := runMoat(t, append(ufw, "--write")...); code == 0 || !strings.Contains(out, "use --force") {
		t.Fatalf("second write: exit %d\n%s", code, out)
	}
	if out, code := runMoat(t, append(ufw, "--write", "--force")...); code != 0 || !strings.Contains(out, ".bak") {
		t.Fatalf("forced write: exit %d\n%s", code, out)
	}
	// fail2ban appends.
	if out, code := runMoat(t, "--config", conf, "import", "fail2ban", "--from", "../importer/testdata/fail2ban", "--write"); code != 0 {
		t.Fatalf("fail2ban: exit %d\n%s", code, out)
	}
	data, _ = os.ReadFile(conf)
	if !strings.Contains(string(data), "\nguard sshd maxretry 3 ") || !strings.Contains(string(data), "limit in proto tcp") {
		t.Errorf("after fail2ban:\n%s", data)
	}
	if out, code := runMoat(t, "--config", conf, "check"); code != 0 && !strings.Contains(out, "root") {
		t.Errorf("check: exit %d\n%s", code, out)
	}
}
