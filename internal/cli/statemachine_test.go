package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
)

// The state-machine test (issue 7): random sequences of moat commands
// (allow, delete, insert, default, enable [--confirm], confirm, rollback,
// the deadline passing, reload, restore, disable, hand edits, and kill -9
// at a random step of a command) run through the real command line and
// engine on fake backends; after every step the policy file, the saved
// state, the applied record and the "kernel" must agree with a simple
// model. The same machine runs against the real kernel in e2e.

// smModel is what moat's state should be.
type smModel struct {
	file    string
	active  bool
	applied string // policy text in the kernel when active
	saved   string // saved.json's policy ("" none, smCorrupt: garbage)
	pend    *smPending
	// failClosed: restore could not load saved.json and loaded the
	// fail-closed ruleset; edits are not applied until enable.
	failClosed bool
}

type smPending struct {
	prevFile, prevApplied  string
	prevActive, prevFailed bool
	persist                bool
	// deadline: from then on, the next command that takes moat's lock
	// (its repair) rolls the change back first.
	deadline time.Time
}

// smCorrupt stands for a saved.json that is not JSON.
const smCorrupt = "{corrupt"

// smFailClosed is the fail-closed policy the rig's engine loads.
const smFailClosed = "default deny incoming\nallow 22/tcp\n"

func (m smModel) clone() smModel {
	c := m
	if m.pend != nil {
		p := *m.pend
		c.pend = &p
	}
	return c
}

type smRig struct {
	t        *testing.T
	conf     string
	state    string
	backend  string
	fakes    map[string]*engine.Fake
	now      time.Time
	crashAt  string
	crashed  bool
	rng      *rand.Rand
	nextPort int
	log      []string
	// lost, if set, draws when a pending change's watchdog is gone and
	// its deadline passes with no command run (kept apart from rng, so
	// that a seed's commands stay the same with it or without).
	lost *rand.Rand
}

func newSMRig(t *testing.T, backend string, seed uint64) *smRig {
	d := t.TempDir()
	return &smRig{t: t, conf: filepath.Join(d, "moat.conf"), state: filepath.Join(d, "state"), backend: backend,
		fakes: map[string]*engine.Fake{"nftables": engine.NewFake("nftables"), "iptables": engine.NewFake("iptables")},
		now:   time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC), rng: rand.New(rand.NewPCG(seed, 7)), nextPort: 1000}
}

func (r *smRig) hook(o *engine.Options) {
	o.Backends = []engine.Backend{r.fakes["nftables"], r.fakes["iptables"]}
	o.Detect = func() engine.Backend { return r.fakes["nftables"] }
	o.FindSSH = nil
	o.StartWatchdog = func(string) (int, error) { return 0, nil }
	o.Now = func() time.Time { return r.now }
	o.FailClosedPolicy = func() string { return smFailClosed }
	o.Checkpoint = func(step string) error {
		if r.crashAt != "" && step == r.crashAt {
			r.crashAt, r.crashed = "", true
			return errors.New("killed at " + step)
		}
		return nil
	}
}

// moat runs one command line; the exit code is returned.
func (r *smRig) moat(args ...string) (string, int) {
	var out bytes.Buffer
	full := append([]string{"--config", r.conf, "--state-dir", r.state}, args...)
	code := run(context.Background(), full, &out, &out, r.hook)
	r.log = append(r.log, fmt.Sprintf("$ moat %s  => %d\n%s", strings.Join(args, " "), code, out.String()))
	if strings.Contains(out.String(), "changed outside moat") {
		// Nothing here changes the fakes' rules by hand.
		r.fail("a false alarm of drift")
	}
	return out.String(), code
}

// repair is what the next command does first: take the lock.
func (r *smRig) repair() {
	o := engine.Options{StateDir: r.state}
	r.hook(&o)
	o.Checkpoint = nil
	unlock, err := engine.New(o).Lock(context.Background(), "moat test-repair")
	if err != nil {
		r.fail("repair: %v", err)
	}
	unlock()
}

