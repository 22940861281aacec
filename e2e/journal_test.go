package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/guard"
)

// journalEntries writes `journalctl -o json` entries of failed logins.
func journalEntries(t *testing.T, path string, first int, addr string, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	for i := 0; i < n; i++ {
		c := first + i
		msg := fmt.Sprintf("Failed password for invalid user guest%d from %s port %d ssh2", c, addr, 40000+c)
		ident := "sshd-session"
		if c%2 == 0 {
			ident = "sshd"
		}
		e := map[string]string{"MESSAGE": msg, "SYSLOG_IDENTIFIER": ident, "_COMM": ident, "_PID": "4242", "_UID": "0",
			"__CURSOR": fmt.Sprintf("s=feed;i=%x;b=boot;m=%x;t=%x;x=%x", c, c, c, c), "__REALTIME_TIMESTAMP": fmt.Sprint(time.Now().UnixMicro())}
		data, _ := json.Marshal(e)
		fmt.Fprintln(f, string(data))
	}
	// A successful login and an entry with MESSAGE as bytes (not UTF-8).
	fmt.Fprintf(f, `{"MESSAGE":"Accepted publickey for admin from 198.51.100.2 port 50000 ssh2","SYSLOG_IDENTIFIER":"sshd","_COMM":"sshd","_UID":"0","__CURSOR":"s=feed;i=ok%d"}`+"\n", first)
	fmt.Fprintf(f, `{"MESSAGE":[73,110,118,97,108,105,100,32,117,115,101,114,32,255,32,102,114,111,109,32,49,57,56,46,53,49,46,49,48,48,46,50],"SYSLOG_IDENTIFIER":"sshd","_EXE":"/usr/sbin/sshd","_UID":"0","__CURSOR":"s=feed;i=bytes%d"}`+"\n", first)
}

// journalEnv is a parallel test's environment on nftables and the path
// of the stand-in journalctl (testdata/fakejournalctl) built in its
// directory.
func journalEnv(t *testing.T) (*env, string) {
	t.Helper()
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	fake := filepath.Join(e.dir, "journalctl")
	if out, err := exec.Command("go", "build", "-o", fake, "./testdata/fakejournalctl").CombinedOutput(); err != nil {
		t.Fatalf("build the stand-in: %v\n%s", err, out)
	}
	return e, fake
}

