// Package engine is moat's state machine: apply, confirm, rollback,
// restore, disable, and the records that say what is applied. The command
// line parses flags and prints; everything that changes the kernel, the
// policy file or the state directory goes through here, with explicit
// options (backends, state directory, session finder, clock, watchdog
// starter), so the whole machine runs against a fake backend in tests.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
)

// Backend is what the engine needs of a kernel interface: load a ruleset,
// say whether moat's rules are there, remove them, and snapshot and
// restore everything moat owns (for a rollback).
type Backend interface {
	Name() string
	// Available says whether the backend can run here, and why not.
	Available() error
	// Apply makes moat's rules exactly rs, atomically.
	Apply(ctx context.Context, rs *ruleset.Ruleset) error
	// Active says whether moat's rules are loaded.
	Active(ctx context.Context) (bool, error)
	// Remove deletes moat's rules and nothing else.
	Remove(ctx context.Context) error
	// Snapshot captures everything moat owns (nil: nothing); Restore makes
	// moat's state exactly a snapshot again.
	Snapshot(ctx context.Context) ([]byte, error)
	Restore(ctx context.Context, snap []byte) error
}

// Options are everything the engine depends on.
type Options struct {
	// StateDir holds the records (applied.json, saved.json, pending...).
	StateDir string
	// Backends are the backends moat knows (nftables, iptables), each once.
	Backends []Backend
	// Detect picks the backend for 'backend auto': the one of Backends by
	// the name of what it returns (what it returns itself only when
	// Backends has none of that name).
	Detect func() Backend
	// FindSSH finds the live SSH sessions and sshd's ports; nil skips the
	// lockout check. IfaceFor says on which interface a client's packets
	// arrive.
	FindSSH func() (safeapply.SSHState, error)
	// LoggedIn lists the clients of logged-in SSH sessions, which the
	// protected sets hold (never dropped before conntrack, never
	// trapped); a connection still guessing passwords is not one. Nil:
	// the clients of every session FindSSH finds.
	LoggedIn func() ([]netip.Addr, error)
	// FindForwarded lists the SSH connections this host routes (nil:
	// none are looked for).
	FindForwarded func() ([]safeapply.ForwardedSSH, error)
	IfaceFor      func(netip.Addr) string
	// ResolvConf is read for the warnings of 'default deny outgoing'.
	ResolvConf string
	// FailClosedPolicy is the policy 'moat restore' loads when the saved
	// ruleset cannot be used: only SSH in.
	FailClosedPolicy func() string
	// StartWatchdog starts the detached process that runs Watch(id), and
	// returns its PID (0: none, the caller runs Watch itself).
	StartWatchdog func(id string) (int, error)
	// Services resolves service names in policies (nil: none).
	Services policy.Services
	// Apps are the application profiles policies may name (nil: none).
	Apps policy.Apps
	// Now is the wall clock. Uptime is the time since boot (CLOCK_BOOTTIME:
	// it never jumps, and counts a suspend), which deadlines are measured
	// on; nil with Now set follows Now (a test's clock).
	Now    func() time.Time
	Uptime func() time.Duration
	// Log records what the engine does; Warn tells the admin (stderr).
	Log  *slog.Logger
	Warn func(msg string)
	// OtherRecords name the files other parts of moat write in StateDir
	// (kernel-fingerprint.json, the iptables backend's caches): a kill
	// during their write leaves a hidden temporary file beside them that
	// the repair removes with its own (removePrepared).
	OtherRecords []string
	// OtherRecordPrefixes are the prefixes of the files the backends
	// write in StateDir under moat's lock (the records of the policy
	// sets' elements: nft-set., ipset.); the repair removes their
	// temporary files too.
	OtherRecordPrefixes []string
	// PolicyPath is the policy file the command edits (--config): the
	// repair removes the temporary files a kill left beside it and its
	// FILE.unconfirmed copy (written by commands with no journal: a
	// rollback, 'moat init'); "" skips it.
	PolicyPath string
	// Checkpoint, if set, is called between the steps of a change; a test
	// returns an error there to simulate kill -9 at that point (the
	// engine then returns at once, cleaning up nothing).
	Checkpoint func(step string) error
}

// Engine runs moat's state changes. It is not safe for concurrent use by
// goroutines; processes are serialized by Lock.
type Engine struct {
	o     Options
	lockf *os.File
	// repairRolledBack is the pending change that the repair run by
	// this command's Lock rolled back (its deadline had passed, or a
	// rollback cut short was finished); nil if none.
	repairRolledBack *Pending
	// bansHeld counts the holds of the bans lock this command has
	// (holdBans: an undo within a change of backend holds it again).
	bansHeld int
	// bansWait, when set, replaces bansLockWait (tests).
	bansWait time.Duration
	// bansRecordWarned is the warning given for an unreadable
	// pending.bans: a rollback reads it for the login exemptions, then
	// for the bans, and says it once.
	bansRecordWarned string
}

