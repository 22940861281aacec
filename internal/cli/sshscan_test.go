package cli

import (
	"errors"
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

// A prefetch scans with the scan its command was made with, even when it
// runs late (its command refused before the check, another test swapping
// scanSSH meanwhile): it read the variable when it ran, racing with the
// swap.
func TestPrefetchKeepsItsScan(t *testing.T) {
	entered, gate := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	var swapped atomic.Int32
	old := scanSSH
	t.Cleanup(func() { scanSSH = old })
	scanSSH = func(string, string) (safeapply.SSHState, error) {
		if first.CompareAndSwap(false, true) {
			close(entered)
			<-gate // holds the scan's lock
			return safeapply.SSHState{}, errors.New("not cached")
		}
		return safeapply.SSHState{Listen: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:22")}}, nil
	}
	a := &app{stateDir: t.TempDir()}
	if err := os.WriteFile(filepath.Join(a.stateDir, engine.AppliedFile), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	scan := a.findSSH()
	firstDone := make(chan struct{})
	go func() { _, _ = scan(); close(firstDone) }()
	<-entered
	a.prefetchSSH() // waits for the lock the first scan holds
	scanSSH = func(string, string) (safeapply.SSHState, error) {
		swapped.Add(1)
		return safeapply.SSHState{}, nil
	}
	close(gate)
	<-firstDone
	st, err := a.findSSH()()
	if err != nil {
		t.Fatal(err)
	}
	if n := swapped.Load(); n != 0 || len(st.Listen) != 1 {
		t.Errorf("the command's scan was replaced by the one swapped in after it began: %d calls, got %+v", n, st)
	}
}
