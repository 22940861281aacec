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
		n.pend = &smPending{prevFile: m.applied, prevApplied: m.applied, prevActive: true, persist: m.saved != ""}
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
		n := ruleCount(m.file)
		if n == 0 {
			return m
		}
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
		if m.pend == nil {
			next = m.clone()
			next.active, next.applied, next.failClosed = true, m.file, false
			if confirm {
				prevFile := m.file
				if m.active && !m.failClosed {
					prevFile = m.applied
				}
				next.pend = &smPending{prevFile: prevFile, prevApplied: m.applied, prevActive: m.active, prevFailed: m.failClosed, persist: true}
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
		if m.active && m.pend == nil {
			next = m.clone()
			next.applied, next.saved, next.failClosed = m.file, m.file, false
		}
		out, code = r.moat("--backend", r.backend, "reload")
		if (!m.active || m.pend == nil) != (code == 0) && !r.crashed {
			r.fail("reload: exit %d\n%s", code, out)
		}
		undoable = true
	case op < 73: // confirm
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
		if m.pend != nil {
			next = m.clone()
			next.file, next.applied, next.active, next.pend = m.pend.prevFile, m.pend.prevApplied, m.pend.prevActive, nil
			next.failClosed = m.pend.prevFailed
			if !next.active {
				next.applied = ""
			}
		}
		if r.rng.IntN(2) == 0 {
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
			r := newSMRig(t, b, uint64(time.Now().UnixNano())+uint64(i))
			seed := r.rng.Uint64()
			r.rng = rand.New(rand.NewPCG(seed, 7))
			t.Logf("seed %d", seed)
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
		})
	}
}
