package engine

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Hostile or torn state files never make moat panic: reading the state,
// the repair every command runs first, confirm, rollback and disable
// either work or return an error.
func FuzzStateFiles(f *testing.F) {
	f.Add(uint8(0), []byte(`{"backend":"nftables","policy":"allow 22/tcp\n","policy_sha256":"x"}`))
	f.Add(uint8(1), []byte(`{"id":"1","deadline":"2000-01-01T00:00:00Z","prev_backend":"iptables","state":"rolling back"}`))
	f.Add(uint8(2), []byte(`{"pid":1,"command":"\u001b[31mmoat","prev":{"backend":"nope","policy":"allow 99999/tcp"},"file_changed":true,"path":""}`))
	f.Add(uint8(3), []byte(`{"backend":"iptables","policy":"default deny incoming\nallow 22/tcp\n"}`))
	f.Add(uint8(4), []byte("\x00\xff{"))
	f.Add(uint8(5), []byte(`{"id":"x","outcome":"rolled back"}`))
	f.Add(uint8(1), []byte(`{"id":"1","deadline":"2999-01-01T00:00:00Z","state":"confirming","watchdog":{"pid":1,"start":1}}`))
	// Records naming their texts in files: missing, outside the directory,
	// of another checksum, and a text both inline and named.
	sum := "5a46e7f0f5dbbd9890a49287a32e056d9b473453403877e183b3fc34b8f25753"
	f.Add(uint8(0), []byte(`{"backend":"nftables","policy":"","policy_file":"policy.`+sum+`","policy_sha256":"`+sum+`"}`))
	f.Add(uint8(0), []byte(`{"backend":"nftables","policy":"","policy_file":"../../etc/shadow","policy_sha256":"`+sum+`"}`))
	f.Add(uint8(3), []byte(`{"backend":"nftables","policy":"allow 22/tcp\n","policy_file":"policy.`+sum+`"}`))
	f.Add(uint8(2), []byte(`{"pid":1,"prev":{"backend":"nftables","policy_file":"policy.`+sum+`"},"prev_file_stored":"policy.`+sum+`","had_file":true,"file_changed":true,"path":"x"}`))
	names := []string{AppliedFile, pendingFile, IntentFile, savedFile, snapshotFile, outcomeFile}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		r := newRig(t)
		r.write(base)
		if _, err := r.enable(r.ch(0)); err != nil {
			t.Fatal(err)
		}
		name := names[int(which)%len(names)]
		if name == pendingFile {
			// A boot ID of this boot, so the file is not ignored as stale.
			data = append([]byte(`{"boot_id":"`+bootID()+`",`), trimBrace(data)...)
		}
		if err := os.WriteFile(filepath.Join(r.dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = r.eng.State(ctx)
		_ = r.do(func(ctx context.Context, e *Engine) error { _, err := e.Confirm(ctx); return err })
		_ = r.do(func(ctx context.Context, e *Engine) error { _, err := e.Rollback(ctx, "", "fuzz"); return err })
		_, _ = r.add(r.ch(0), "allow 80/tcp")
		unlock, err := r.eng.LockToRemove(ctx, "moat disable")
		if err != nil {
			t.Fatal(err)
		}
		if err := r.eng.Disable(ctx); err != nil {
			t.Fatalf("disable after a corrupt %s: %v", name, err)
		}
		unlock()
		r.kernelIs("", "")
	})
}

func trimBrace(b []byte) []byte {
	if len(b) > 0 && b[0] == '{' {
		return b[1:]
	}
	return append([]byte(`"x":0}`), b...)
}
