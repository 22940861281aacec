package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The state machine against the real kernel (issue 7): random commands
// (allow, delete, enable --confirm, confirm, rollback, the deadline
// passing, reload, disable, hand edits, kill -9 of moat at a random moment)
// on each backend; after every step the policy file, 'moat status' and
// real packets from the client agree with a simple model. The long run is
// internal/cli's TestStateMachine on fake backends; this one proves the
// same machine on the kernel, in a minute.

// smPorts are ports the server listens on that the machine opens and closes.
var smPorts = []uint16{25, 80, 443, 5432, 6000, 8080}

type kmodel struct {
	file    string
	active  bool
	applied string
	saved   string // saved.json's policy ("" none)
	pend    *kpending
}

type kpending struct {
	prevFile, prevApplied string
	prevActive            bool
	persist               bool
}

// opens lists the pool ports the model's applied policy lets in.
func (m kmodel) open(port uint16) bool {
	if !m.active {
		return true
	}
	return strings.Contains(m.applied, fmt.Sprintf("allow %d/tcp\n", port))
}

func TestStateMachineKernel(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		seed := uint64(time.Now().UnixNano())
		if v := os.Getenv("MOAT_STATEMACHINE_SEED_" + b); v != "" {
			// Replays a failed run: the seed its log printed.
			s, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("MOAT_STATEMACHINE_SEED_%s: %v", b, err)
			}
			seed = s
		}
		t.Logf("seed %d (MOAT_STATEMACHINE_SEED_%s replays it)", seed, b)
		rng := rand.New(rand.NewPCG(seed, 11))
		m := kmodel{file: engineBase}
		writeFile(t, e.conf, m.file)
		var history []string
		fail := func(format string, args ...any) {
			t.Helper()
			if len(history) > 40 {
				history = history[len(history)-40:]
			}
			t.Fatalf("%s\nlast commands:\n%s", fmt.Sprintf(format, args...), strings.Join(history, "\n"))
		}
		moat := func(args ...string) (string, int) {
			out, err := e.moat(args...)
			code := 0
			if err != nil {
				code = exitCode(err)
			}
			history = append(history, fmt.Sprintf("$ moat %s => %d\n%s", strings.Join(args, " "), code, out))
			return out, code
		}
		edit := func(next string, confirm bool) kmodel {
			if m.active && m.pend != nil {
				return m
			}
			n := m
			n.file = next
			if m.active {
				n.applied = next
				if confirm {
					n.pend = &kpending{prevFile: m.applied, prevApplied: m.applied, prevActive: true, persist: m.saved != ""}
				} else if m.saved != "" {
					n.saved = next
				}
			}
			return n
		}
		checked := 0
		for step := 0; step < 60; step++ {
			confirm := rng.IntN(3) == 0
			var cflags []string
			if confirm {
				cflags = []string{"--confirm", "60s", "--no-wait"}
			}
			var free []uint16
			for _, p := range smPorts {
				if !strings.Contains(m.file, fmt.Sprintf("allow %d/tcp\n", p)) {
					free = append(free, p)
				}
			}
			next := m
			switch op := rng.IntN(100); {
			case op < 25 && len(free) > 0: // allow
				p := free[rng.IntN(len(free))]
				next = edit(m.file+fmt.Sprintf("allow %d/tcp\n", p), confirm)
				_, code := moat(append(cflags, "allow", fmt.Sprintf("%d/tcp", p))...)
				if (code == 0) != !(m.active && m.pend != nil) {
					fail("allow: exit %d", code)
				}
			case op < 40: // delete the last rule (never allow 22, rule 1)
				lines := strings.SplitAfter(strings.TrimSuffix(m.file, "\n"), "\n")
				n := strings.Count(m.file, "allow ")
				if n < 2 {
					continue
				}
				next = edit(strings.Join(lines[:len(lines)-1], ""), confirm)
				_, code := moat(append(cflags, "delete", fmt.Sprint(n))...)
				if (code == 0) != !(m.active && m.pend != nil) {
					fail("delete: exit %d", code)
				}
			case op < 55: // enable
				if m.pend == nil {
					next.active, next.applied = true, m.file
					if confirm {
						prev := m.file
						if m.active {
							prev = m.applied
						}
						next.pend = &kpending{prevFile: prev, prevApplied: m.applied, prevActive: m.active, persist: true}
					} else {
						next.saved = m.file
					}
				}
				_, code := moat(append(cflags, "enable")...)
				if (code == 0) != (m.pend == nil) {
					fail("enable: exit %d", code)
				}
			case op < 62: // reload
				if m.active && m.pend == nil {
					next.applied, next.saved = m.file, m.file
				}
				_, code := moat("reload")
				if (code == 0) != (!m.active || m.pend == nil) {
					fail("reload: exit %d", code)
				}
			case op < 70: // confirm
				if m.pend != nil {
					next.pend = nil
					if m.pend.persist {
						next.saved = m.applied
					}
				}
				_, code := moat("confirm")
				if (code == 0) != (m.pend != nil) {
					fail("confirm: exit %d", code)
				}
			case op < 76: // rollback
				if m.pend != nil {
					next = kmodel{file: m.pend.prevFile, active: m.pend.prevActive, applied: m.pend.prevApplied, saved: m.saved}
				}
				_, code := moat("rollback")
				if (code == 0) != (m.pend != nil) {
					fail("rollback: exit %d", code)
				}
			case op < 82: // a change that nobody confirms: its deadline passes
				if m.pend != nil || !m.active || len(free) == 0 {
					continue
				}
				p := free[rng.IntN(len(free))]
				_, code := moat("--confirm", "1s", "allow", fmt.Sprintf("%d/tcp", p))
				if code != 4 {
					fail("an unconfirmed allow: exit %d, want 4 (rolled back)", code)
				}
				// The change included the file's unapplied hand edits: the
				// file goes back to what was applied (the rest is kept in
				// moat.conf.unconfirmed).
				next.file = m.applied
			case op < 86: // disable
				next = kmodel{file: m.file}
				if m.pend != nil {
					// The unconfirmed change leaves the file too.
					next.file = m.pend.prevFile
				}
				if _, code := moat("disable"); code != 0 {
					fail("disable: exit %d", code)
				}
			case op < 92: // hand edit
				if len(free) == 0 {
					continue
				}
				next.file = m.file + fmt.Sprintf("allow %d/tcp\n", free[0])
				writeFile(t, e.conf, next.file)
				history = append(history, "(hand edit)")
			default: // kill -9 of moat in the middle of an allow
				if m.pend != nil || len(free) == 0 {
					continue
				}
				p := free[rng.IntN(len(free))]
				after := edit(m.file+fmt.Sprintf("allow %d/tcp\n", p), false)
				cmd := exec.Command(moatBin, "--config", e.conf, "--backend", b, "--state-dir", e.stateDir(), "allow", fmt.Sprintf("%d/tcp", p))
				if err := e.topo.Server.Start(cmd); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Duration(rng.IntN(120)) * time.Millisecond)
				_ = cmd.Process.Signal(syscall.SIGKILL)
				_ = cmd.Wait()
				out, _ := moat("rollback") // nothing pending: only the repair acts
				history = append(history, "(killed moat allow; repaired: "+fmt.Sprint(strings.Contains(out, "interrupted"))+")")
				switch got := e.policyFile(); got {
				case after.file:
					next = after
				case m.file:
				default:
					fail("after kill -9 the file is neither old nor new:\n%s", got)
				}
			}
			m = next
			// The file.
			data, err := os.ReadFile(e.conf)
			if err != nil {
				t.Fatal(err)
			}
			if string(data) != m.file {
				fail("policy file:\n%s\nmodel:\n%s", data, m.file)
			}
			// What status says.
			out, err := e.moat("status", "--json")
			code := exitCode(err)
			if err == nil {
				code = 0
			}
			var st struct {
				Status, Backend string
				KernelChanged   []string `json:"kernel_changed"`
				FileNotApplied  bool     `json:"file_not_applied"`
				AppliedUnknown  bool     `json:"applied_unknown"`
			}
			if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
				fail("status --json: %d\n%s", code, out)
			}
			if want := map[bool]string{true: "active", false: "inactive"}[m.active]; st.Status != want || (m.active && st.Backend != b) {
				fail("status says %s (%s), model active=%v", st.Status, st.Backend, m.active)
			}
			if len(st.KernelChanged) > 0 || st.AppliedUnknown {
				fail("status says kernel changed %q, applied unknown %v", st.KernelChanged, st.AppliedUnknown)
			}
			if m.active && st.FileNotApplied != (m.file != m.applied) {
				fail("status file_not_applied %v, model file != applied %v\nfile:\n%s\napplied:\n%s", st.FileNotApplied, m.file != m.applied, m.file, m.applied)
			}
			saved, err := os.ReadFile(filepath.Join(e.stateDir(), "saved.json"))
			var sv struct{ Policy string }
			switch {
			case m.saved == "" && err == nil:
				fail("saved.json exists, the model has none:\n%s", saved)
			case m.saved != "" && (err != nil || json.Unmarshal(saved, &sv) != nil || sv.Policy != m.saved):
				fail("saved.json: %v\n%s\nmodel:\n%s", err, saved, m.saved)
			}
			if (e.pending()) != (m.pend != nil) {
				fail("pending confirmation: %v, model %v", e.pending(), m.pend != nil)
			}
			if m.active {
				data, err := os.ReadFile(filepath.Join(e.stateDir(), "applied.json"))
				var a struct{ Policy string }
				if err != nil || json.Unmarshal(data, &a) != nil || a.Policy != m.applied {
					fail("applied.json: %v\n%s\nmodel:\n%s", err, data, m.applied)
				}
			}
			// Real packets: every pool port, IPv4 or IPv6.
			var probes []string
			for i, p := range slices.Concat(smPorts, []uint16{22}) {
				want := "timeout"
				if p == 22 || m.open(p) {
					want = "open"
				}
				dst := fmt.Sprintf("192.0.2.1:%d", p)
				if (i+step)%2 == 1 {
					dst = fmt.Sprintf("[2001:db8::1]:%d", p)
				}
				probes = append(probes, fmt.Sprintf("client tcp %s %s", dst, want))
			}
			e.expect(false, probes...)
			checked++
			if t.Failed() {
				fail("packets disagree with the model (applied:\n%s)\nmoat's rules in the kernel:\n%s", m.applied, e.moatKernel())
			}
		}
		t.Logf("%d of 60 steps checked with packets", checked)
		if m.pend != nil {
			if _, code := moat("rollback"); code != 0 {
				fail("final rollback: exit %d", code)
			}
		}
		e.assertNoWatchdog()
		if t.Failed() {
			wlog, _ := os.ReadFile(filepath.Join(e.stateDir(), "moat.log"))
			fail("watchdog log:\n%s", wlog)
		}
	})
}
