package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/blocklist"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
	"github.com/moat-fw/moat/internal/statedir"
	"github.com/moat-fw/moat/internal/statetext"
)

// rig is an engine on fake backends, a temporary state directory and
// policy file, and a clock the test moves.
type rig struct {
	t        *testing.T
	dir      string
	conf     string
	nft, ipt *Fake
	now      time.Time
	up       time.Duration // the clock since boot
	mu       sync.Mutex
	warnings []string
	crashAt  string // checkpoint that simulates kill -9 (once)
	eng      *Engine
}

func newRig(t *testing.T) *rig {
	t.Helper()
	d := t.TempDir()
	r := &rig{t: t, dir: filepath.Join(d, "state"), conf: filepath.Join(d, "moat.conf"),
		nft: NewFake("nftables"), ipt: NewFake("iptables"), now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), up: time.Hour}
	r.eng = r.newEngine()
	return r
}

// enabledRig is a rig whose policy file holds base, enabled (no
// confirmation): where most tests start.
func enabledRig(t *testing.T) *rig {
	t.Helper()
	r := newRig(t)
	r.write(base)
	_, err := r.enable(r.ch(0))
	r.must(err)
	return r
}

// waiting adds "allow 443/tcp" with a minute to confirm it: a change
// that waits for confirmation (its watchdog armed).
func (r *rig) waiting() *Result {
	r.t.Helper()
	res, err := r.add(r.ch(time.Minute), "allow 443/tcp")
	r.must(err)
	return res
}

// refuse is a fake's Fail that refuses the operation op with msg
// (the kernel refusing it) and lets every other one through.
func refuse(op, msg string) func(string) error {
	return func(o string) error {
		if o == op {
			return errors.New(msg)
		}
		return nil
	}
}

func (r *rig) newEngine() *Engine {
	return New(Options{
		StateDir:         r.dir,
		Backends:         []Backend{r.nft, r.ipt},
		Detect:           func() Backend { return r.nft },
		FailClosedPolicy: func() string { return "default deny incoming\nallow 22/tcp comment 'sshd (fail-closed)'\n" },
		Now: func() time.Time {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.now
		},
		Uptime: func() time.Duration {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.up
		},
		Warn: func(m string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.warnings = append(r.warnings, m)
		},
		Checkpoint: func(step string) error {
			if r.crashAt != "" && step == r.crashAt {
				r.crashAt = ""
				return errors.New("killed at " + step)
			}
			return nil
		},
	})
}

func (r *rig) advance(d time.Duration) {
	r.mu.Lock()
	r.now = r.now.Add(d)
	r.up += d
	r.mu.Unlock()
}

// setWall sets the wall clock alone (date -s, NTP stepping it).
func (r *rig) setWall(d time.Duration) {
	r.mu.Lock()
	r.now = r.now.Add(d)
	r.mu.Unlock()
}

// do runs fn holding the lock, as every CLI command does.
func (r *rig) do(fn func(ctx context.Context, e *Engine) error) error {
	ctx := context.Background()
	unlock, err := r.eng.Lock(ctx, "moat test")
	if err != nil {
		return err
	}
	defer unlock()
	return fn(ctx, r.eng)
}

func (r *rig) must(err error) {
	r.t.Helper()
	if err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) write(text string) {
	r.t.Helper()
	r.must(os.WriteFile(r.conf, []byte(text), 0o644))
}

func (r *rig) file() string {
	data, _ := os.ReadFile(r.conf)
	return string(data)
}

func (r *rig) ch(confirm time.Duration) Change {
	return Change{Command: "moat test", Path: r.conf, Confirm: confirm}
}

func (r *rig) enable(ch Change) (*Result, error) {
	var res *Result
	err := r.do(func(ctx context.Context, e *Engine) error {
		var err error
		res, err = e.Enable(ctx, ch)
		return err
	})
	return res, err
}

// add appends a rule line, as 'moat allow ...' does.
func (r *rig) add(ch Change, line string) (*Result, error) {
	var res *Result
	err := r.do(func(ctx context.Context, e *Engine) error {
		var err error
		res, err = e.Edit(ctx, ch, func(d *policy.Document) (string, bool, error) {
			d.AppendLine(line)
			return "Rule added: " + line, true, nil
		})
		return err
	})
	return res, err
}

