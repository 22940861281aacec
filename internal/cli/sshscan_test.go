package cli

import (
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

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

// An edit of an applied policy starts its scan early, and the lockout
// check uses that scan (still one a command); an edit of a policy never
// applied starts none.
func TestEditPrefetchesTheScan(t *testing.T) {
	var scans atomic.Int32
	old := scanSSH
	scanSSH = func(string, string) (safeapply.SSHState, error) {
		scans.Add(1)
		time.Sleep(20 * time.Millisecond)
		return safeapply.SSHState{Listen: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:22")}}, nil
	}
	t.Cleanup(func() { scanSSH = old })

	a := &app{stateDir: t.TempDir()}
	a.prefetchSSH()
	if a.sshScan != nil {
		t.Fatal("a scan was started for a policy never applied")
	}

	if err := os.WriteFile(filepath.Join(a.stateDir, engine.AppliedFile), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	a.prefetchSSH()
	for deadline := time.Now().Add(5 * time.Second); scans.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the scan did not start")
		}
		time.Sleep(time.Millisecond)
	}
	var o engine.Options
	a.engineHook = func(opts *engine.Options) { o = *opts }
	a.engine()
	st, err := o.FindSSH() // the lockout check: waits for the scan
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Listen) != 1 {
		t.Errorf("the check got %+v, not the scan's result", st)
	}
	if n := scans.Load(); n != 1 {
		t.Errorf("%d scans of the processes in one command", n)
	}
}
