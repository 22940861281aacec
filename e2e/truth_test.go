package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// statusTruth is what `moat status --json` says about file, applied and
// kernel.
type statusTruth struct {
	InSync         bool     `json:"in_sync"`
	FileNotApplied bool     `json:"file_not_applied"`
	KernelChanged  []string `json:"kernel_changed"`
	FailClosed     *struct {
		Reason string `json:"reason"`
	} `json:"fail_closed"`
	Rules []struct {
		Number  int    `json:"number"`
		ToPort  string `json:"to_port"`
		Applied bool   `json:"applied"`
		InFile  bool   `json:"in_file"`
	} `json:"rules"`
}

func (e *env) truth() statusTruth {
	e.t.Helper()
	out := e.mustMoat("status", "--json")
	var st statusTruth
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		e.t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

// applied reports, per destination port, whether status says the rule is
// applied; absent ports are missing from status.
func (st statusTruth) applied() map[string]bool {
	m := map[string]bool{}
	for _, r := range st.Rules {
		m[r.ToPort] = r.Applied
	}
	return m
}

// status and explain say what the kernel does: a hand edit of moat.conf
// is "not applied" until 'moat reload' (and explain answers with what is
// applied), a rule added or removed in moat's table/chains by hand is
// "changed outside moat", and after 'moat restore' fell back to the
// fail-closed ruleset status says FAIL-CLOSED and lists only what is
// applied. Each claim is checked against real packets, IPv4 and IPv6.
func TestStatusTellsWhatIsApplied(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\n")
		if st := e.truth(); !st.InSync || st.FileNotApplied || len(st.KernelChanged) > 0 {
			t.Fatalf("status right after enable: %+v", st)
		}

		// 1. A hand edit of the policy file.
		writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\nallow 8080/tcp\n")
		out := e.mustMoat("status", "numbered")
		for _, want := range []string{"Changes in " + e.conf + " not applied (moat reload)", "[ 2] 8080/tcp", "(not applied)"} {
			if !strings.Contains(out, want) {
				t.Errorf("status after a hand edit lacks %q:\n%s", want, out)
			}
		}
		if st := e.truth(); st.InSync || !st.FileNotApplied || st.applied()["8080"] || !st.applied()["22"] {
			t.Errorf("status --json after a hand edit: %+v", st)
		}
		ex := e.mustMoat("explain", "in", "tcp", "from", "192.0.2.2", "to", "port", "8080")
		if !strings.HasPrefix(ex, "DROP\n") || !strings.Contains(ex, "differs from what is applied") {
			t.Errorf("explain of a rule only in the file:\n%s", ex)
		}
		e.expect(false, "client tcp 192.0.2.1:8080 timeout", "client tcp [2001:db8::1]:8080 timeout")
		e.mustMoat("reload")
		if st := e.truth(); !st.InSync || !st.applied()["8080"] {
			t.Errorf("status after reload: %+v", st)
		}
		if ex := e.mustMoat("explain", "in", "tcp", "to", "port", "8080"); !strings.HasPrefix(ex, "ACCEPT\n") || strings.Contains(ex, "note:") {
			t.Errorf("explain after reload:\n%s", ex)
		}
		e.expect(false, "client tcp 192.0.2.1:8080 open", "client tcp [2001:db8::1]:8080 open")

		// 2. moat's table/chains changed by hand: a rule added, one removed.
		if b == "nftables" {
			e.run("server", "nft", "insert", "rule", "inet", "moat", "input", "tcp", "dport", "6000", "accept")
			handle := regexp.MustCompile(`comment "L3" # handle (\d+)`).FindStringSubmatch(e.run("server", "nft", "-a", "list", "chain", "inet", "moat", "input"))
			if handle == nil {
				t.Fatal("no rule L3 in moat's table")
			}
			e.run("server", "nft", "delete", "rule", "inet", "moat", "input", "handle", handle[1])
		} else {
			for _, prog := range []string{"iptables", "ip6tables"} {
				e.run("server", prog, "-I", "MOAT-INPUT", "-p", "tcp", "--dport", "6000", "-j", "RETURN")
				e.run("server", prog, "-D", "MOAT-INPUT", "-p", "tcp", "--dport", "8080", "-m", "comment", "--comment", "L3", "-j", "RETURN")
			}
		}
		e.expect(false, "client tcp 192.0.2.1:6000 open", "client tcp [2001:db8::1]:8080 timeout")
		out = e.mustMoat("status")
		what := map[string]string{"nftables": "moat's table was changed outside moat (moat reload repairs it)",
			"iptables": "moat's chains were changed outside moat (moat reload repairs it)"}[b]
		for _, want := range []string{what, "moat did not load", "lacks 1 rule moat loaded: L3", "(NOT IN THE KERNEL: removed outside moat)"} {
			if !strings.Contains(out, want) {
				t.Errorf("status after a change by hand lacks %q:\n%s", want, out)
			}
		}
		if st := e.truth(); st.InSync || len(st.KernelChanged) == 0 || st.applied()["8080"] {
			t.Errorf("status --json after a change by hand: %+v", st)
		}
		if ex := e.mustMoat("explain", "in", "tcp", "to", "port", "6000"); !strings.Contains(ex, "changed outside moat") {
			t.Errorf("explain after a change by hand:\n%s", ex)
		}
		e.mustMoat("reload")
		if st := e.truth(); !st.InSync {
			t.Errorf("status after reload repaired the kernel: %+v", st)
		}
		e.expect(false, "client tcp 192.0.2.1:6000 timeout", "client tcp [2001:db8::1]:8080 open")

		// 3. Boot with an unreadable saved ruleset: fail-closed.
		writeFile(t, filepath.Join(e.stateDir(), "saved.json"), "{not json")
		if out, err := e.moat("restore"); err == nil {
			t.Fatalf("restore of a broken saved ruleset succeeded:\n%s", out)
		}
		out = e.mustMoat("status")
		for _, want := range []string{"Status: active", "FAIL-CLOSED since ", ": the saved ruleset was unreadable (", "only SSH is open",
			"22/tcp", "# sshd (fail-closed)", "8080/tcp", "(not applied)"} {
			if !strings.Contains(out, want) {
				t.Errorf("status after fail-closed restore lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "Changes in") {
			t.Errorf("fail-closed status blames the file instead:\n%s", out)
		}
		st := e.truth()
		if st.InSync || st.FailClosed == nil || !strings.Contains(st.FailClosed.Reason, "saved") || st.applied()["8080"] {
			t.Errorf("status --json after fail-closed restore: %+v", st)
		}
		if ex := e.mustMoat("explain", "in", "tcp", "to", "port", "8080"); !strings.HasPrefix(ex, "DROP\n") || !strings.Contains(ex, "FAIL-CLOSED") {
			t.Errorf("explain while fail-closed:\n%s", ex)
		}
		e.expect(false, "client tcp 192.0.2.1:8080 timeout", "client tcp [2001:db8::1]:8080 timeout",
			"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open")
		if err := os.Remove(filepath.Join(e.stateDir(), "saved.json")); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	})
}

// Without a record of what moat applied (an older moat applied it), status
// trusts the file only when the kernel holds exactly its rules; a change
// that a killed moat left half done is reported until it is undone.
func TestStatusWithoutRecordAndInterrupted(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
		if err := os.Remove(filepath.Join(e.stateDir(), "applied.json")); err != nil {
			t.Fatal(err)
		}
		if st := e.truth(); !st.InSync || !st.applied()["80"] {
			t.Errorf("status without a record, kernel = file: %+v", st)
		}
		writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\nallow 80/tcp\nallow 8080/tcp\n")
		if out := e.mustMoat("status"); !strings.Contains(out, "What moat applied is not recorded") {
			t.Errorf("status without a record, file edited:\n%s", out)
		}

		dead := exec.Command("true")
		if err := dead.Run(); err != nil {
			t.Fatal(err)
		}
		intent := fmt.Sprintf(`{"pid": %d, "command": "moat allow 9/tcp", "time": %q}`, dead.Process.Pid, time.Now().UTC().Format(time.RFC3339))
		if err := os.WriteFile(filepath.Join(e.stateDir(), "intent.json"), []byte(intent), 0o600); err != nil {
			t.Fatal(err)
		}
		if out := e.mustMoat("status"); !strings.Contains(out, "INTERRUPTED: 'moat allow 9/tcp' died at ") {
			t.Errorf("status with an interrupted change:\n%s", out)
		}
		var st struct {
			InSync      bool `json:"in_sync"`
			Interrupted *struct {
				Running bool `json:"running"`
			} `json:"interrupted"`
		}
		if err := json.Unmarshal([]byte(e.mustMoat("status", "--json")), &st); err != nil || st.InSync || st.Interrupted == nil || st.Interrupted.Running {
			t.Errorf("status --json with an interrupted change: %v %+v", err, st)
		}
		if err := os.Remove(filepath.Join(e.stateDir(), "intent.json")); err != nil {
			t.Fatal(err)
		}
	})
}