// compiled is what a fake holds after loading text from the file conf.
func compiled(t *testing.T, text, conf string) string {
	t.Helper()
	p, err := policy.NewDocument(conf, []byte(text)).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(ruleset.Compile(p))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// kernelIs checks that exactly one fake holds text (or none, for "").
func (r *rig) kernelIs(backend, text string) {
	r.t.Helper()
	for _, f := range []*Fake{r.nft, r.ipt} {
		want := ""
		if f.Name() == backend && text != "" {
			want = compiled(r.t, text, r.conf)
		}
		if got := f.Loaded(); got != want {
			r.t.Errorf("%s holds the wrong ruleset (want the one of %q)", f.Name(), text)
		}
	}
}

// backAtBase checks that the nftables fake holds base's ruleset, and the
// policy file base, as after a rollback to it.
func (r *rig) backAtBase() {
	r.t.Helper()
	r.kernelIs("nftables", base)
	if r.file() != base {
		r.t.Errorf("the policy file is not back at base:\n%s", r.file())
	}
}

// allHold checks that the policy file, the kernel (nftables) and the
// applied record all hold want.
func (r *rig) allHold(want string) {
	r.t.Helper()
	if r.file() != want {
		r.t.Errorf("file:\n%s\nwant:\n%s", r.file(), want)
	}
	r.kernelIs("nftables", want)
	a, err := LoadApplied(r.dir)
	r.must(err)
	if a == nil || a.Policy != want {
		r.t.Errorf("applied record: %+v", a)
	}
}

// expire lets the deadline pass and runs the watchdog.
func (r *rig) expire(p *Pending) {
	r.t.Helper()
	r.advance(p.Deadline.Sub(p.Created) + time.Second)
	r.must(r.eng.Watch(context.Background(), p.ID))
}

const base = "default deny incoming\nallow 22/tcp\n"

// Issue 7, defect 1: after any number of unconfirmed changes the policy
// file and the kernel are exactly as before the first, and a later plain
// change does not bring a rolled-back rule back.
func TestUnconfirmedChangesLeaveNoTrace(t *testing.T) {
	r := enabledRig(t)
	for _, port := range []string{"443", "8080"} {
		res, err := r.add(r.ch(2*time.Second), "allow "+port+"/tcp")
		r.must(err)
		r.kernelIs("nftables", base+"allow "+port+"/tcp\n")
		r.expire(res.Pending)
		if got := r.file(); got != base {
			t.Fatalf("after the rollback of %s the file is:\n%s", port, got)
		}
		r.kernelIs("nftables", base)
	}
	_, err := r.add(r.ch(0), "allow 9999/tcp")
	r.must(err)
	want := base + "allow 9999/tcp\n"
	if got := r.file(); got != want {
		t.Errorf("file after a plain allow:\n%s", got)
	}
	r.kernelIs("nftables", want)
	a, err := LoadApplied(r.dir)
	r.must(err)
	if a.Policy != want || a.Pending != "" {
		t.Errorf("applied record: %+v", a)
	}
}

// Issue 7, defect 5: a plain command keeps the applied backend; a change
// of backend is explicit and removes the old backend's rules.
func TestPlainCommandKeepsBackend(t *testing.T) {
	r := newRig(t)
	r.write(base)
	ch := r.ch(0)
	ch.Backend = "iptables"
	_, err := r.enable(ch)
	r.must(err)
	r.kernelIs("iptables", base)
	res, err := r.add(r.ch(0), "allow 80/tcp")
	r.must(err)
	if res.Switched != "" || res.Applied.Backend != "iptables" {
		t.Errorf("a plain allow moved the rules: %+v", res)
	}
	r.kernelIs("iptables", base+"allow 80/tcp\n")
	// The policy's backend line changes: that is explicit.
	r.write("backend nftables\n" + base)
	res, err = r.enable(r.ch(0))
	r.must(err)
	if res.Switched != "iptables" || res.Applied.Backend != "nftables" {
		t.Errorf("switch by the backend line: %+v", res)
	}
	r.kernelIs("nftables", "backend nftables\n"+base)
	// --backend is explicit too.
	ch.Backend = "iptables"
	res, err = r.enable(ch)
	r.must(err)
	if res.Switched != "nftables" {
		t.Errorf("switch by --backend: %+v", res)
	}
	r.kernelIs("iptables", "backend nftables\n"+base)
}

// Issue 8: a corrupted snapshot falls back to the policy applied before;
// if that cannot load either, to the saved ruleset, then fail-closed.
func TestCorruptSnapshotFallsBack(t *testing.T) {
	r := enabledRig(t)
	res, err := r.add(r.ch(time.Second), "allow 443/tcp")
	r.must(err)
	r.must(os.WriteFile(filepath.Join(r.dir, snapshotFile), []byte("garbage"), 0o600))
	r.expire(res.Pending)
	r.backAtBase()

	// Snapshot gone and the previous policy fails to load once: the saved
	// ruleset is loaded.
	res, err = r.add(r.ch(time.Second), "allow 443/tcp")
	r.must(err)
	r.must(os.Remove(filepath.Join(r.dir, snapshotFile)))
	applies := 0
	r.nft.Fail = func(op string) error {
		if op == "apply" {
			if applies++; applies == 1 {
				return errors.New("injected")
			}
		}
		return nil
	}
	r.expire(res.Pending)
	r.nft.Fail = nil
	r.kernelIs("nftables", base)

	// Nothing loads but the fail-closed ruleset.
	res, err = r.add(r.ch(time.Second), "allow 443/tcp")
	r.must(err)
	r.must(os.Remove(filepath.Join(r.dir, snapshotFile)))
	r.must(os.WriteFile(filepath.Join(r.dir, savedFile), []byte("{"), 0o600))
	applies = 0
	r.nft.Fail = func(op string) error {
		if op == "apply" {
			if applies++; applies == 1 {
				return errors.New("injected")
			}
		}
		return nil
	}
	r.expire(res.Pending)
	r.nft.Fail = nil
	a, err := LoadApplied(r.dir)
	r.must(err)
	if a == nil || !a.FailClosed {
		t.Fatalf("not fail-closed after every fallback failed: %+v", a)
	}
	r.kernelIs("nftables", a.Policy)
}

// Issue 8: a fail-closed restore stays fail-closed, and loud, until an
// admin applies a good policy; saved.json is never overwritten by it.
func TestRestoreTwiceStaysFailClosed(t *testing.T) {
	r := newRig(t)
	r.must(os.MkdirAll(r.dir, 0o700))
	r.must(os.WriteFile(filepath.Join(r.dir, savedFile), []byte("{not json"), 0o600))
	for i := 0; i < 2; i++ {
		err := r.do(func(ctx context.Context, e *Engine) error {
			_, err := e.Restore(ctx, r.ch(0))
			return err
		})
		var fc *FailClosedError
		if !errors.As(err, &fc) {
			t.Fatalf("restore %d: %v", i+1, err)
		}
		if data, _ := os.ReadFile(filepath.Join(r.dir, savedFile)); string(data) != "{not json" {
			t.Fatalf("restore %d overwrote saved.json:\n%s", i+1, data)
		}
		a, err := LoadApplied(r.dir)
		r.must(err)
		if a == nil || !a.FailClosed || !strings.Contains(a.FailReason, "saved") {
			t.Fatalf("restore %d: record %+v", i+1, a)
		}
	}
	// A plain edit does not apply on top of fail-closed.
	r.write(base)
	res, err := r.add(r.ch(0), "allow 80/tcp")
	r.must(err)
	if res.FailClosed == nil || res.Applied != nil {
		t.Errorf("edit while fail-closed: %+v", res)
	}
	// The admin applies a good policy: restore works again.
	_, err = r.enable(r.ch(0))
	r.must(err)
	r.must(r.do(func(ctx context.Context, e *Engine) error {
		_, err := e.Restore(ctx, r.ch(0))
		return err
	}))
	a, _ := LoadApplied(r.dir)
	if a.FailClosed {
		t.Errorf("still fail-closed after a good enable and restore")
	}
	r.kernelIs("nftables", base+"allow 80/tcp\n")
}

// Issue 7: confirm after a rollback says when it was rolled back.
func TestConfirmAfterRollbackSaysWhen(t *testing.T) {
	r := enabledRig(t)
	res, err := r.add(r.ch(time.Second), "allow 443/tcp")
	r.must(err)
	r.expire(res.Pending)
	err = r.do(func(ctx context.Context, e *Engine) error { _, err := e.Confirm(ctx); return err })
	if err == nil || !strings.Contains(err.Error(), "was rolled back at") {
		t.Errorf("confirm after rollback: %v", err)
	}
}

// Issue 8: a change is refused before the kernel changes when the
// rollback cannot be armed.
func TestArmFailureChangesNothing(t *testing.T) {
	r := enabledRig(t)
	r.eng.o.StartWatchdog = func(string) (int, error) { return 0, errors.New("no fork today") }
	_, err := r.add(r.ch(time.Second), "allow 443/tcp")
	if err == nil || !strings.Contains(err.Error(), "nothing was applied") {
		t.Fatalf("arm failure: %v", err)
	}
	r.backAtBase()
	if _, err := LoadPending(r.dir); !errors.Is(err, ErrNoPending) {
		t.Errorf("pending left: %v", err)
	}
	if in, _ := LoadIntent(r.dir); in != nil {
		t.Errorf("intent left: %+v", in)
	}
}

// kill -9 at every step of a change: the next command puts back the state
// before it (or, past the last step, keeps the change whole).
func TestKillAtEveryStep(t *testing.T) {
	steps := []string{"intent", "pending", "armed", "kernel", "switched", "file", "applied", "saved", "done"}
	for _, confirm := range []time.Duration{0, time.Minute} {
		for _, step := range steps {
			t.Run(fmt.Sprintf("%s/confirm=%v", step, confirm), func(t *testing.T) {
				r := enabledRig(t)
				r.crashAt = step
				_, err := r.add(r.ch(confirm), "allow 443/tcp")
				crashed := IsCrash(err)
				if err != nil && !crashed {
					t.Fatal(err)
				}
				// The next command repairs.
				r.must(r.do(func(context.Context, *Engine) error { return nil }))
				want := base
				if !crashed || step == "done" {
					want = base + "allow 443/tcp\n"
				}
				r.allHold(want)
				s, err := safeapply.LoadSaved(r.dir)
				r.must(err)
				if confirm == 0 && s.Policy != want {
					t.Errorf("saved: %q, want %q", s.Policy, want)
				}
				if in, _ := LoadIntent(r.dir); in != nil {
					t.Errorf("intent left")
				}
				if crashed && step != "done" && !strings.Contains(strings.Join(r.warnings, "\n"), "interrupted") {
					t.Errorf("the repair was not reported: %q", r.warnings)
				}
			})
		}
	}
}

// Two commands at once never lose an update: 20 engines (as 20 processes)
// add a rule each, under the lock.
func TestParallelEditsSerialize(t *testing.T) {
	r := enabledRig(t)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := r.newEngine()
			unlock, err := e.Lock(context.Background(), fmt.Sprintf("moat allow %d", 1000+i))
			if err != nil {
				errs <- err
				return
			}
			defer unlock()
			_, err = e.Edit(context.Background(), r.ch(0), func(d *policy.Document) (string, bool, error) {
				d.AppendLine(fmt.Sprintf("allow %d/tcp", 1000+i))
				return "", true, nil
			})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		r.must(err)
	}
	doc, err := policy.ReadDocument(r.conf)
	r.must(err)
	if n := doc.RuleCount(); n != 21 {
		t.Errorf("%d rules in the file, want 21:\n%s", n, r.file())
	}
	r.kernelIs("nftables", r.file())
	if !strings.Contains(strings.Join(r.warnings, "\n"), "waiting for PID") {
		t.Logf("no command had to wait (possible, but unlikely): %q", r.warnings)
	}
}

// moat confirm signals the watchdog only: a process that merely has the
// recorded PID, or the right PID but another start time or command line,
// is left alone.
func TestStopSignalsOnlyTheWatchdog(t *testing.T) {
	start := func(args ...string) *exec.Cmd {
		cmd := exec.Command("/bin/sh", append([]string{"-c", "sleep 30"}, args...)...)
		r := cmd.Start()
		if r != nil {
			t.Fatal(r)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		time.Sleep(50 * time.Millisecond) // let it exec
		return cmd
	}
	alive := func(cmd *exec.Cmd) bool { return procStart(cmd.Process.Pid) != 0 }

	other := start("x", "y")
	p := identify(other.Process.Pid, "watchdog", "abc")
	p.Stop()
	time.Sleep(50 * time.Millisecond)
	if !alive(other) {
		t.Fatal("a process without the watchdog's arguments was killed")
	}
	wrongStart := identify(other.Process.Pid, "x", "y")
	wrongStart.Start++
	wrongStart.Stop()
	time.Sleep(50 * time.Millisecond)
	if !alive(other) {
		t.Fatal("a process with another start time was killed")
	}

	wd := start("watchdog", "abc")
	p = identify(wd.Process.Pid, "watchdog", "abc")
	if !p.Alive() {
		t.Fatal("the watchdog is not recognized")
	}
	p.Stop()
	_ = wd.Wait()
	if p.Alive() {
		t.Fatal("the watchdog was not stopped")
	}
}

// The lock says who holds it.
func TestLockSaysWhoHoldsIt(t *testing.T) {
	r := newRig(t)
	unlock, err := r.eng.Lock(context.Background(), "moat allow 80/tcp")
	r.must(err)
	other := r.newEngine()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = other.Lock(ctx, "moat deny 25")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second lock: %v", err)
	}
	want := fmt.Sprintf("waiting for PID %d (moat allow 80/tcp)", os.Getpid())
	if !strings.Contains(strings.Join(r.warnings, "\n"), want) {
		t.Errorf("warnings %q lack %q", r.warnings, want)
	}
	unlock()
	unlock2, err := other.Lock(context.Background(), "moat deny 25")
	r.must(err)
	unlock2()
}

