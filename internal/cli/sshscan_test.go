package cli

import (
	"testing"

	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/safeapply"
)

// A command scans the processes for SSH sessions once: 'moat blocklist
// update' checked the lists against a scan of its own, then the engine's
// lockout check and protected sets made another (a scan of every
// process's sockets).
func TestOneSSHScanPerCommand(t *testing.T) {
	scans := 0
	old := scanSSH
	scanSSH = func(string, string) (safeapply.SSHState, error) {
		scans++
		return safeapply.SSHState{}, nil
	}
	t.Cleanup(func() { scanSSH = old })
	a := &app{stateDir: t.TempDir()}
	if _, err := a.findSSH()(); err != nil { // the blocklist check
		t.Fatal(err)
	}
	var o engine.Options
	a.engineHook = func(opts *engine.Options) { o = *opts }
	a.engine()
	if _, err := o.FindSSH(); err != nil { // the lockout check
		t.Fatal(err)
	}
	if _, err := o.LoggedIn(); err != nil { // the protected sets
		t.Fatal(err)
	}
	if scans != 1 {
		t.Errorf("%d scans of the processes in one command", scans)
	}
}
