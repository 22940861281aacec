package cli

import (
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
	r := newSMRig(t, "nftables", 1)
	base := "default deny incoming\nallow 22/tcp\n"
	if err := os.WriteFile(r.conf, []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := r.moat("enable"); code != 0 {
		t.Fatalf("enable: %d\n%s", code, out)
	}
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