// Corrupted state files never leave the admin stuck: every state change
// either works or fails naming the file, and disable always gets back to
// a clean state from which enable works.
func TestCorruptStateFiles(t *testing.T) {
	for _, name := range []string{AppliedFile, pendingFile, snapshotFile, policyFile, IntentFile, savedFile, outcomeFile} {
		t.Run(name, func(t *testing.T) {
			r := enabledRig(t)
			_, err := r.add(r.ch(time.Minute), "allow 443/tcp")
			r.must(err)
			r.must(os.WriteFile(filepath.Join(r.dir, name), []byte("\x00{garbage"), 0o600))
			_, err = r.add(r.ch(0), "allow 80/tcp")
			if err != nil && !strings.Contains(err.Error(), r.dir) && !strings.Contains(err.Error(), "waiting for confirmation") {
				t.Errorf("an error that does not name the state: %v", err)
			}
			r.must(r.disable())
			r.kernelIs("nftables", "")
			for _, f := range []string{AppliedFile, pendingFile, IntentFile, savedFile} {
				if _, err := os.Stat(filepath.Join(r.dir, f)); err == nil {
					t.Errorf("%s left after disable", f)
				}
			}
			_, err = r.enable(r.ch(0))
			r.must(err)
			r.kernelIs("nftables", r.file())
		})
	}
}

// The same fault twice: a backend that refuses every apply changes
// nothing, each time; a rollback that fails at the deadline is tried
// again until it works.
func TestSameFaultTwice(t *testing.T) {
	r := enabledRig(t)
	r.nft.Fail = refuse("apply", "kernel says no")
	for i := 0; i < 2; i++ {
		for _, confirm := range []time.Duration{0, time.Minute} {
			if _, err := r.add(r.ch(confirm), "allow 443/tcp"); err == nil {
				t.Fatal("an apply the kernel refused succeeded")
			}
			if r.file() != base {
				t.Fatalf("file changed by a refused apply:\n%s", r.file())
			}
			if _, err := LoadPending(r.dir); !errors.Is(err, ErrNoPending) {
				t.Fatalf("pending left by a refused apply: %v", err)
			}
			if in, _ := LoadIntent(r.dir); in != nil {
				t.Fatalf("intent left by a refused apply")
			}
		}
	}
	r.nft.Fail = nil
	r.kernelIs("nftables", base)

	// Every fallback of the rollback fails at the deadline; the watchdog
	// tries again and the next attempt works.
	res, err := r.add(r.ch(time.Second), "allow 443/tcp")
	r.must(err)
	fails := 0
	r.nft.Fail = func(op string) error {
		if op == "restore" || op == "apply" {
			if fails < 4 { // snapshot, previous policy, saved ruleset, fail-closed: all refused once
				fails++
				return errors.New("busy")
			}
		}
		return nil
	}
	r.advance(2 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r.must(r.eng.Watch(ctx, res.Pending.ID))
	r.nft.Fail = nil
	r.backAtBase()
}

// The watchdog waits for its pending state if it is not there yet, and
// then rolls the change back at the deadline.
func TestWatchdogWaitsForPending(t *testing.T) {
	r := enabledRig(t)
	res, err := r.add(r.ch(time.Second), "allow 443/tcp")
	r.must(err)
	pend := filepath.Join(r.dir, pendingFile)
	hidden := pend + ".hidden"
	r.must(os.Rename(pend, hidden))
	r.advance(2 * time.Second)
	done := make(chan error, 1)
	go func() { done <- r.newEngine().Watch(context.Background(), res.Pending.ID) }()
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("the watchdog gave up before its pending state appeared: %v", err)
	default:
	}
	r.must(os.Rename(hidden, pend))
	select {
	case err := <-done:
		r.must(err)
	case <-time.After(10 * time.Second):
		t.Fatal("the watchdog did not act")
	}
	r.backAtBase()
}

// A good saved ruleset that would cut a live SSH session: 'moat restore'
// refuses it like any change (a LockoutError, nothing applied) instead of
// loading the fail-closed ruleset, which dropped every other service and
// called the saved ruleset unreadable.
func TestRestoreRefusedByLockoutDoesNotFailClose(t *testing.T) {
	r := newRig(t)
	r.write(base + "allow 2222/tcp\nallow 80/tcp\n")
	_, err := r.enable(r.ch(0))
	r.must(err)
	// The saved ruleset lacks the port the admin's session now uses.
	saved, err := safeapply.LoadSaved(r.dir)
	r.must(err)
	saved.Policy = base + "allow 80/tcp\n"
	r.must(safeapply.Save(r.dir, *saved))
	session := safeapply.Session{Client: netip.MustParseAddrPort("192.0.2.2:40000"), Server: netip.MustParseAddrPort("192.0.2.1:2222"), Source: "test"}
	r.eng.o.FindSSH = func() (safeapply.SSHState, error) {
		return safeapply.SSHState{Listen: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:2222")}, Sessions: []safeapply.Session{session}}, nil
	}
	err = r.do(func(ctx context.Context, e *Engine) error {
		_, err := e.Restore(ctx, r.ch(0))
		return err
	})
	var lockout *safeapply.LockoutError
	if !errors.As(err, &lockout) {
		t.Fatalf("restore: want a lockout refusal, got %v", err)
	}
	var fc *FailClosedError
	if errors.As(err, &fc) {
		t.Fatalf("restore failed closed: %v", err)
	}
	a, err := LoadApplied(r.dir)
	r.must(err)
	if a == nil || a.FailClosed {
		t.Errorf("record after a refused restore: %+v", a)
	}
	r.kernelIs("nftables", base+"allow 2222/tcp\nallow 80/tcp\n")
	// --force applies the saved ruleset, still not fail-closed.
	ch := r.ch(0)
	ch.Force = true
	r.must(r.do(func(ctx context.Context, e *Engine) error {
		_, err := e.Restore(ctx, ch)
		return err
	}))
	r.kernelIs("nftables", base+"allow 80/tcp\n")
}

// fullDisk mounts a tiny tmpfs as the rig's state directory (root only)
// and returns a function that fills it to the last byte.
func fullDisk(t *testing.T, r *rig) (fill func(), free func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	r.must(os.MkdirAll(r.dir, 0o700))
	if err := syscall.Mount("tmpfs", r.dir, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(r.dir, syscall.MNT_DETACH) })
	filler := filepath.Join(r.dir, "fill")
	fill = func() {
		f, err := os.Create(filler)
		r.must(err)
		defer func() { _ = f.Close() }()
		buf := make([]byte, 512)
		for {
			if _, err := f.Write(buf); err != nil {
				return // ENOSPC: full
			}
		}
	}
	free = func() { r.must(os.Remove(filler)) }
	return fill, free
}

