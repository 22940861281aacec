package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/engine"
)

// 'moat rollback' while what an interrupted command left cannot be
// repaired (its journal, intent.json, is unreadable): it refused with
// the repair's error, and the unconfirmed change stayed until the
// deadline. It rolls back all the same, as the watchdog does at the
// deadline, says why, and leaves the journal named for the admin.
func TestRollbackPastUnreadableJournal(t *testing.T) {
	base := "default deny incoming\nallow 22/tcp\n"
	r := enabledSMRig(t, base)
	before := r.fakes["nftables"].Loaded()
	if out, code := r.moat("--confirm", "60s", "--no-wait", "allow", "443/tcp"); code != 0 {
		t.Fatalf("allow: %d\n%s", code, out)
	}
	if err := os.WriteFile(filepath.Join(r.state, engine.IntentFile), []byte(`{"pid": 12, "comm`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := r.moat("rollback")
	if code != 0 || !strings.Contains(out, "journal is unreadable") || !strings.Contains(out, "Rolled back") {
		t.Fatalf("rollback: %d\n%s", code, out)
	}
	if data, _ := os.ReadFile(r.conf); string(data) != base {
		t.Errorf("policy file after the rollback:\n%s", data)
	}
	if r.fakes["nftables"].Loaded() != before {
		t.Errorf("the kernel does not hold the rules of before the change")
	}
	if out, code := r.moat("allow", "80/tcp"); code == 0 || !strings.Contains(out, "journal is unreadable") {
		t.Errorf("the next change with the journal still unreadable: %d\n%s", code, out)
	}
}

// A change waiting for confirmation made with a relative --config is
// rolled back into that file whatever the working directory of what
// rolls it back ('moat rollback' run from elsewhere with the file's full
// name, a watchdog restarted by another command's repair). The pending
// record kept the path as given, so the rollback wrote the old policy
// to moat.conf in its own working directory and left the unconfirmed
// rule in the file the change wrote.
func TestRollbackRelativeConfigFromElsewhere(t *testing.T) {
	base := "default deny incoming\nallow 22/tcp\n"
	r := enabledSMRig(t, base)
	moatIn := func(dir, conf string, args ...string) (string, int) {
		t.Chdir(dir)
		var out bytes.Buffer
		code := run(context.Background(), append([]string{"--config", conf, "--state-dir", r.state}, args...), &out, &out, r.hook)
		return out.String(), code
	}
	if out, code := moatIn(filepath.Dir(r.conf), "moat.conf", "--confirm", "60s", "--no-wait", "allow", "443/tcp"); code != 0 {
		t.Fatalf("allow: %d\n%s", code, out)
	}
	elsewhere := t.TempDir()
	out, code := moatIn(elsewhere, r.conf, "rollback")
	if code != 0 || !strings.Contains(out, "Rolled back") {
		t.Fatalf("rollback: %d\n%s", code, out)
	}
	if data, _ := os.ReadFile(r.conf); string(data) != base {
		t.Errorf("%s after the rollback:\n%s", r.conf, data)
	}
	if _, err := os.Stat(filepath.Join(elsewhere, "moat.conf")); err == nil {
		t.Errorf("the rollback wrote moat.conf in its own working directory")
	}
}

// enabledSMRig is an nftables smRig whose policy file holds base,
// enabled.
func enabledSMRig(t *testing.T, base string) *smRig {
	t.Helper()
	r := newSMRig(t, "nftables", 1)
	if err := os.WriteFile(r.conf, []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := r.moat("enable"); code != 0 {
		t.Fatalf("enable: %d\n%s", code, out)
	}
	return r
}
