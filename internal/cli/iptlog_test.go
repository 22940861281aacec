package cli

import (
	"io"
	"log/slog"
	"testing"

	"github.com/moat-fw/moat/internal/ipt"
)

// The iptables backend logs through the command's logger (--verbose:
// debug), so that an admin sees why a rule change went through
// iptables-restore rather than netlink; slog's default logger, which
// moat does not set, would drop its debug messages.
func TestIptablesBackendLogsThroughCommand(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a := &app{stateDir: t.TempDir(), out: io.Discard, errOut: io.Discard, log: log}
	a.engine()
	found := false
	for _, b := range a.kernel {
		if ib, ok := b.(*ipt.Backend); ok {
			found = true
			if ib.Log != log {
				t.Errorf("iptables backend logs through %p, want the command's logger %p", ib.Log, log)
			}
		}
	}
	if !found {
		t.Fatal("no iptables backend among the engine's")
	}
}