// The deadline passes while the state directory's disk is full (/var
// full of logs at 3 a.m.): the unconfirmed change must still leave the
// kernel. The rollback used to stop at its first write (marking
// pending.json "rolling back"), so the watchdog retried in silence (its
// log is on the same disk) and the change stayed in force until space was
// freed.
func TestRollbackOnFullDisk(t *testing.T) {
	r := newRig(t)
	fill, free := fullDisk(t, r)
	r.write(base)
	_, err := r.enable(r.ch(0))
	r.must(err)
	res, err := r.add(r.ch(time.Second), "allow 443/tcp")
	r.must(err)
	fill()
	r.advance(2 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err = r.eng.Watch(ctx, res.Pending.ID)
	r.backAtBase()
	if err != nil {
		t.Errorf("watchdog on a full disk: %v", err)
	}
	// Nothing claims the unconfirmed change is applied.
	if a, err := LoadApplied(r.dir); err == nil && a != nil && a.Policy != base {
		t.Errorf("applied record after the rollback: %+v", a)
	}
	if _, err := LoadPending(r.dir); !errors.Is(err, ErrNoPending) {
		t.Errorf("pending left: %v", err)
	}
	free()
	// Once there is room again, everything works.
	_, err = r.add(r.ch(0), "allow 80/tcp")
	r.must(err)
	r.kernelIs("nftables", base+"allow 80/tcp\n")
}

// A negative --confirm used to apply at once, with no rollback armed,
// and save the change for boot.
func TestNegativeConfirmRefused(t *testing.T) {
	r := enabledRig(t)
	for _, d := range []time.Duration{-5 * time.Second, -1} {
		if _, err := r.add(r.ch(d), "allow 443/tcp"); err == nil || !strings.Contains(err.Error(), "--confirm") {
			t.Errorf("--confirm %v: %v", d, err)
		}
		ch := r.ch(d)
		if _, err := r.enable(ch); err == nil {
			t.Errorf("enable --confirm %v accepted", d)
		}
	}
	r.backAtBase()
}

// rebootWith makes the pending change one of an earlier boot and empties
// the "kernel", as a reboot does.
func (r *rig) reboot() {
	r.t.Helper()
	path := filepath.Join(r.dir, pendingFile)
	data, err := os.ReadFile(path)
	r.must(err)
	var p map[string]any
	r.must(json.Unmarshal(data, &p))
	p["boot_id"] = "an-earlier-boot"
	data, err = json.Marshal(p)
	r.must(err)
	r.must(os.WriteFile(path, data, 0o600))
	r.must(r.nft.Remove(context.Background()))
	r.must(r.ipt.Remove(context.Background()))
}

// The host restarts while a --confirm change waits (the admin was locked
// out and power-cycled it, or the watchdog was killed): the boot loads the
// ruleset saved before the change, and the unconfirmed change must be gone
// from the policy file too. It used to stay in moat.conf, ignored as
// "stale", and the next plain 'moat allow' applied it for real.
func TestRebootDropsUnconfirmedChange(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		t.Run(fmt.Sprintf("enabled=%v", enabled), func(t *testing.T) {
			r := newRig(t)
			r.write(base)
			if enabled {
				_, err := r.enable(r.ch(0))
				r.must(err)
			} else {
				// Active, not saved for boot: applied by a plain reload.
				r.must(r.do(func(ctx context.Context, e *Engine) error {
					_, err := e.Enable(ctx, r.ch(0))
					if err == nil {
						err = safeapply.Forget(r.dir)
					}
					return err
				}))
			}
			_, err := r.add(r.ch(time.Hour), "allow 443/tcp")
			r.must(err)
			r.reboot()
			if enabled {
				r.must(r.do(func(ctx context.Context, e *Engine) error {
					_, err := e.Restore(ctx, r.ch(0))
					return err
				}))
				r.kernelIs("nftables", base)
			} else {
				r.must(r.do(func(context.Context, *Engine) error { return nil })) // the next command
			}
			if r.file() != base {
				t.Errorf("after the reboot the file holds the unconfirmed change:\n%s", r.file())
			}
			if o, err := LastOutcome(r.dir); err != nil || o.Outcome != "rolled back" {
				t.Errorf("outcome: %+v, %v", o, err)
			}
			if enabled {
				_, err = r.add(r.ch(0), "allow 9999/tcp")
				r.must(err)
				r.kernelIs("nftables", base+"allow 9999/tcp\n")
			}
			for _, f := range []string{pendingFile, snapshotFile, policyFile} {
				if _, err := os.Stat(filepath.Join(r.dir, f)); err == nil {
					t.Errorf("%s left after the reboot", f)
				}
			}
		})
	}
}

// The wall clock is set back an hour (date -s, NTP stepping a clock that
// ran fast) while a --confirm change waits: the rollback must still come
// at its deadline, not an hour late; set forward, not early. The deadline
// used to be wall-clock time only.
func TestDeadlineIgnoresWallClockJumps(t *testing.T) {
	for _, jump := range []time.Duration{-time.Hour, time.Hour} {
		t.Run(jump.String(), func(t *testing.T) {
			r := enabledRig(t)
			res, err := r.add(r.ch(10*time.Second), "allow 443/tcp")
			r.must(err)
			r.setWall(jump)
			r.advance(5 * time.Second)
			// Half way: the change stays whatever the wall clock says.
			r.must(r.do(func(context.Context, *Engine) error { return nil }))
			r.kernelIs("nftables", base+"allow 443/tcp\n")
			r.advance(6 * time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := r.eng.Watch(ctx, res.Pending.ID); err != nil {
				t.Fatalf("the watchdog did not roll back at the deadline: %v", err)
			}
			r.kernelIs("nftables", base)
		})
	}
}

// --confirm near the largest duration does not wrap into the past.
func TestHugeConfirmDoesNotWrap(t *testing.T) {
	r := enabledRig(t)
	res, err := r.add(r.ch(time.Duration(math.MaxInt64)), "allow 443/tcp")
	r.must(err)
	if left := r.eng.left(res.Pending); left < 100*365*24*time.Hour {
		t.Errorf("--confirm of the largest duration rolls back in %v", left)
	}
	r.must(r.do(func(context.Context, *Engine) error { return nil }))
	r.kernelIs("nftables", base+"allow 443/tcp\n")
}

// The watchdog is killed (kill -9, the OOM killer, 'pkill moat') while a
// change waits: nothing rolled it back at the deadline unless a command
// happened to run after it. The next state-changing command starts a new
// watchdog for it.
func TestKilledWatchdogIsRestarted(t *testing.T) {
	r := enabledRig(t)
	w := r.standInWatchdogs()
	res, err := r.add(r.ch(time.Minute), "allow 443/tcp")
	r.must(err)
	first := res.Pending.Watchdog
	if !first.Alive() {
		t.Fatal("the first watchdog is not recognized")
	}
	r.must(w.procs[0].Process.Kill())
	_ = w.procs[0].Wait()
	r.advance(10 * time.Second)
	r.must(r.do(func(context.Context, *Engine) error { return nil })) // the next command
	p, err := LoadPending(r.dir)
	r.must(err)
	if p.Watchdog.PID == first.PID || !p.Watchdog.Alive() {
		t.Fatalf("no new watchdog: %+v (the killed one was %d)", p.Watchdog, first.PID)
	}
	if !strings.Contains(strings.Join(r.warnings, "\n"), "was gone: a new one") {
		t.Errorf("the restart was not reported: %q", r.warnings)
	}
	r.kernelIs("nftables", base+"allow 443/tcp\n")
}

// disable runs 'moat disable' as the command does: under the lock a
// removal of moat's rules takes.
func (r *rig) disable() error {
	r.t.Helper()
	ctx := context.Background()
	unlock, err := r.eng.LockToRemove(ctx, "moat disable")
	r.must(err)
	defer unlock()
	return r.eng.Disable(ctx)
}

// standInWatchdogs makes r's engine start, for each watchdog, a sleeping
// stand-in process with the watchdog's arguments (so Alive and identify
// recognize it); the ones not yet waited for are killed at the test's end.
func (r *rig) standInWatchdogs() *standIns {
	w := &standIns{t: r.t}
	r.t.Cleanup(func() {
		for _, c := range w.procs {
			if c.ProcessState == nil {
				_ = c.Process.Kill()
				_ = c.Wait()
			}
		}
	})
	r.eng.o.StartWatchdog = func(id string) (int, error) {
		c := exec.Command("/bin/sh", "-c", "sleep 30", "watchdog", id)
		if err := c.Start(); err != nil {
			return 0, err
		}
		w.procs = append(w.procs, c)
		time.Sleep(50 * time.Millisecond) // let it exec
		return c.Process.Pid, nil
	}
	return w
}

// standIns are the stand-in watchdogs started, in order.
type standIns struct {
	t     *testing.T
	procs []*exec.Cmd
}

// stopped fails the test unless the first stand-in ends by SIGTERM (the
// engine's stop) within 5 s; left says what a watchdog left running does.
func (w *standIns) stopped(left string) {
	w.t.Helper()
	if len(w.procs) == 0 {
		w.t.Fatal("no watchdog was started")
	}
	done := make(chan error, 1)
	go func() { done <- w.procs[0].Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			w.t.Errorf("the watchdog ended otherwise than stopped: %v", err)
		}
	case <-time.After(5 * time.Second):
		_ = w.procs[0].Process.Kill()
		<-done
		w.t.Fatal("the watchdog was not told to stop: " + left)
	}
}