// The journald source, with a recorded stream played by a stand-in
// journalctl: it bans, saves the cursor, and resumes after it without
// reading anything twice. Metrics count what it did.
func TestGuardJournald(t *testing.T) {
	e, fake := journalEnv(t)
	rec, argsFile := filepath.Join(e.dir, "journal.json"), filepath.Join(e.dir, "journalctl.args")
	e.guardEnv = []string{"FAKE_JOURNAL=" + rec, "FAKE_JOURNAL_ARGS=" + argsFile} // inherited by its journalctl
	journalEntries(t, rec, 1, "203.0.113.50", 3)
	e.apply("default deny incoming\nallow 22/tcp\nguard sshd maxretry 3 findtime 10m bantime 1h weak 0\n")

	stop := e.startGuard("--journalctl", fake, "--metrics-listen", "127.0.0.1:9550")
	waitFor(t, 5*time.Second, "203.0.113.50 not banned from the journal", func() bool {
		_, ok := e.bans()["203.0.113.50"]
		return ok
	})
	if _, ok := e.bans()["198.51.100.2"]; ok {
		t.Error("the address of a successful login was banned")
	}
	// The ban comes at the third line; the last two may still be on their
	// way on a loaded machine.
	var metrics string
	waitFor(t, 5*time.Second, "the guard did not read all 5 entries", func() bool {
		metrics = e.scrape(t, "127.0.0.1:9550")
		return strings.Contains(metrics, "moat_guard_lines_read_total 5")
	})
	for _, want := range []string{"moat_guard_lines_read_total 5", `moat_guard_failures_total{kind="failed_password"} 3`,
		`moat_guard_failures_total{kind="invalid_user"} 1`, "moat_guard_bans_total 1", "moat_guard_ban_latency_seconds_count 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	stop(syscall.SIGTERM)

	if st, err := guard.LoadState(e.stateDir()); err != nil || st.JournalCursor != "s=feed;i=bytes1" {
		t.Errorf("cursor not saved: %+v %v", st, err)
	}
	// More entries arrive; the guard restarts after the saved cursor.
	e.mustMoat("unban", "203.0.113.50")
	journalEntries(t, rec, 10, "203.0.113.51", 3)
	e.startGuard("--journalctl", fake)
	waitFor(t, 5*time.Second, "203.0.113.51 not banned after the restart", func() bool {
		_, ok := e.bans()["203.0.113.51"]
		return ok
	})
	time.Sleep(300 * time.Millisecond)
	if _, ok := e.bans()["203.0.113.50"]; ok {
		t.Error("old journal entries were read again after the restart")
	}
	args, _ := os.ReadFile(argsFile)
	lines := strings.Split(strings.TrimSpace(string(args)), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "--lines=0") || !strings.Contains(lines[0], "--output=json") ||
		!strings.Contains(lines[0], "SYSLOG_IDENTIFIER=sshd-session") || !strings.Contains(lines[0], "_UID=0") || !strings.Contains(lines[1], "--after-cursor=s=feed;i=bytes1") {
		t.Errorf("journalctl arguments:\n%s", args)
	}
}

// A local user's `logger -t sshd` lands in the journal with
// SYSLOG_IDENTIFIER=sshd but journald's own _UID, _COMM and _EXE: it must
// not count. One entry of 5 MiB must not stop the guard. Both are counted
// in moat_guard_lines_skipped_total, and the guard goes on banning.
func TestGuardJournaldTrust(t *testing.T) {
	e, fake := journalEnv(t)
	rec := filepath.Join(e.dir, "journal.json")
	f, err := os.Create(rec)
	if err != nil {
		t.Fatal(err)
	}
	write := func(fields map[string]string) {
		data, _ := json.Marshal(fields)
		if _, err := f.Write(append(data, '\n')); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 6; i++ {
		// What `logger -t sshd -i` run by uid 1000 in a login session gives.
		write(map[string]string{"MESSAGE": fmt.Sprintf("Failed password for root from 203.0.113.60 port %d ssh2", 40000+i),
			"SYSLOG_IDENTIFIER": "sshd", "SYSLOG_PID": "812", "_COMM": "logger", "_EXE": "/usr/bin/logger", "_UID": "1000", "_GID": "1000",
			"_SYSTEMD_UNIT": "session-3.scope", "_PID": "9999", "__CURSOR": fmt.Sprintf("s=t;i=logger%d", i)})
	}
	write(map[string]string{"MESSAGE": "Failed password for " + strings.Repeat("A", 5<<20) + " from 203.0.113.62 port 1 ssh2",
		"SYSLOG_IDENTIFIER": "sshd", "_COMM": "sshd", "_UID": "0", "__CURSOR": "s=t;i=huge"})
	for i := 0; i < 3; i++ {
		write(map[string]string{"MESSAGE": fmt.Sprintf("Failed password for root from 203.0.113.61 port %d ssh2", 41000+i),
			"SYSLOG_IDENTIFIER": "sshd-session", "_COMM": "sshd-session", "_EXE": "/usr/lib/openssh/sshd-session", "_UID": "0",
			"_SYSTEMD_UNIT": "ssh.service", "_PID": "4242", "__CURSOR": fmt.Sprintf("s=t;i=real%d", i)})
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	e.guardEnv = []string{"FAKE_JOURNAL=" + rec, "FAKE_JOURNAL_ARGS=" + filepath.Join(e.dir, "args")}
	e.apply("default deny incoming\nallow 22/tcp\nguard sshd maxretry 3 findtime 10m bantime 1h weak 0\n")
	e.startGuard("--journalctl", fake, "--metrics-listen", "127.0.0.1:9551")
	waitFor(t, 10*time.Second, "203.0.113.61 not banned after the forged and the huge entries", func() bool {
		_, ok := e.bans()["203.0.113.61"]
		return ok
	})
	if _, ok := e.bans()["203.0.113.60"]; ok {
		t.Error("entries a local user wrote with logger got 203.0.113.60 banned")
	}
	metrics := e.scrape(t, "127.0.0.1:9551")
	for _, want := range []string{`moat_guard_lines_skipped_total{reason="untrusted"} 6`, `moat_guard_lines_skipped_total{reason="too_long"} 1`,
		"moat_guard_lines_read_total 10", "moat_guard_bans_total 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// scrape reads /metrics from inside the server namespace.
func (e *env) scrape(t *testing.T, addr string) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, a string) (net.Conn, error) { return e.topo.Server.Dial(ctx, a) }}}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer func() { _ = resp.Body.Close() }() // read whole below
	data, _ := io.ReadAll(resp.Body)
	return string(data)
}

// moat guard check reads files and stdin, syslog and journald JSON, and
// prints a JSON object a line, then a summary.
func TestGuardCheck(t *testing.T) {
	t.Parallel()
	conf := filepath.Join(t.TempDir(), "moat.conf")
	out, err := moatHost(t, conf, "guard", "check", "../internal/guard/testdata/sshguard/tests.txt")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var sum struct {
		Summary struct {
			Lines, Matched int
		} `json:"summary"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil || sum.Summary.Matched < 60 || sum.Summary.Lines != len(lines)-1 {
		t.Errorf("summary %+v %v", sum, err)
	}
	cmd := exec.Command(moatBin, "--config", conf, "guard", "check", "-")
	cmd.Stdin = strings.NewReader("Nov 25 11:40:01 srv sshd[1]: Failed password for root from 198.51.100.9 port 22 ssh2\n" +
		"Nov 25 11:40:01 srv sshd[1]: Invalid user root from 198.51.100.9 from 203.0.113.66 port 51000\n" +
		`{"MESSAGE":"Accepted publickey for admin from 2001:db8::5 port 1 ssh2","SYSLOG_IDENTIFIER":"sshd","_COMM":"sshd","_UID":"0","_PID":"7","_EXE":"/usr/sbin/sshd"}` + "\n" +
		"something else\n" +
		// What the guard skips, guard check reports: logger's entries, and
		// syslog lines without sshd's tag and PID.
		`{"MESSAGE":"Failed password for root from 198.51.100.9 port 22 ssh2","SYSLOG_IDENTIFIER":"sshd","_COMM":"logger","_UID":"1000","_PID":"8"}` + "\n" +
		"Nov 25 11:40:01 srv sshd: Failed password for root from 198.51.100.9 port 22 ssh2\n")
	data, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`{"line":1,"match":true,"kind":"failed_password","addr":"198.51.100.9","user":"root","service":"sshd","pid":1,"reason":"counts: failed_password"}`,
		`{"line":2,"match":true,"kind":"invalid_user","addr":"203.0.113.66","user":"root from 198.51.100.9","service":"sshd","pid":1,"reason":"counts: invalid_user"}`,
		`{"line":3,"match":false,"kind":"accepted","addr":"2001:db8::5","user":"admin","service":"sshd","pid":7,"reason":"login"}`,
		`{"line":4,"match":false}`,
		`{"line":5,"match":false,"reason":"not counted: a journal entry sshd did not write (its _COMM, _EXE, _UID or unit)"}`,
		`{"line":6,"match":false,"kind":"failed_password","reason":"not counted: a syslog line without sshd's tag and PID (anyone can write those)"}`,
	}
	got := strings.Split(strings.TrimSpace(string(data)), "\n")
	for i, w := range want {
		if got[i] != w {
			t.Errorf("line %d:\n got %s\nwant %s", i+1, got[i], w)
		}
	}
}
