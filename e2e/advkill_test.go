package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// kill -9 of what ends a change waiting for confirmation, at random
// moments, on the real kernel (the state machine test kills 'moat allow'
// only): 'moat rollback', 'moat confirm', and the watchdog around its
// deadline. After each kill the next command settles the change one way
// or the other, and then everything agrees: the policy file and the
// kernel (real packets to the change's port) hold the change or not at
// all, nothing waits for confirmation, no watchdog is left, no temporary
// file is left in the state directory or beside the policy file (a killed
// rollback left .moat.conf.unconfirmed.N.tmp for good), and SSH (22)
// stays open. Both backends.
func TestKillSettlingAPendingChange(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply(engineBase)
		// How long a rollback takes here: the kills fall within it.
		e.mustMoat("--confirm", "60s", "--no-wait", "allow", "443/tcp")
		took, rng := e.timedMoat(13, "rollback")
		e.assertNoWatchdog()
		counts := map[string]int{}
		for k := 0; k < 9; k++ {
			what := []string{"rollback", "confirm", "watchdog"}[k%3]
			confirm := "60s"
			if what == "watchdog" {
				confirm = "2s"
			}
			e.mustMoat("--confirm", confirm, "--no-wait", "allow", "443/tcp")
			armed := time.Now()
			delay := time.Duration(rng.Int64N(int64(took) * 6 / 5))
			switch what {
			case "watchdog":
				pid := e.watchdogPID()
				time.Sleep(2*time.Second - took/2 + delay)
				_ = syscall.Kill(pid, syscall.SIGKILL) // gone already if it was done
				time.Sleep(time.Until(armed.Add(2500 * time.Millisecond)))
			default:
				e.killMoatAfter(delay, what)
			}
			// The next command finishes or undoes what the kill cut (or,
			// the change still waiting, is refused).
			if out, err := e.moat("reload"); err != nil && !strings.Contains(out, "is waiting for confirmation") {
				t.Fatalf("kill %d (%s after %v): the next command: %v\n%s", k, what, delay, err, out)
			}
			if e.pending() {
				// Killed before it marked the change: it waits still.
				if what == "watchdog" {
					t.Fatalf("kill %d (watchdog after %v): the change still waits past its deadline", k, delay)
				}
				counts[what+" killed before its mark"]++
				e.mustMoat(what)
			}
			kept := strings.Contains(e.policyFile(), "allow 443/tcp\n")
			switch {
			case kept && what != "confirm":
				t.Fatalf("kill %d (%s after %v): the change is kept:\n%s", k, what, delay, e.policyFile())
			case !kept && what == "confirm":
				t.Fatalf("kill %d (confirm after %v): the change is gone:\n%s", k, delay, e.policyFile())
			case kept:
				counts["confirmed"]++
			default:
				counts[what+": rolled back"]++
			}
			port := "timeout"
			if strings.Contains(e.policyFile(), "allow 443/tcp\n") {
				port = "open"
			}
			e.expect(false, "client tcp 192.0.2.1:443 "+port, "client tcp [2001:db8::1]:443 "+port,
				"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open")
			e.expectStatusClean("status after the kill and the next command")
			e.expectNoTemps("after the kill and the next command")
			e.assertNoWatchdog()
			if port == "open" {
				e.mustMoat("delete", "allow", "443/tcp")
			}
			if err := os.Remove(e.conf + ".unconfirmed"); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
		}
		t.Logf("%s: a rollback took %v; %v", b, took, counts)
	})
}

// A record of the state directory that cannot be read (torn, damaged) is
// named by status, which said nothing before: with applied.json damaged
// it said in sync (and later "What moat applied is not recorded (an
// older moat?)"); with intent.json or pending.json damaged it said
// nothing while every command that changes state refused to run. Each is
// named with its path, and status --json is not in sync. Both backends.
func TestStatusNamesDamagedState(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply(engineBase)
		damage := func(name string, want string) {
			t.Helper()
			path := filepath.Join(e.stateDir(), name)
			old, err := os.ReadFile(path)
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			writeFile(t, path, `{"pid": 12, "comm`)
			out := e.mustMoat("status")
			if !strings.Contains(out, "DAMAGED STATE: read ") || !strings.Contains(out, path+": ") || !strings.Contains(out, want) {
				t.Errorf("status with %s damaged:\n%s", name, out)
			}
			var st struct {
				InSync      bool     `json:"in_sync"`
				StateErrors []string `json:"state_errors"`
			}
			if err := json.Unmarshal([]byte(e.mustMoat("status", "--json")), &st); err != nil || st.InSync || len(st.StateErrors) != 1 {
				t.Errorf("status --json with %s damaged: %v %+v", name, err, st)
			}
			if old == nil {
				must(t, os.Remove(path))
			} else {
				writeFile(t, path, string(old))
			}
		}
		damage("applied.json", "what moat applied is unknown")
		damage("intent.json", "journal is unreadable")
		e.mustMoat("--confirm", "60s", "--no-wait", "allow", "443/tcp")
		damage("pending.json", "its watchdog rolls back")
		e.mustMoat("rollback")
		e.expectStatusClean("status once the records are whole again")
	})
}

// An update of a url list killed between saving the new list and its
// metadata (after the kernel took it) leaves the new list beside the old
// metadata. The next apply loaded the list empty ("not fetched yet"), so
// the sources it blocks came in until the next update. Made exactly (the
// metadata from before the update put back after it): a reload keeps
// them dropped, with a warning, and status sees no change outside moat.
// Real packets, both backends, IPv4 and IPv6.
func TestURLListKilledBetweenSaves(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		ls := e.dropListServed("192.0.2.3/32\n2001:db8::3/128\n", "")
		if out, err := e.moatTLS(ls, "blocklist", "update"); err != nil {
			t.Fatalf("first update: %v\n%s", err, out)
		}
		meta := filepath.Join(e.stateDir(), "blocklists", "drop.json")
		old, err := os.ReadFile(meta)
		if err != nil {
			t.Fatal(err)
		}
		ls.set("/drop.txt", "192.0.2.4/32\n2001:db8::4/128\n", 0)
		if out, err := e.moatTLS(ls, "blocklist", "update"); err != nil {
			t.Fatalf("second update: %v\n%s", err, out)
		}
		writeFile(t, meta, string(old)) // the kill: the new list, the old metadata
		probes := []string{"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.3 tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:80 open"}
		e.expect(false, probes...)
		out := e.mustMoat("reload")
		if !strings.Contains(out, "used as saved") {
			t.Errorf("the reload does not say the copy is used as saved:\n%s", out)
		}
		e.expect(false, probes...)
		e.expectStatusClean("status after the reload")
	})
}