// The watchdog read its change, then pending.json is damaged or deleted
// (a disk error, an admin tidying up): the change must still be rolled
// back at the deadline. The watchdog used to give up after 10 s and leave
// the unconfirmed change in force for good.
func TestWatchdogRollsBackWhenRecordLost(t *testing.T) {
	for _, damage := range []string{"garbage", "truncated", "deleted", "directory"} {
		t.Run(damage, func(t *testing.T) {
			r := enabledRig(t)
			res, err := r.add(r.ch(time.Minute), "allow 443/tcp")
			r.must(err)
			done := make(chan error, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			go func() { done <- r.newEngine().Watch(ctx, res.Pending.ID) }()
			time.Sleep(300 * time.Millisecond) // it has read its change
			path := filepath.Join(r.dir, pendingFile)
			switch damage {
			case "garbage":
				r.must(os.WriteFile(path, []byte("\x00{garbage"), 0o600))
			case "truncated":
				r.must(os.Truncate(path, 10))
			case "deleted":
				r.must(os.Remove(path))
			case "directory":
				r.must(os.Remove(path))
				r.must(os.Mkdir(path, 0o700))
				t.Cleanup(func() { _ = os.Remove(path) })
			}
			time.Sleep(300 * time.Millisecond)
			r.advance(2 * time.Minute)
			select {
			case err := <-done:
				if damage == "directory" && err != nil {
					// pending.json cannot be replaced while a directory
					// stands there; the kernel must be back all the same.
					t.Logf("watchdog: %v", err)
				} else {
					r.must(err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("the watchdog did not act")
			}
			r.backAtBase()
		})
	}
}

// disable while the watchdog is paused (SIGSTOP): when it resumes, it
// finds its change settled and does not roll the disabled rules back in.
func TestWatchdogAfterDisable(t *testing.T) {
	r := enabledRig(t)
	res, err := r.add(r.ch(time.Minute), "allow 443/tcp")
	r.must(err)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.newEngine().Watch(ctx, res.Pending.ID) }()
	time.Sleep(300 * time.Millisecond) // it has read its change
	r.must(r.disable())
	r.advance(2 * time.Minute)
	r.must(<-done)
	r.kernelIs("nftables", "")
}

// disable during a pending change: the change was never confirmed, so it
// leaves the policy file too. It stayed there, and the next 'moat enable'
// applied it for good.
func TestDisableDropsUnconfirmedChange(t *testing.T) {
	r := enabledRig(t)
	_, err := r.add(r.ch(time.Minute), "allow 443/tcp")
	r.must(err)
	r.must(r.disable())
	r.kernelIs("nftables", "")
	if r.file() != base {
		t.Errorf("after disable the file holds the unconfirmed change:\n%s", r.file())
	}
	if data, err := os.ReadFile(r.conf + ".unconfirmed"); err != nil || !strings.Contains(string(data), "443") {
		t.Errorf("the unconfirmed policy was not kept: %q, %v", data, err)
	}
	_, err = r.enable(r.ch(0))
	r.must(err)
	r.kernelIs("nftables", base)
}

// The lock's holder is stopped (SIGSTOP, Ctrl-Z): it would never finish,
// and the waiting command said only "waiting for PID N to finish". It
// says the holder is stopped and how to let it go on, and Ctrl-C (the
// context) ends the wait.
func TestLockHeldByStoppedProcess(t *testing.T) {
	r := newRig(t)
	holder := exec.Command("sleep", "30")
	r.must(holder.Start())
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	r.must(holder.Process.Signal(syscall.SIGSTOP))
	waitStopped := time.Now().Add(2 * time.Second)
	for procState(fmt.Sprint(holder.Process.Pid)) != "T" && time.Now().Before(waitStopped) {
		time.Sleep(10 * time.Millisecond)
	}
	unlock, err := r.eng.Lock(context.Background(), "moat test")
	r.must(err)
	defer unlock()
	// The lock file names the stopped process as its holder.
	r.must(os.WriteFile(filepath.Join(r.dir, lockFile), []byte(fmt.Sprintf("%d moat allow 80/tcp\n", holder.Process.Pid)), 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := r.newEngine().Lock(ctx, "moat deny 25"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second lock: %v", err)
	}
	want := fmt.Sprintf("PID %d (moat allow 80/tcp), which is STOPPED", holder.Process.Pid)
	if !strings.Contains(strings.Join(r.warnings, "\n"), want) {
		t.Errorf("warnings %q lack %q", r.warnings, want)
	}
}

// The state disk fills up after the kernel took a change, before its
// records are written: the command fails, and its error must be the whole
// truth. The change stayed in the kernel (443 open) until the next
// command undid it.
func TestFullDiskAfterKernelUndoesAtOnce(t *testing.T) {
	for _, confirm := range []time.Duration{0, time.Minute} {
		t.Run(confirm.String(), func(t *testing.T) {
			r := newRig(t)
			fill, free := fullDisk(t, r)
			r.write(base)
			_, err := r.enable(r.ch(0))
			r.must(err)
			// The records are written while the kernel takes the
			// change (prepareRecords, beside the backend's Apply): the
			// disk fills at the last step before they start (the
			// journal, or the armed rollback), so that none of them is
			// written before the kernel has the change. Filled at
			// "kernel", under load they were at times all written
			// already, and the change rightly succeeded.
			fillAt := "intent"
			if confirm > 0 {
				fillAt = "armed"
			}
			r.eng.o.Checkpoint = func(step string) error {
				if step == fillAt {
					fill()
				}
				return nil
			}
			_, err = r.add(r.ch(confirm), "allow 443/tcp")
			if err == nil {
				t.Fatal("the change succeeded on a full disk")
			}
			r.backAtBase()
			r.eng.o.Checkpoint = nil
			free()
			r.must(r.do(func(context.Context, *Engine) error { return nil }))
			r.kernelIs("nftables", base)
			a, err := LoadApplied(r.dir)
			r.must(err)
			if a == nil || a.Policy != base {
				t.Errorf("applied: %+v", a)
			}
			if _, err := LoadPending(r.dir); !errors.Is(err, ErrNoPending) {
				t.Errorf("pending left: %v", err)
			}
		})
	}
}

// The policy file's disk (/etc) fails while the kernel takes a change:
// the file and the records are written (and synced) while the kernel takes
// it, and put in place by their renames after. Either way the change must
// be undone whole: kernel, file and records, at once or, when the undo
// cannot write the file either, by the next command.
//   - full: /etc is full before the file is written (the journal's step):
//     writing it fails while the kernel takes the change;
//   - readonly: /etc turns read-only once the file and the records are
//     written and synced, before their renames: the rename fails after the
//     kernel took the change.
func TestFullPolicyDiskAfterKernelUndoes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	for _, mode := range []string{"full", "readonly"} {
		t.Run(mode, func(t *testing.T) {
			r := newRig(t)
			etc := filepath.Join(filepath.Dir(r.conf), "etc")
			r.must(os.MkdirAll(etc, 0o755))
			if err := syscall.Mount("tmpfs", etc, "tmpfs", 0, "size=64k,mode=0755"); err != nil {
				t.Skipf("mount tmpfs: %v", err)
			}
			t.Cleanup(func() { _ = syscall.Unmount(etc, syscall.MNT_DETACH) })
			r.conf = filepath.Join(etc, "moat.conf")
			r.write(base)
			_, err := r.enable(r.ch(0))
			r.must(err)
			filler := filepath.Join(etc, "fill")
			applied := false
			r.eng.o.Checkpoint = func(step string) error {
				switch {
				case step == "kernel":
					applied = true
				case mode == "full" && step == "intent":
					f, err := os.Create(filler)
					r.must(err)
					defer func() { _ = f.Close() }()
					buf := make([]byte, 512)
					for {
						if _, err := f.Write(buf); err != nil {
							return nil // ENOSPC: full
						}
					}
				case mode == "readonly" && step == "prepared":
					r.must(syscall.Mount("", etc, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""))
				}
				return nil
			}
			if _, err := r.add(r.ch(0), "allow 443/tcp"); err == nil {
				t.Fatal("the change succeeded on a failing disk")
			}
			if !applied {
				t.Fatal("the kernel never took the change: the failure came before it")
			}
			r.backAtBase()
			r.eng.o.Checkpoint = nil
			if mode == "full" {
				r.must(os.Remove(filler))
			} else {
				r.must(syscall.Mount("", etc, "", syscall.MS_REMOUNT, ""))
			}
			r.must(r.do(func(context.Context, *Engine) error { return nil }))
			r.backAtBase()
			a, err := LoadApplied(r.dir)
			r.must(err)
			if a == nil || a.Policy != base {
				t.Errorf("applied: %+v", a)
			}
			s, err := safeapply.LoadSaved(r.dir)
			r.must(err)
			if s.Policy != base {
				t.Errorf("saved: %q", s.Policy)
			}
			if in, _ := LoadIntent(r.dir); in != nil {
				t.Errorf("intent left")
			}
		})
	}
}

// When the live SSH sessions cannot be determined, a change is refused
// (a LockoutError, exit 3, nothing applied) instead of skipping the
// lockout check with a warning; --force applies it; 'moat restore' (at
// boot no session can exist yet) still loads the saved ruleset.
func TestUnknownSessionsFailClosed(t *testing.T) {
	r := newRig(t)
	r.write(base + "allow 80/tcp\n")
	_, err := r.enable(r.ch(0))
	r.must(err)
	r.eng.o.FindSSH = func() (safeapply.SSHState, error) {
		return safeapply.SSHState{}, errors.New("read /proc/net/tcp: injected failure")
	}
	_, err = r.add(r.ch(0), "allow 443/tcp")
	var lockout *safeapply.LockoutError
	if !errors.As(err, &lockout) {
		t.Fatalf("apply with unknown sessions: want a refusal, got %v", err)
	}
	if !strings.Contains(err.Error(), "injected failure") || !strings.Contains(err.Error(), "--force") {
		t.Errorf("refusal does not say why or how to override: %v", err)
	}
	r.kernelIs("nftables", base+"allow 80/tcp\n")
	// The journal, written while the sessions were checked, is gone, and
	// the file is as it was.
	if in, _ := LoadIntent(r.dir); in != nil {
		t.Errorf("a refused change left its journal: %+v", in)
	}
	if r.file() != base+"allow 80/tcp\n" {
		t.Errorf("file after a refused change:\n%s", r.file())
	}
	// The dry run's check refuses it too.
	r.must(r.do(func(ctx context.Context, e *Engine) error {
		p, perr := e.policyOf(policy.NewDocument("test", []byte(base+"allow 443/tcp\n")))
		r.must(perr)
		if err := e.CheckLockout(p); !errors.As(err, &lockout) {
			t.Errorf("dry run with unknown sessions: want a refusal, got %v", err)
		}
		return nil
	}))
	// --force overrides.
	ch := r.ch(0)
	ch.Force = true
	_, err = r.enable(ch)
	r.must(err)
	// restore (boot) is not refused: the saved ruleset is loaded.
	r.write(base + "allow 80/tcp\nallow 8080/tcp\n")
	r.must(r.do(func(ctx context.Context, e *Engine) error {
		_, err := e.Restore(ctx, r.ch(0))
		return err
	}))
	a, err := LoadApplied(r.dir)
	r.must(err)
	if a == nil || a.FailClosed {
		t.Errorf("record after restore with unknown sessions: %+v", a)
	}
}

// Stopped tells a stopped watchdog (for status) from a running one, and
// never reports a process that is not the recorded one.
func TestProcStopped(t *testing.T) {
	c := exec.Command("/bin/sh", "-c", "sleep 30", "watchdog", "abc")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	time.Sleep(50 * time.Millisecond)
	p := identify(c.Process.Pid, "watchdog", "abc")
	if p.Stopped() {
		t.Fatal("a running watchdog reported stopped")
	}
	if err := c.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitUntil := time.Now().Add(2 * time.Second)
	for !p.Stopped() && time.Now().Before(waitUntil) {
		time.Sleep(10 * time.Millisecond)
	}
	if !p.Stopped() {
		t.Fatal("a stopped watchdog is not reported")
	}
	other := p
	other.Marker = []string{"watchdog", "xyz"}
	if other.Stopped() {
		t.Error("a process with other arguments reported as the stopped watchdog")
	}
}

// The lock file is replaced by a directory, a FIFO or a symbolic link
// (a confused admin, a bad restore of /var/lib): every command refuses it,
// naming it, and the watchdog must still roll back at the deadline. It
// retried for ever and the change stayed in force.
func TestWatchdogRollsBackWhenLockFileIsJunk(t *testing.T) {
	for _, junk := range []string{"directory", "fifo", "symlink"} {
		t.Run(junk, func(t *testing.T) {
			r := enabledRig(t)
			res, err := r.add(r.ch(time.Second), "allow 443/tcp")
			r.must(err)
			lock := filepath.Join(r.dir, lockFile)
			r.must(os.Remove(lock))
			switch junk {
			case "directory":
				r.must(os.Mkdir(lock, 0o700))
			case "fifo":
				r.must(syscall.Mkfifo(lock, 0o600))
			case "symlink":
				r.must(os.Symlink("/nonexistent-moat-lock", lock))
			}
			// Every command refuses it, naming it, without hanging.
			if err := r.do(func(context.Context, *Engine) error { return nil }); err == nil || !strings.Contains(err.Error(), lock) {
				t.Errorf("a command with the lock a %s: %v", junk, err)
			}
			r.advance(2 * time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := r.newEngine().Watch(ctx, res.Pending.ID); err != nil {
				t.Fatalf("watchdog: %v", err)
			}
			r.backAtBase()
		})
	}
}

// A command is killed after it wrote the policy file, and the next
// command is 'moat disable' (which takes no repair, so that a broken state
// cannot block it): the half-done change must not stay in the file, where
// the next 'moat enable' applied it without a word.
func TestDisableAfterInterruptedEdit(t *testing.T) {
	for _, step := range []string{"file", "applied", "saved"} {
		t.Run(step, func(t *testing.T) {
			r := enabledRig(t)
			r.crashAt = step
			if _, err := r.add(r.ch(0), "allow 443/tcp"); !IsCrash(err) {
				t.Fatalf("no crash: %v", err)
			}
			r.must(r.disable())
			if r.file() != base {
				t.Errorf("after disable the file holds the interrupted change:\n%s", r.file())
			}
			if !strings.Contains(strings.Join(r.warnings, "\n"), "interrupted") {
				t.Errorf("not reported: %q", r.warnings)
			}
		})
	}
}

// The protected sets (spared by the drops before conntrack and by the
// port scan trap) hold the clients of logged-in SSH sessions only: a
// connection still guessing passwords when the policy is applied must
// not make its address unbannable until the next apply.
func TestProtectedAreLoggedInSessions(t *testing.T) {
	r := newRig(t)
	admin, guesser := netip.MustParseAddrPort("192.0.2.2:40000"), netip.MustParseAddrPort("198.51.100.7:40001")
	r.eng.o.FindSSH = func() (safeapply.SSHState, error) {
		return safeapply.SSHState{Listen: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:22")}, Sessions: []safeapply.Session{
			{Client: admin, Server: netip.MustParseAddrPort("192.0.2.1:22"), Source: "test"},
			{Client: guesser, Server: netip.MustParseAddrPort("192.0.2.1:22"), Source: "test"}}}, nil
	}
	r.eng.o.LoggedIn = func() ([]netip.Addr, error) { return []netip.Addr{admin.Addr()}, nil }
	r.write(base)
	_, err := r.enable(r.ch(0))
	r.must(err)
	protect := r.nft.rs.Set(ruleset.ProtectSet4)
	if protect == nil || len(protect.Entries) != 1 || protect.Entries[0].Prefix.Addr() != admin.Addr() {
		t.Fatalf("protect4: %+v, want only the logged-in %s", protect, admin.Addr())
	}
	// Without a way to tell, every session is protected.
	r.eng.o.LoggedIn = func() ([]netip.Addr, error) { return nil, errors.New("no /proc") }
	r.write(base + "allow 80/tcp\n")
	_, err = r.enable(r.ch(0))
	r.must(err)
	if protect := r.nft.rs.Set(ruleset.ProtectSet4); len(protect.Entries) != 2 {
		t.Errorf("protect4 without LoggedIn: %+v", protect)
	}
}

// The kernel refuses a change while its records are written beside their
// names (prepareRecords): nothing changes, the policy file and the
// records are as they were, and no written-but-unused file is left in
// the state directory or beside the policy file.
func TestKernelRefusalLeavesNoPreparedFiles(t *testing.T) {
	r := enabledRig(t)
	list := func(dir string) []string {
		entries, err := os.ReadDir(dir)
		r.must(err)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	stateBefore, confBefore := list(r.dir), list(filepath.Dir(r.conf))
	r.nft.Fail = func(op string) error {
		if op != "apply" {
			return nil
		}
		// Refused once the records are written beside their names (as
		// nft takes milliseconds): they must be removed.
		for range 200 {
			if m, _ := filepath.Glob(filepath.Join(r.dir, ".saved.json.*.tmp")); len(m) > 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		return errors.New("injected: the kernel refuses")
	}
	if _, err := r.add(r.ch(0), "allow 443/tcp"); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("want the kernel's refusal, got %v", err)
	}
	r.nft.Fail = nil
	r.backAtBase()
	if got := list(r.dir); !slices.Equal(got, stateBefore) {
		t.Errorf("state directory after a refused change: %v, before: %v", got, stateBefore)
	}
	if got := list(filepath.Dir(r.conf)); !slices.Equal(got, confBefore) {
		t.Errorf("policy directory after a refused change: %v, before: %v", got, confBefore)
	}
	a, err := LoadApplied(r.dir)
	r.must(err)
	if a == nil || a.Policy != base {
		t.Errorf("applied: %+v", a)
	}
	s, err := safeapply.LoadSaved(r.dir)
	r.must(err)
	if s.Policy != base {
		t.Errorf("saved: %q", s.Policy)
	}
}

// A command killed while the kernel takes its change (step "prepared":
// the policy file and the records written and synced beside their names,
// not yet renamed) leaves those hidden files behind; the next command
// undoes the change and removes them, and never takes them for records.
func TestKillLeavesNoPreparedFiles(t *testing.T) {
	r := enabledRig(t)
	left := map[string][]byte{} // what a kill -9 at "prepared" leaves: the abort never runs
	r.eng.o.Checkpoint = func(step string) error {
		if step != "prepared" {
			return nil
		}
		for _, dir := range []string{r.dir, filepath.Dir(r.conf)} {
			entries, err := os.ReadDir(dir)
			r.must(err)
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), ".") && e.Type().IsRegular() && e.Name() != ".lock" {
					data, err := os.ReadFile(filepath.Join(dir, e.Name()))
					r.must(err)
					left[filepath.Join(dir, e.Name())] = data
				}
			}
		}
		return errors.New("killed at " + step)
	}
	_, err := r.add(r.ch(0), "allow 443/tcp")
	if !IsCrash(err) {
		t.Fatalf("not killed: %v", err)
	}
	r.eng.o.Checkpoint = nil
	var policyLeft, recordLeft bool
	for name, data := range left {
		r.must(os.WriteFile(name, data, 0o600))
		policyLeft = policyLeft || filepath.Dir(name) == filepath.Dir(r.conf) && strings.HasPrefix(filepath.Base(name), "."+filepath.Base(r.conf)+".")
		recordLeft = recordLeft || strings.HasPrefix(filepath.Base(name), "."+AppliedFile+".")
	}
	if !policyLeft || !recordLeft {
		t.Fatalf("the prepared policy file and applied record were not seen at the kill: %v", slices.Collect(maps.Keys(left)))
	}
	r.must(r.do(func(context.Context, *Engine) error { return nil }))
	for name := range left {
		if _, err := os.Lstat(name); err == nil {
			t.Errorf("%s left after the repair", name)
		}
	}
	r.allHold(base)
	// A hidden file of the admin's that only looks alike stays.
	mine := filepath.Join(filepath.Dir(r.conf), "."+filepath.Base(r.conf)+".swp")
	r.must(os.WriteFile(mine, []byte("x"), 0o600))
	r.eng.o.Checkpoint = func(step string) error {
		if step == "prepared" {
			return errors.New("killed at " + step)
		}
		return nil
	}
	_, err = r.add(r.ch(0), "allow 443/tcp")
	if !IsCrash(err) {
		t.Fatalf("not killed: %v", err)
	}
	r.eng.o.Checkpoint = nil
	r.must(r.do(func(context.Context, *Engine) error { return nil }))
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("the admin's %s was removed: %v", mine, err)
	}
	// A journal killed before its rename (written while the policy
	// compiles) leaves no journal, only its temporary file.
	// A large policy's text (written for the record being prepared)
	// killed before its rename leaves its own.
	text := statetext.Name(statetext.Hash(strings.Repeat("deny from 192.0.2.1\n", 4000)))
	for _, name := range []string{IntentFile, text} {
		p, err := atomicfile.Prepare(filepath.Join(r.dir, name), []byte("{}"), 0o600)
		r.must(err)
		_ = p // never committed nor aborted, as a kill leaves it
	}
	r.must(r.do(func(context.Context, *Engine) error { return nil }))
	entries, err := os.ReadDir(r.dir)
	r.must(err)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "."+IntentFile+".") || strings.HasPrefix(e.Name(), "."+text+".") {
			t.Errorf("%s left after the next command", e.Name())
		}
	}
}

