package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/safeapply"
)

// When the live SSH sessions cannot be determined, a change is refused
// with exit 3 and the reason (--force overrides), and 'moat restore' (at
// boot) still loads the saved ruleset.
func TestUnknownSessionsRefusedExit3(t *testing.T) {
	r := newSMRig(t, "nftables", 1)
	failing := false
	hook := func(o *engine.Options) {
		r.hook(o)
		o.FindSSH = func() (safeapply.SSHState, error) {
			if failing {
				return safeapply.SSHState{}, errors.New("open /proc/net/tcp: injected failure")
			}
			return safeapply.SSHState{}, nil
		}
	}
	moat := func(args ...string) (string, int) {
		var out bytes.Buffer
		code := run(context.Background(), append([]string{"--config", r.conf, "--state-dir", r.state}, args...), &out, &out, hook)
		return out.String(), code
	}
	if err := os.WriteFile(r.conf, []byte("default deny incoming\nallow 22/tcp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := moat("--backend", "nftables", "enable"); code != 0 {
		t.Fatalf("enable: %d\n%s", code, out)
	}
	failing = true
	before := r.fakes["nftables"].Loaded()
	out, code := moat("allow", "80/tcp")
	if code != exitLockout || !strings.Contains(out, "injected failure") || !strings.Contains(out, "--force") {
		t.Errorf("allow with unknown sessions: exit %d (want %d)\n%s", code, exitLockout, out)
	}
	if applied := r.fakes["nftables"].Loaded(); applied != before {
		t.Errorf("applied although refused:\n%s", applied)
	}
	if out, code := moat("--force", "allow", "80/tcp"); code != 0 {
		t.Errorf("--force: exit %d\n%s", code, out)
	}
	if out, code := moat("restore"); code != 0 {
		t.Errorf("restore with unknown sessions: exit %d\n%s", code, out)
	}
}