func (r *smRig) fail(format string, args ...any) {
	r.t.Helper()
	tail := r.log
	if len(tail) > 12 {
		tail = tail[len(tail)-12:]
	}
	// A replay can keep every command: MOAT_STATEMACHINE_LOG=FILE.
	if p := os.Getenv("MOAT_STATEMACHINE_LOG"); p != "" {
		_ = os.WriteFile(p, []byte(strings.Join(r.log, "\n")), 0o600)
	}
	r.t.Fatalf("%s\nlast commands:\n%s", fmt.Sprintf(format, args...), strings.Join(tail, "\n"))
}

func (r *smRig) compiled(text string) string {
	p, err := policy.NewDocument(r.conf, []byte(text)).Policy(nil)
	if err != nil {
		r.fail("model policy does not parse: %v\n%s", err, text)
	}
	data, err := json.Marshal(ruleset.Compile(p))
	if err != nil {
		r.fail("%v", err)
	}
	return string(data)
}

// check compares everything with the model.
func (r *smRig) check(m smModel) {
	r.t.Helper()
	data, err := os.ReadFile(r.conf)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		r.fail("%v", err)
	}
	if string(data) != m.file {
		r.fail("policy file:\n%s\nmodel:\n%s", data, m.file)
	}
	for name, f := range r.fakes {
		want := ""
		// Fail-closed loads with the detected backend (the rig's nftables).
		if m.active && (name == r.backend && !m.failClosed || name == "nftables" && m.failClosed) {
			want = r.compiled(m.applied)
		}
		if got := f.Loaded(); got != want {
			r.fail("kernel (%s) holds the wrong ruleset; model: active=%v applied:\n%s", name, m.active, m.applied)
		}
	}
	a, err := engine.LoadApplied(r.state)
	if err != nil {
		r.fail("applied record: %v", err)
	}
	switch {
	case !m.active && a != nil:
		r.fail("applied record while inactive: %+v", a)
	case m.active && (a == nil || a.Policy != m.applied || a.FailClosed != m.failClosed):
		r.fail("applied record %+v, model fail-closed %v, applied:\n%s", a, m.failClosed, m.applied)
	case m.active && !m.failClosed && a.Backend != r.backend:
		r.fail("applied with %s, not %s", a.Backend, r.backend)
	}
	s, err := safeapply.LoadSaved(r.state)
	raw, _ := os.ReadFile(filepath.Join(r.state, "saved.json"))
	switch {
	case m.saved == smCorrupt:
		if string(raw) != smCorrupt {
			r.fail("the corrupt saved.json was replaced by:\n%s", raw)
		}
	case m.saved == "" && err == nil:
		r.fail("saved.json exists, model has none")
	case m.saved != "" && (err != nil || s.Policy != m.saved):
		r.fail("saved.json: %v %+v, model:\n%s", err, s, m.saved)
	}
	_, err = engine.LoadPending(r.state)
	if (err == nil) != (m.pend != nil) {
		r.fail("pending: %v, model %+v", err, m.pend)
	}
	if in, err := engine.LoadIntent(r.state); in != nil || err != nil {
		r.fail("an intent is left: %+v %v", in, err)
	}
	o := engine.Options{StateDir: r.state}
	r.hook(&o)
	st, err := engine.New(o).State(context.Background())
	if err != nil {
		r.fail("state: %v", err)
	}
	if m.active != (len(st.Kernel) == 1) || len(st.Kernel) > 1 {
		r.fail("engine state: kernel %v, model active %v", st.Kernel, m.active)
	}
}

// smConfirm is the --confirm time the rig's commands give.
const smConfirm = 60 * time.Second

// rolledBack is m after its pending change is rolled back.
func rolledBack(m smModel) smModel {
	if m.pend == nil {
		return m
	}
	next := m.clone()
	next.file, next.applied, next.active, next.pend = m.pend.prevFile, m.pend.prevApplied, m.pend.prevActive, nil
	next.failClosed = m.pend.prevFailed
	if !next.active {
		next.applied = ""
	}
	return next
}