// TestRepairRemovesOtherRecordsTemps: a kill during the write of any
// record of a command under the lock (the pending change's files, the
// outcome, and the files Options.OtherRecords name: the kernel
// fingerprint, the iptables caches) leaves a hidden temporary file that
// the next command's repair removes; the guard's files, written under
// its own lock while commands run, stay.
func TestRepairRemovesOtherRecordsTemps(t *testing.T) {
	r := enabledRig(t)
	r.eng.o.OtherRecords = []string{"kernel-fingerprint.json", "ipt-chains.json"}
	gone := []string{pendingFile, snapshotFile, policyFile, rollbackBansFile, listCopiesFile, outcomeFile, coveredMemoFile, coveredMemoKeyFile, "kernel-fingerprint.json", "ipt-chains.json"}
	kept := []string{"guard.json", "guard.index", "unknown.json"}
	for _, name := range append(slices.Clone(gone), kept...) {
		p, err := atomicfile.Prepare(filepath.Join(r.dir, name), []byte("{}"), 0o600)
		r.must(err)
		_ = p // never committed nor aborted, as a kill leaves it
	}
	r.must(r.do(func(context.Context, *Engine) error { return nil }))
	entries, err := os.ReadDir(r.dir)
	r.must(err)
	left := map[string]bool{}
	for _, e := range entries {
		for _, name := range append(slices.Clone(gone), kept...) {
			if strings.HasPrefix(e.Name(), "."+name+".") && strings.HasSuffix(e.Name(), ".tmp") {
				left[name] = true
			}
		}
	}
	for _, name := range gone {
		if left[name] {
			t.Errorf("the temporary file of %s is left after the repair", name)
		}
	}
	for _, name := range kept {
		if !left[name] {
			t.Errorf("the temporary file of %s, not a command's record, was removed", name)
		}
	}
}