// New returns an engine; missing options get safe defaults.
func New(o Options) *Engine {
	if o.Uptime == nil {
		if o.Now == nil {
			o.Uptime = bootTime
		} else {
			now := o.Now
			o.Uptime = func() time.Duration { return now().Sub(time.Unix(0, 0)) }
		}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Warn == nil {
		o.Warn = func(string) {}
	}
	if o.FailClosedPolicy == nil {
		o.FailClosedPolicy = func() string { return safeapply.FailClosedPolicy("/etc/ssh/sshd_config") }
	}
	if o.IfaceFor == nil {
		o.IfaceFor = func(netip.Addr) string { return "" }
	}
	return &Engine{o: o}
}

// StateDir is the engine's state directory.
func (e *Engine) StateDir() string { return e.o.StateDir }

func (e *Engine) warn(msg string) { e.o.Warn(msg) }

// errCrash marks a simulated kill -9 (Options.Checkpoint).
type errCrash struct{ err error }

func (c *errCrash) Error() string { return c.err.Error() }
func (c *errCrash) Unwrap() error { return c.err }

// step calls the test checkpoint.
func (e *Engine) step(name string) error {
	if e.o.Checkpoint == nil {
		return nil
	}
	if err := e.o.Checkpoint(name); err != nil {
		return &errCrash{err}
	}
	return nil
}

// IsCrash reports whether err is a simulated kill -9.
func IsCrash(err error) bool {
	var c *errCrash
	return errors.As(err, &c)
}

// backend returns the backend with that name; "auto" or "" detects.
func (e *Engine) backend(name string) (Backend, error) {
	switch policy.Backend(name) {
	case policy.BackendAuto, "":
		if e.o.Detect == nil {
			if len(e.o.Backends) == 0 {
				return nil, errors.New("no backend")
			}
			return e.o.Backends[0], nil
		}
		// Detect names the backend; the one of Backends by that name is
		// the one configured as an explicit name gets it (element
		// records, state and key directories: without them a first
		// enable with backend auto wrote no element records and no chain
		// cache).
		d := e.o.Detect()
		if b := e.named(d.Name()); b != nil {
			return b, nil
		}
		return d, nil
	}
	if b := e.named(name); b != nil {
		return b, nil
	}
	return nil, fmt.Errorf("unknown backend %q: expected auto, nftables or iptables", name)
}

// named is the backend of Options.Backends with that name (nil: none).
func (e *Engine) named(name string) Backend {
	for _, b := range e.o.Backends {
		if b.Name() == name {
			return b
		}
	}
	return nil
}

// State is what the engine knows of moat's state, for status and drift.
type State struct {
	// Applied is the record of what moat applied (nil: none).
	Applied *Applied
	// Kernel names the backends that hold moat's rules now (normally one;
	// none when moat is inactive).
	Kernel []string
	// Pending is the change waiting for confirmation (nil: none).
	Pending *Pending
	// Saved: a ruleset is saved for boot.
	Saved bool
	// Interrupted is the journal of a command that died mid-change and
	// was not repaired yet (nil: none).
	Interrupted *Intent
}

// State reads the records and asks the kernel which backend holds moat's
// rules. It changes nothing and takes no lock.
func (e *Engine) State(ctx context.Context) (*State, error) {
	st := &State{Saved: safeapply.Enabled(e.o.StateDir)}
	var err error
	if st.Applied, err = LoadApplied(e.o.StateDir); err != nil {
		return nil, err
	}
	if p, err := LoadPending(e.o.StateDir); err == nil {
		st.Pending = p
	} else if !errors.Is(err, ErrNoPending) {
		return nil, err
	}
	if st.Interrupted, err = LoadIntent(e.o.StateDir); err != nil {
		return nil, err
	}
	if st.Kernel, err = e.kernel(ctx); err != nil {
		return nil, err
	}
	return st, nil
}

// kernel lists the backends whose moat rules are loaded. When no backend
// can even be asked (no root, no tools), that is an error, not "inactive".
func (e *Engine) kernel(ctx context.Context) ([]string, error) {
	var names []string
	var unusable []error
	for _, b := range e.o.Backends {
		if err := b.Available(); err != nil {
			unusable = append(unusable, err)
			continue
		}
		ok, err := b.Active(ctx)
		if err != nil {
			return nil, fmt.Errorf("ask %s for moat's rules: %w", b.Name(), err)
		}
		if ok {
			names = append(names, b.Name())
		}
	}
	if len(e.o.Backends) > 0 && len(unusable) == len(e.o.Backends) {
		if os.Geteuid() != 0 {
			unusable = append([]error{errors.New("moat needs root to read or change the firewall")}, unusable...)
		}
		return nil, errors.Join(unusable...)
	}
	return names, nil
}