// An address added by hand to one of moat's policy sets is a change
// outside moat too: status names the set and the address, and reload
// takes it out again (the set is filled anew, not trusted by its name).
func TestHandAddedSetElement(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default allow incoming\ndeny from 192.0.2.3\ndeny from 192.0.2.4\ndeny from 2001:db8::3\ndeny from 2001:db8::4\n")
		e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 open", "client/192.0.2.3 tcp 192.0.2.1:80 timeout",
			"client/2001:db8::2 tcp [2001:db8::1]:80 open", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
		if b == "nftables" {
			ruleset := e.run("server", "nft", "list", "chain", "inet", "moat", "input")
			for fam, addr := range map[string]string{"ip": "192.0.2.2", "ip6": "2001:db8::2"} {
				set := regexp.MustCompile(fam + ` saddr @(\S+) [^\n]*comment "set:`).FindStringSubmatch(ruleset)
				if set == nil {
					t.Fatalf("no %s set rule in moat's table", fam)
				}
				e.run("server", "nft", "add", "element", "inet", "moat", set[1], "{ "+addr+" }")
			}
		} else {
			for prog, addr := range map[string]string{"iptables-save": "192.0.2.2", "ip6tables-save": "2001:db8::2"} {
				set := regexp.MustCompile(`--match-set (moat-\S+) src -m comment --comment "set:`).FindStringSubmatch(e.run("server", prog, "-t", "filter"))
				if set == nil {
					t.Fatal("no set rule in moat's chains")
				}
				e.run("server", "ipset", "add", set[1], addr)
			}
		}
		e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 timeout", "client/2001:db8::2 tcp [2001:db8::1]:80 timeout")
		out := e.mustMoat("status")
		for _, want := range []string{"holds other addresses than moat loaded: +192.0.2.2/32", "holds other addresses than moat loaded: +2001:db8::2/128",
			"changed outside moat"} {
			if !strings.Contains(out, want) {
				t.Errorf("status after addresses were added by hand lacks %q:\n%s", want, out)
			}
		}
		if out := e.mustMoat("reload"); !strings.Contains(out, "rewrites moat's rules whole") {
			t.Errorf("reload does not say it repairs:\n%s", out)
		}
		if st := e.truth(); !st.InSync {
			t.Errorf("status after reload: %+v", st)
		}
		e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 open", "client/192.0.2.3 tcp 192.0.2.1:80 timeout",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::2 tcp [2001:db8::1]:80 open",
			"client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
	})
}