// The applied record is unreadable (torn, garbage) while a change waits:
// 'moat confirm' stopped the watchdog, marked the change confirming, then
// failed on the record, and so did every command after it (the repair
// could not finish the confirmation), 'moat rollback' included: the
// change stayed, neither confirmed nor ever rolled back. The confirmation
// is finished (the kernel keeps the change), says the record is
// unknown, and the next change records and saves what it applies.
func TestConfirmWithUnreadableAppliedRecord(t *testing.T) {
	for _, how := range []string{"confirm", "killed at confirm-marked"} {
		t.Run(how, func(t *testing.T) {
			r := enabledRig(t)
			r.waiting()
			r.must(os.WriteFile(filepath.Join(r.dir, AppliedFile), []byte(`{"backend":"nftab`), 0o600))
			confirm := func() error {
				return r.do(func(ctx context.Context, e *Engine) error { _, err := e.Confirm(ctx); return err })
			}
			if how == "confirm" {
				r.must(confirm())
			} else {
				r.crashAt = "confirm-marked"
				if err := confirm(); !IsCrash(err) {
					t.Fatalf("confirm: %v", err)
				}
				r.must(r.do(func(context.Context, *Engine) error { return nil })) // the next command
			}
			if _, err := LoadPending(r.dir); !errors.Is(err, ErrNoPending) {
				t.Fatalf("the change still waits: %v", err)
			}
			r.kernelIs("nftables", base+"allow 443/tcp\n")
			if w := strings.Join(r.warnings, "\n"); !strings.Contains(w, AppliedFile) || !strings.Contains(w, "saved for boot") {
				t.Errorf("the unreadable record is not said: %q", r.warnings)
			}
			r.advance(2 * time.Minute)
			r.must(r.do(func(context.Context, *Engine) error { return nil }))
			r.kernelIs("nftables", base+"allow 443/tcp\n")
			_, err := r.add(r.ch(0), "allow 80/tcp")
			r.must(err)
			r.allHold(base + "allow 443/tcp\nallow 80/tcp\n")
			s, err := safeapply.LoadSaved(r.dir)
			r.must(err)
			if s.Policy != base+"allow 443/tcp\nallow 80/tcp\n" {
				t.Errorf("saved for boot: %q", s.Policy)
			}
		})
	}
}

// A kill while a rollback (moat rollback, the watchdog, the next command
// finishing it) writes the policy file and keeps the unconfirmed one
// (FILE.unconfirmed) leaves their hidden temporary files beside the
// policy file; so does a kill of 'moat init' (it writes the file under
// the lock, with no journal), and of 'moat reset' or 'moat import
// --write' while they write the backup FILE.<time>.bak. No journal names the file, so nothing
// removed them: they stayed in /etc/moat for good. The next command
// removes them (the policy file of the command, Options.PolicyPath, and
// the pending change's).
func TestRepairRemovesPolicyFileTemps(t *testing.T) {
	for _, pending := range []bool{false, true} {
		t.Run(fmt.Sprintf("rollback=%v", pending), func(t *testing.T) {
			r := enabledRig(t)
			if pending {
				r.waiting()
				r.crashAt = "rollback-marked"
				if err := r.rollback(); !IsCrash(err) {
					t.Fatalf("rollback: %v", err)
				}
			} else {
				r.eng.o.PolicyPath = r.conf
			}
			dir := filepath.Dir(r.conf)
			left := []string{".moat.conf.unconfirmed.123.tmp", ".moat.conf.4567", ".moat.conf.20260102T030405Z.bak.890"}
			for _, name := range left {
				r.must(os.WriteFile(filepath.Join(dir, name), []byte("allow 1/tcp\n"), 0o600))
			}
			other := filepath.Join(dir, ".moat.conf.bak")
			r.must(os.WriteFile(other, nil, 0o600))
			backup := filepath.Join(dir, "moat.conf.20260102T030405Z.bak")
			r.must(os.WriteFile(backup, nil, 0o600))
			r.must(r.do(func(context.Context, *Engine) error { return nil })) // the next command
			for _, name := range left {
				if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("left beside the policy file: %s (%v)", name, err)
				}
			}
			for _, f := range []string{other, backup} {
				if _, err := os.Stat(f); err != nil {
					t.Errorf("a file that is no temporary file was removed: %v", err)
				}
			}
			r.backAtBase()
		})
	}
}

