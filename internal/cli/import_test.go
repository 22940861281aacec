package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/engine"
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

// 'moat import --write' edits the policy file under moat's lock, as every
// edit: it read and wrote the file while another command held the lock
// (a 'moat allow' between its read and its write was lost from the file),
// and a kill during its write left a temporary file the next command
// never removed.
func TestImportWriteTakesTheLock(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "moat.conf")
	state := filepath.Join(dir, "state")
	if err := os.WriteFile(conf, []byte("allow 22/tcp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	eng := engine.New(engine.Options{StateDir: state})
	unlock, err := eng.Lock(context.Background(), "moat allow 80/tcp")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--state-dir", state, "--config", conf, "import", "fail2ban", "--from", "../importer/testdata/fail2ban", "--write"}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	code := Main(ctx, args, &out, &out)
	if data, _ := os.ReadFile(conf); code == 0 || string(data) != "allow 22/tcp\n" || !strings.Contains(out.String(), "waiting for PID") {
		t.Fatalf("import while another command holds the lock: exit %d\n%s\nfile:\n%s", code, out.String(), data)
	}
	unlock()
	// A temporary file a killed write left is removed by the next one.
	left := filepath.Join(dir, ".moat.conf.12345")
	if err := os.WriteFile(left, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := Main(context.Background(), args, &out, &out); code != 0 {
		t.Fatalf("import: exit %d\n%s", code, out.String())
	}
	if data, _ := os.ReadFile(conf); !strings.Contains(string(data), "allow 22/tcp\n") || !strings.Contains(string(data), "guard sshd") {
		t.Errorf("after the import:\n%s", data)
	}
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Errorf("the temporary file a kill left is still there: %v", err)
	}
}
