package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Pending is an applied change waiting for `moat confirm`.
type Pending struct {
	ID       string    `json:"id"`
	Backend  string    `json:"backend"`
	Deadline time.Time `json:"deadline"`
	// DeadlineUptime is the deadline on the clock since boot (the wall
	// clock may be set back or forward meanwhile); 0 in records of older
	// versions, which use Deadline.
	DeadlineUptime time.Duration `json:"deadline_uptime_ns,omitempty"`
	Created        time.Time     `json:"created"`
	BootID         string        `json:"boot_id"`
	// Watchdog is the process that rolls the change back at the deadline.
	Watchdog Proc `json:"watchdog"`
	// PolicyPath is the policy file; HadPolicy is false when there was no
	// file before the change.
	PolicyPath string `json:"policy_path"`
	HadPolicy  bool   `json:"had_policy"`
	// PrevBackend had moat's rules before the change ("" if none).
	PrevBackend string `json:"prev_backend"`
	// Prev is the applied record before the change (nil: nothing was).
	Prev *Applied `json:"prev"`
	// Persist: on confirm, save the policy for boot.
	Persist bool `json:"persist"`
	// SnapshotSHA256 and PolicySHA256 are the checksums of
	// pending.snapshot and pending.policy, checked before they are used.
	SnapshotSHA256 string `json:"snapshot_sha256"`
	PolicySHA256   string `json:"policy_sha256"`
	// State is "" while waiting; "confirming" or "rolling back" once one
	// of them started: if that command dies, the next one finishes it.
	State string `json:"state,omitempty"`
}

const (
	stateConfirming  = "confirming"
	stateRollingBack = "rolling back"
)

// Proc identifies a process robustly: a PID alone may be reused, so its
// start time (in clock ticks since boot, /proc/PID/stat field 22) and its
// command line are checked too before it is signalled.
type Proc struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
	// Marker must be one of its arguments ("watchdog" then the change ID).
	Marker []string `json:"marker"`
}

// ErrNoPending means there is no change waiting for confirmation.
var ErrNoPending = errors.New("no change is waiting for confirmation")

func bootID() string {
	data, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(data))
}

// RollingBack says whether a rollback of the change began (it may have
// been killed part way: the kernel then holds part of either).
func (p *Pending) RollingBack() bool { return p.State == stateRollingBack }

// LoadPending returns the change waiting for confirmation, or ErrNoPending.
// A pending change from an earlier boot is stale: nothing can roll it back
// any more, and the boot loaded the saved ruleset anyway.
func LoadPending(dir string) (*Pending, error) {
	p, err := readPending(dir)
	if err != nil {
		return nil, err
	}
	if p.BootID != bootID() {
		return nil, ErrNoPending
	}
	return p, nil
}

// loadStalePending returns a pending change recorded during an earlier
// boot (nil: none). The restart ended it unconfirmed: repair rolls its
// policy file back.
func loadStalePending(dir string) (*Pending, error) {
	p, err := readPending(dir)
	if errors.Is(err, ErrNoPending) {
		return nil, nil
	}
	if err != nil || p.BootID == bootID() {
		return nil, err
	}
	return p, nil
}

// readPending reads pending.json, whatever boot it belongs to.
func readPending(dir string) (*Pending, error) {
	data, err := readState(dir, pendingFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoPending
	}
	if err != nil {
		return nil, fmt.Errorf("read pending change: %w", err)
	}
	var p Pending
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("read pending change %s: %w", filepath.Join(dir, pendingFile), err)
	}
	return &p, nil
}

func clearPending(dir string) error {
	var errs []error
	// pending.json first: without it the rest is ignored.
	for _, f := range []string{pendingFile, snapshotFile, policyFile, rollbackBansFile, listCopiesFile} {
		errs = append(errs, removeState(dir, f))
	}
	return errors.Join(errs...)
}

// procStart reads a process's start time, or 0 if it is gone.
func procStart(pid int) uint64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) may contain spaces and parentheses: the
	// fields after it start after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state); field 22 is f[19].
	if len(f) < 20 || f[0] == "Z" {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// identify fills in a started process's start time.
func identify(pid int, marker ...string) Proc {
	return Proc{PID: pid, Start: procStart(pid), Marker: marker}
}

// is reports whether the process with this PID is still the one p names.
func (p Proc) is() bool {
	if p.PID <= 0 || p.PID == os.Getpid() || p.Start == 0 || procStart(p.PID) != p.Start {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(p.Marker) == 0 {
		return false // no arguments to check: never signal it
	}
	for i := range args {
		if i+len(p.Marker) <= len(args) && slices.Equal(args[i:i+len(p.Marker)], p.Marker) {
			return true
		}
	}
	return false
}

// Stopped reports whether the process is the one recorded and is stopped
// (SIGSTOP, Ctrl-Z, a debugger): it acts on nothing until continued.
func (p Proc) Stopped() bool {
	if !p.is() {
		return false
	}
	st := procState(strconv.Itoa(p.PID))
	return st == "T" || st == "t"
}

// Alive reports whether the process still runs (the same one).
func (p Proc) Alive() bool { return p.is() }

// Stop sends SIGTERM to the process if, and only if, it is still the one
// recorded: through a pidfd opened first, so the PID cannot be reused
// between the check and the signal. Anything else is left alone.
func (p Proc) Stop() {
	if p.PID <= 0 || p.PID == os.Getpid() {
		return
	}
	fd, err := unix.PidfdOpen(p.PID, 0)
	if err != nil {
		return // gone already
	}
	defer func() { _ = unix.Close(fd) }()
	if !p.is() {
		return
	}
	_ = unix.PidfdSendSignal(fd, syscall.SIGTERM, nil, 0)
}

// bootTime is CLOCK_BOOTTIME: the time since boot, suspend included.
func bootTime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// left is how long p has before its deadline on the clock since boot
// (a pending change never outlives its boot), or on the wall clock for
// a record without it.
func (p *Pending) left(now time.Time, uptime time.Duration) time.Duration {
	if p.DeadlineUptime > 0 && uptime > 0 {
		return p.DeadlineUptime - uptime
	}
	return p.Deadline.Sub(now)
}

// Left is how long the pending change has before it is rolled back
// (0 or less: due now).
func (p *Pending) Left() time.Duration { return p.left(time.Now(), bootTime()) }

// deadlineAt is the uptime at which a change applied at uptime and
// confirmable for d rolls back (saturated: --confirm 2562047h must not
// wrap into the past).
func deadlineAt(uptime, d time.Duration) time.Duration {
	if uptime <= 0 {
		return 0
	}
	if d > math.MaxInt64-uptime {
		return math.MaxInt64
	}
	return uptime + d
}