// A rule of moat's changed in place by hand, keeping its tag and verdict,
// is found by comparing the kernel, rule by rule, with what loading the
// applied policy into an empty scratch namespace gives.
func TestRuleChangedInPlace(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
		// Commands trust the fingerprint taken after the apply: the
		// change below must change it.
		if _, err := os.Stat(filepath.Join(e.stateDir(), "kernel-fingerprint.json")); err != nil {
			t.Fatalf("no fingerprint recorded after the apply: %v", err)
		}
		if b == "nftables" {
			handle := regexp.MustCompile(`comment "L3" # handle (\d+)`).FindStringSubmatch(e.run("server", "nft", "-a", "list", "chain", "inet", "moat", "input"))
			if handle == nil {
				t.Fatal("no rule L3 in moat's table")
			}
			e.run("server", "nft", "replace", "rule", "inet", "moat", "input", "handle", handle[1], "tcp", "dport", "8080", "counter", "accept", "comment", `"L3"`)
		} else {
			for _, prog := range []string{"iptables", "ip6tables"} {
				n := 0
				for i, l := range strings.Split(e.run("server", prog, "-S", "MOAT-INPUT"), "\n") {
					if strings.Contains(l, "--comment L3") {
						n = i // -S prints the chain's -N line first
						break
					}
				}
				if n == 0 {
					t.Fatalf("no rule L3 in %s MOAT-INPUT", prog)
				}
				e.run("server", prog, "-R", "MOAT-INPUT", fmt.Sprint(n), "-p", "tcp", "--dport", "8080", "-m", "comment", "--comment", "L3", "-j", "RETURN")
			}
		}
		e.expect(false, "client tcp 192.0.2.1:8080 open", "client tcp [2001:db8::1]:80 timeout")
		// A locked command that applies nothing (the rule is there
		// already) must not take the changed rules for moat's own.
		for i := range 2 {
			if out, err := e.moat("allow", "22/tcp"); !strings.Contains(out, "changed outside moat") {
				t.Errorf("allow %d after a rule was changed in place did not notice (err %v):\n%s", i, err, out)
			}
		}
		out := e.mustMoat("status")
		if !strings.Contains(out, "changed outside moat (moat reload repairs it)") || !strings.Contains(out, "1 rule changed in place (tag and verdict kept): L3") {
			t.Errorf("status after a rule was changed in place:\n%s", out)
		}
		e.mustMoat("reload")
		if st := e.truth(); !st.InSync {
			t.Errorf("status after reload: %+v", st)
		}
		e.expect(false, "client tcp 192.0.2.1:8080 timeout", "client tcp [2001:db8::1]:80 open", "client tcp 192.0.2.1:80 open")
	})
}