// overdue is m as a command that takes moat's lock finds it: a pending
// change past its deadline is rolled back first (the repair), whatever
// the command.
func (r *smRig) overdue(m smModel) smModel {
	if m.pend != nil && !r.now.Before(m.pend.deadline) {
		return rolledBack(m)
	}
	return m
}

// ruleLines are the numbers a 'delete N' can take.
func ruleCount(text string) int {
	return policy.NewDocument("x", []byte(text)).RuleCount()
}

// editModel applies an edit to the model as moat should: refused while a
// change is pending (when active), file only while inactive.
func (r *smRig) editModel(m smModel, newFile string, confirm bool) (smModel, bool) {
	if m.active && m.pend != nil {
		return m, false // refused
	}
	n := m.clone()
	n.file = newFile
	if !m.active || m.failClosed {
		return n, true
	}
	n.applied = newFile
	if confirm {
		n.pend = &smPending{prevFile: m.applied, prevApplied: m.applied, prevActive: true, persist: m.saved != "", deadline: r.now.Add(smConfirm)}
	} else if m.saved != "" {
		n.saved = newFile
	}
	return n, true
}

func (r *smRig) step(m smModel) smModel {
	confirm := r.rng.IntN(3) == 0
	cflags := []string{}
	if confirm {
		cflags = []string{"--confirm", "60s", "--no-wait"}
	}
	r.now = r.now.Add(time.Second)
	if r.lost != nil && m.pend != nil && r.lost.IntN(12) == 0 {
		// The watchdog was killed and nothing ran until past the deadline:
		// the next command that takes the lock rolls the change back.
		r.now = r.now.Add(smConfirm)
		r.log = append(r.log, "(the deadline passed, the watchdog gone)")
	}
	// A kill -9 at a random step of this command, one time in three.
	steps := []string{"intent", "pending", "armed", "kernel", "switched", "file", "applied", "saved", "done",
		"confirm-marked", "confirm-saved", "rollback-marked", "rollback-kernel", "rollback-records"}
	r.crashAt, r.crashed = "", false
	if r.rng.IntN(3) == 0 {
		r.crashAt = steps[r.rng.IntN(len(steps))]
	}
	next, undoable := m, false // undoable: a crash before "done" puts back m
	var out string
	var code int
	switch op := r.rng.IntN(100); {
	case op < 22: // allow a new port
		m = r.overdue(m)
		next = m
		r.nextPort++
		line := fmt.Sprintf("allow %d/tcp", r.nextPort)
		doc := policy.NewDocument(r.conf, []byte(m.file))
		doc.AppendLine(line)
		var ok bool
		next, ok = r.editModel(m, string(doc.Bytes()), confirm)
		out, code = r.moat(append(cflags, strings.Fields(line)...)...)
		if ok != (code == 0) && !r.crashed {
			r.fail("allow: exit %d, model ok=%v\n%s", code, ok, out)
		}
		undoable = true
	case op < 32: // insert at 1
		m = r.overdue(m)
		next = m
		r.nextPort++
		line := fmt.Sprintf("deny %d/udp", r.nextPort)
		doc := policy.NewDocument(r.conf, []byte(m.file))
		if doc.RuleCount() == 0 {
			doc.AppendLine(line)
		} else if err := doc.InsertRule(1, line); err != nil {
			r.fail("%v", err)
		}
		var ok bool
		next, ok = r.editModel(m, string(doc.Bytes()), confirm)
		out, code = r.moat(append(append(cflags, "insert", "1"), strings.Fields(line)...)...)
		if ok != (code == 0) && !r.crashed {
			r.fail("insert: exit %d, model ok=%v\n%s", code, ok, out)
		}
		undoable = true
	case op < 42: // delete a rule by number
		mo := r.overdue(m)
		n := ruleCount(mo.file)
		if n == 0 {
			return m // no command runs
		}
		m, next = mo, mo
		k := 1 + r.rng.IntN(n)
		doc := policy.NewDocument(r.conf, []byte(m.file))
		if _, err := doc.DeleteRule(k); err != nil {
			r.fail("%v", err)
		}
		var ok bool
		next, ok = r.editModel(m, string(doc.Bytes()), confirm)
		out, code = r.moat(append(cflags, "delete", fmt.Sprint(k))...)
		if ok != (code == 0) && !r.crashed {
			r.fail("delete: exit %d, model ok=%v\n%s", code, ok, out)
		}
		undoable = true
	case op < 47: // default incoming
		m = r.overdue(m)
		next = m
		act := []policy.Action{policy.Allow, policy.Deny, policy.Reject}[r.rng.IntN(3)]
		doc := policy.NewDocument(r.conf, []byte(m.file))
		doc.SetDefault(policy.In, act)
		var ok bool
		next, ok = r.editModel(m, string(doc.Bytes()), confirm)
		out, code = r.moat(append(cflags, "default", string(act), "incoming")...)
		if ok != (code == 0) && !r.crashed {
			r.fail("default: exit %d, model ok=%v\n%s", code, ok, out)
		}
		undoable = true
	case op < 60: // enable
		m = r.overdue(m)
		next = m
		if m.pend == nil {
			next = m.clone()
			next.active, next.applied, next.failClosed = true, m.file, false
			if confirm {
				prevFile := m.file
				if m.active && !m.failClosed {
					prevFile = m.applied
				}
				next.pend = &smPending{prevFile: prevFile, prevApplied: m.applied, prevActive: m.active, prevFailed: m.failClosed, persist: true,
					deadline: r.now.Add(smConfirm)}
			} else {
				next.saved = m.file
			}
		}
		out, code = r.moat(append(cflags, "--backend", r.backend, "enable")...)
		if (m.pend == nil) != (code == 0) && !r.crashed {
			r.fail("enable: exit %d\n%s", code, out)
		}
		undoable = true
	case op < 65: // reload
		m = r.overdue(m)
		next = m
		if m.active && m.pend == nil {
			next = m.clone()
			next.applied, next.saved, next.failClosed = m.file, m.file, false
		}
		out, code = r.moat("--backend", r.backend, "reload")
		if (!m.active || m.pend == nil) != (code == 0) && !r.crashed {
			r.fail("reload: exit %d\n%s", code, out)
		}
		undoable = true
	case op < 73: // confirm: too late, it fails saying the change was rolled back
		m = r.overdue(m)
		next = m
		if m.pend != nil {
			next = m.clone()
			if m.pend.persist {
				next.saved = m.applied
			}
			next.pend = nil
		}
		out, code = r.moat("confirm")
		if (m.pend != nil) != (code == 0) && !r.crashed {
			r.fail("confirm: exit %d\n%s", code, out)
		}
	case op < 80: // rollback, or the deadline passes and the watchdog acts
		next = rolledBack(m)
		if r.rng.IntN(2) == 0 {
			// Past the deadline, the command's repair rolls the change
			// back; what was asked is done: it succeeds all the same.
			out, code = r.moat("rollback")
			if (m.pend != nil) != (code == 0) && !r.crashed {
				r.fail("rollback: exit %d\n%s", code, out)
			}
		} else {
			r.now = r.now.Add(61 * time.Second)
			if p, err := engine.LoadPending(r.state); err == nil {
				out, code = r.moat("watchdog", p.ID)
				if code != 0 && !r.crashed {
					r.fail("watchdog: exit %d\n%s", code, out)
				}
			}
		}
	case op < 84: // a reboot: the kernel is empty, then the boot unit runs restore
		if m.pend != nil {
			return m // a pending change is stale after a real reboot (boot ID); not modelled
		}
		if r.rng.IntN(4) == 0 && m.saved != "" {
			// ... and saved.json got corrupted meanwhile.
			if err := os.WriteFile(filepath.Join(r.state, "saved.json"), []byte(smCorrupt), 0o600); err != nil {
				r.fail("%v", err)
			}
			m.saved = smCorrupt
			r.log = append(r.log, "(saved.json corrupted)")
		}
		for _, f := range r.fakes {
			if err := f.Remove(context.Background()); err != nil {
				r.fail("%v", err)
			}
		}
		r.log = append(r.log, "(reboot)")
		m = m.clone()
		m.active, m.applied, m.failClosed = false, "", false
		next = m.clone()
		next.active = true
		if m.saved == "" || m.saved == smCorrupt {
			next.applied, next.failClosed = smFailClosed, true
		} else {
			next.applied = m.saved
		}
		out, code = r.moat("restore")
		if (code == 0) != !next.failClosed && !r.crashed {
			r.fail("restore: exit %d, model fail-closed %v\n%s", code, next.failClosed, out)
		}
		undoable = true
	case op < 88: // disable
		next = smModel{file: m.file}
		if m.pend != nil {
			// The unconfirmed change leaves the file too.
			next.file = m.pend.prevFile
		}
		if m.saved == smCorrupt {
			next.saved = "" // disable removes it
		}
		out, code = r.moat("disable")
		if code != 0 && !r.crashed {
			r.fail("disable: exit %d\n%s", code, out)
		}
		if r.crashed {
			// disable is idempotent: the admin runs it again.
			r.crashAt = ""
			out, code = r.moat("disable")
		}
	default: // the admin edits the file by hand
		r.nextPort++
		next = m.clone()
		next.file = m.file + fmt.Sprintf("allow %d/udp\n", r.nextPort)
		if err := os.WriteFile(r.conf, []byte(next.file), 0o644); err != nil {
			r.fail("%v", err)
		}
		r.log = append(r.log, "(hand edit)")
		r.crashAt = ""
	}
	_, _ = out, code
	if r.crashAt != "" { // the command never reached that step
		r.crashAt = ""
		r.crashed = false
	}
	if r.crashed {
		r.log = append(r.log, "(killed; the next command repairs)")
		r.repair()
		if undoable && !strings.Contains(r.log[len(r.log)-2], "killed at done") {
			next = m
		}
	}
	return next
}