// A kill while a blocklist's saved copy or metadata is written ('moat
// blocklist update' saving a large list, an apply saving a file list's
// copy, a rollback restoring them) leaves a hidden temporary file in the
// blocklists directory that nothing removed, one more each kill. The
// next command removes them when no update holds the blocklists' lock
// (an update writes them under that lock alone); while one does, they
// stay.
func TestRepairRemovesBlocklistTemps(t *testing.T) {
	r := enabledRig(t)
	dir := filepath.Join(r.dir, blocklist.Dir)
	r.must(os.MkdirAll(dir, 0o700))
	left := []string{".drop.list.123.tmp", ".drop.json.456.tmp"}
	plant := func() {
		for _, name := range left {
			r.must(os.WriteFile(filepath.Join(dir, name), []byte("192.0.2.0/24\n"), 0o600))
		}
	}
	there := func() int {
		n := 0
		for _, name := range left {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				n++
			}
		}
		return n
	}
	kept := filepath.Join(dir, "drop.list")
	r.must(os.WriteFile(kept, []byte("192.0.2.0/24\n"), 0o600))
	plant()
	l, err := statedir.TryLock(r.dir, blocklist.LockFile)
	r.must(err)
	r.must(r.do(func(context.Context, *Engine) error { return nil }))
	if there() != len(left) {
		t.Errorf("removed while an update holds the blocklists' lock")
	}
	l.Unlock()
	r.must(r.do(func(context.Context, *Engine) error { return nil }))
	if n := there(); n != 0 {
		t.Errorf("%d temporary files left in %s after the next command", n, dir)
	}
	if _, err := os.Stat(kept); err != nil {
		t.Errorf("a saved copy was removed: %v", err)
	}
}

// A kill while a backend writes the record of a policy set's elements
// (nft-set.NAME, ipset.NAME: a change of backend, a first enable) leaves
// its hidden temporary file; the set store removed it only at the next
// write of that set or of the whole table, so a command that changed
// neither (a plain reload) left it (found by killing changes of backend
// with 500 bans). The repair removes those of the prefixes
// Options.OtherRecordPrefixes names (the backends write them under
// moat's lock only).
func TestRepairRemovesElementRecordTemps(t *testing.T) {
	r := enabledRig(t)
	r.eng.o.OtherRecordPrefixes = []string{"nft-set.", "ipset."}
	gone := []string{".nft-set.protect4.116274129.tmp", ".ipset.moat-protect6.42.tmp"}
	kept := []string{".guard.json.7.tmp", ".nft-set.protect4.x.tmp", "nft-set.protect4"}
	for _, name := range append(slices.Clone(gone), kept...) {
		r.must(os.WriteFile(filepath.Join(r.dir, name), []byte("{}"), 0o600))
	}
	r.must(r.do(func(context.Context, *Engine) error { return nil }))
	for _, name := range gone {
		if _, err := os.Stat(filepath.Join(r.dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("left after the next command: %s (%v)", name, err)
		}
	}
	for _, name := range kept {
		if _, err := os.Stat(filepath.Join(r.dir, name)); err != nil {
			t.Errorf("removed: %s (%v)", name, err)
		}
	}
}

// The journal of an interrupted command (intent.json) is unreadable
// (torn, garbage) while a change waits for confirmation: every Lock's
// repair refused, the watchdog's too, so at the deadline it retried for
// ever and the unconfirmed change (which may lock the admin out) stayed.
// The watchdog rolls back without the repair (the kernel and the policy
// file go back to before the change, as the journal's undo would have
// put them), and the journal stays for the admin, named.
func TestWatchdogRollsBackPastUnreadableJournal(t *testing.T) {
	r := enabledRig(t)
	res := r.waiting()
	r.must(os.WriteFile(filepath.Join(r.dir, IntentFile), []byte(`{"pid": 12, "comm`), 0o600))
	r.advance(2 * time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.eng.Watch(ctx, res.Pending.ID); err != nil {
		t.Fatalf("watchdog: %v", err)
	}
	r.backAtBase()
	if _, err := LoadPending(r.dir); !errors.Is(err, ErrNoPending) {
		t.Errorf("the change still waits: %v", err)
	}
	if !strings.Contains(strings.Join(r.warnings, "\n"), IntentFile) {
		t.Errorf("the unreadable journal is not named: %q", r.warnings)
	}
	// The next command still names the journal (it is not guessed away).
	if err := r.do(func(context.Context, *Engine) error { return nil }); err == nil || !strings.Contains(err.Error(), "journal is unreadable") {
		t.Errorf("the next command: %v", err)
	}
}

// 'moat disable' killed half way while a change waits for confirmation:
// it cleared the pending change and stopped its watchdog before it
// removed moat's rules, so a kill in between left the unconfirmed change
// in the kernel (it may cut the admin off) with nothing left to roll it
// back, for good. Wherever the kill falls, the unconfirmed change is
// gone from the kernel once the deadline passed and the next command ran:
// moat's rules are removed, or the change is rolled back.
func TestKillDisableWhileChangeWaits(t *testing.T) {
	for _, step := range []string{"disable-cleared", "disable-removed"} {
		t.Run(step, func(t *testing.T) {
			r := enabledRig(t)
			r.waiting()
			r.crashAt = step
			err := r.disable()
			if !IsCrash(err) {
				t.Fatalf("disable: %v", err)
			}
			r.advance(2 * time.Minute)
			r.must(r.do(func(context.Context, *Engine) error { return nil })) // the next command
			if got := r.nft.Loaded(); got != "" && got == compiled(t, base+"allow 443/tcp\n", r.conf) {
				t.Fatal("the unconfirmed change is still in the kernel, and nothing rolls it back")
			}
			if r.file() != base {
				t.Errorf("the policy file keeps the unconfirmed change:\n%s", r.file())
			}
		})
	}
}

// The command that applied a change with --confirm is killed before it
// finished, and the undo of its journal is refused (the kernel, or a
// policy of before that no longer compiles): the repair must leave the
// change waiting, so that the watchdog still rolls it back (from its
// snapshot) at the deadline. The undo cleared the pending change, stopped
// its watchdog and recorded it as rolled back before it tried the kernel:
// the unconfirmed change stayed in the kernel, with nothing left to roll
// it back.
func TestWatchdogRollsBackPastRefusedUndo(t *testing.T) {
	r := enabledRig(t)
	r.crashAt = "applied"
	if _, err := r.add(r.ch(time.Minute), "allow 443/tcp"); !IsCrash(err) {
		t.Fatalf("the apply was not cut: %v", err)
	}
	p, err := LoadPending(r.dir)
	r.must(err)
	r.nft.Fail = refuse("apply", "kernel says no")
	r.advance(2 * time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.eng.Watch(ctx, p.ID); err != nil {
		t.Fatalf("watchdog: %v", err)
	}
	r.nft.Fail = nil
	r.backAtBase()
	if o, err := LastOutcome(r.dir); err != nil || o.ID != p.ID || o.Reason != "not confirmed by the deadline" {
		t.Errorf("outcome %+v, %v", o, err)
	}
	// The journal stays for the admin; once the kernel takes the undo,
	// the next command finishes it.
	r.must(r.do(func(context.Context, *Engine) error { return nil }))
	r.backAtBase()
}

// 'moat disable' while a change waits for confirmation, and the kernel
// refuses to remove moat's rules: the disable cleared the pending change
// and stopped its watchdog all the same, so the unconfirmed change (which
// may cut the admin off) stayed in the kernel with nothing to roll it
// back. It stays waiting: its watchdog rolls it back at the deadline.
func TestDisableRefusedKeepsChangeWaiting(t *testing.T) {
	r := enabledRig(t)
	res := r.waiting()
	r.nft.Fail = refuse("remove", "kernel says no")
	ctx := context.Background()
	err := r.disable()
	if err == nil || !strings.Contains(err.Error(), "kernel says no") {
		t.Fatalf("disable: %v", err)
	}
	r.nft.Fail = nil
	if _, err := LoadPending(r.dir); err != nil {
		t.Fatalf("the change no longer waits: %v", err)
	}
	r.advance(2 * time.Minute)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r.must(r.eng.Watch(wctx, res.Pending.ID))
	r.backAtBase()
}
