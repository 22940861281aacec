package engine

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
)

// The boot ruleset carries the profiles' ports: a profile removed after
// 'moat enable' (a package purged) does not make 'moat restore' fail closed.
func TestRestoreUsesTheSavedProfiles(t *testing.T) {
	r := newRig(t)
	r.eng.o.Apps = policy.AppsFromPorts(map[string]string{"Web": "8080/tcp"})
	r.write("default deny incoming\nallow Web\n")
	_, err := r.enable(r.ch(0))
	r.must(err)
	if !strings.Contains(r.nft.Loaded(), "8080") {
		t.Fatalf("the profile's port is not loaded: %s", r.nft.Loaded())
	}
	r.eng.o.Apps = policy.Apps{} // the profile is gone
	restore := func() error {
		return r.do(func(ctx context.Context, e *Engine) error {
			_, err := e.Restore(ctx, r.ch(0))
			return err
		})
	}
	r.must(restore())
	if !strings.Contains(r.nft.Loaded(), "8080") {
		t.Errorf("restore lost the profile's port: %s", r.nft.Loaded())
	}
	// Without the saved ports the boot would fail closed: the test can fail.
	path := filepath.Join(r.dir, savedFile)
	data, err := os.ReadFile(path)
	r.must(err)
	var saved map[string]any
	r.must(json.Unmarshal(data, &saved))
	delete(saved, "apps")
	data, err = json.Marshal(saved)
	r.must(err)
	r.must(os.WriteFile(path, data, 0o600))
	var fc *FailClosedError
	if err := restore(); !errors.As(err, &fc) {
		t.Errorf("restore without the saved profiles: %v, want fail-closed", err)
	}
}