func TestStateMachine(t *testing.T) {
	steps := 520 // issue 7: at least 500 per backend
	if testing.Short() {
		steps = 150
	}
	for i, b := range []string{"nftables", "iptables"} {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			seed := uint64(time.Now().UnixNano()) + uint64(i)
			if v := os.Getenv("MOAT_STATEMACHINE_SEED_" + b); v != "" {
				// Replays a failed run: the seed its log printed.
				s, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					t.Fatalf("MOAT_STATEMACHINE_SEED_%s: %v", b, err)
				}
				seed = s
			}
			t.Logf("seed %d (MOAT_STATEMACHINE_SEED_%s replays it)", seed, b)
			runStateMachine(t, b, seed, steps, true)
		})
	}
}

// smRegressions are seeds that found a defect once; they run every time.
var smRegressions = []struct {
	backend string
	seed    uint64
	steps   int
	lost    bool // watchdogs lost at random (runStateMachine)
}{
	// A change left pending past its deadline with no command taking the
	// lock in between: 'moat rollback' then had its own lock's repair roll
	// the change back and failed with "no change is waiting for
	// confirmation" (exit 1) right after saying it was rolled back.
	{"iptables", 15093788259632922440, 520, false},
}

func TestStateMachineRegressions(t *testing.T) {
	for _, c := range smRegressions {
		t.Run(fmt.Sprintf("%s/%d", c.backend, c.seed), func(t *testing.T) {
			t.Parallel()
			runStateMachine(t, c.backend, c.seed, c.steps, c.lost)
		})
	}
}

