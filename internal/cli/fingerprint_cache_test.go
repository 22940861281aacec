package cli

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/nft"
)

// kernel-fingerprint.json is written without fsync (a cache): after a
// power failure it may be empty, cut short or older than applied.json.
// Each of these means "compare in full", never "unchanged".
func TestFingerprintRecordDamaged(t *testing.T) {
	dir := t.TempDir()
	a := &app{stateDir: dir}
	st := appliedState{Known: true, Backend: "nftables", Policy: "allow 22/tcp\n", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	older := `{"backend":"nftables","policy_sha256":"` + engine.Hash([]byte("allow 80/tcp\n")) + `","time":"2026-01-02T03:04:05Z","fingerprint":"ab","nft_generation":7,"has_nft_generation":true}`
	for name, data := range map[string]string{"empty": "", "cut short": `{"backend":"nftables","policy_sha`, "garbage": "\x00\x00\x00\x00", "older record": older} {
		if err := os.WriteFile(filepath.Join(dir, fingerprintFile), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if a.unchangedSinceApply(context.Background(), nft.New(), st, false) {
			t.Errorf("%s record: taken as unchanged", name)
		}
	}
}