// runStateMachine runs steps random commands from seed; with lost, a
// pending change's watchdog is sometimes gone and its deadline passes
// with no command run.
func runStateMachine(t *testing.T, b string, seed uint64, steps int, lost bool) {
	{
		{
			r := newSMRig(t, b, seed)
			if lost {
				r.lost = rand.New(rand.NewPCG(seed, 13))
			}
			m := smModel{file: "default deny incoming\nallow 22/tcp\n"}
			if err := os.WriteFile(r.conf, []byte(m.file), 0o644); err != nil {
				t.Fatal(err)
			}
			r.check(m)
			for n := 0; n < steps; n++ {
				m = r.step(m)
				r.check(m)
			}
			kills, pend, active := 0, 0, 0
			for _, l := range r.log {
				if strings.HasPrefix(l, "(killed") {
					kills++
				}
				if strings.Contains(l, "Waiting for confirmation") {
					pend++
				}
				if strings.Contains(l, "moat is active") || strings.Contains(l, "Rule added") {
					active++
				}
			}
			t.Logf("%d steps: %d kills repaired, %d confirmations armed, %d applies or edits", steps, kills, pend, active)
		}
	}
}

// TestRollbackAfterDeadline: past the deadline, 'moat rollback' finds the
// change rolled back by its own lock's repair and succeeds (what was asked
// is done); a second one, and 'moat confirm' too late, fail saying when the
// change was rolled back; a rollback cut by kill -9 is finished by the next
// 'moat rollback', which succeeds.
func TestRollbackAfterDeadline(t *testing.T) {
	for _, b := range []string{"nftables", "iptables"} {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			r := newSMRig(t, b, 1)
			m := smModel{file: "default deny incoming\nallow 22/tcp\n"}
			if err := os.WriteFile(r.conf, []byte(m.file), 0o644); err != nil {
				t.Fatal(err)
			}
			expect := func(wantCode int, want []string, args ...string) {
				t.Helper()
				out, code := r.moat(args...)
				if code != wantCode {
					r.fail("moat %s: exit %d, want %d\n%s", strings.Join(args, " "), code, wantCode, out)
				}
				for _, w := range want {
					if !strings.Contains(out, w) {
						r.fail("moat %s: no %q in:\n%s", strings.Join(args, " "), w, out)
					}
				}
			}
			expect(0, nil, "--backend", b, "enable")
			m = smModel{file: m.file, active: true, applied: m.file, saved: m.file}
			r.check(m)
			for _, cut := range []bool{false, true} {
				r.now = r.now.Add(time.Second)
				expect(0, []string{"Waiting for confirmation"}, "--confirm", "60s", "--no-wait", "allow", "1001/tcp")
				r.now = r.now.Add(61 * time.Second)
				if cut {
					// The deadline's rollback, in the lock of a 'moat
					// rollback', is killed half way; the next one finishes it.
					r.crashAt = "rollback-kernel"
					expect(1, []string{"killed at rollback-kernel"}, "rollback")
					expect(0, []string{"interrupted rollback", "is finished", "Rolled back:"}, "rollback")
				} else {
					expect(0, []string{"was not confirmed by its deadline: rolled back", "Rolled back:"}, "rollback")
				}
				r.check(m)
				if _, err := os.Stat(r.conf + ".unconfirmed"); err != nil {
					r.fail("the unconfirmed policy is not kept: %v", err)
				}
				expect(1, []string{"no change is waiting for confirmation: the change applied at", "was rolled back at"}, "rollback")
				expect(1, []string{"nothing to confirm", "was rolled back at"}, "confirm")
				r.check(m)
			}
			// Too late to confirm: the confirm's own lock rolls it back.
			r.now = r.now.Add(time.Second)
			expect(0, []string{"Waiting for confirmation"}, "--confirm", "60s", "--no-wait", "allow", "1002/tcp")
			r.now = r.now.Add(60 * time.Second)
			expect(1, []string{"was not confirmed by its deadline: rolled back", "nothing to confirm", "not confirmed by the deadline"}, "confirm")
			r.check(m)
		})
	}
}
