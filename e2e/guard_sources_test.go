package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// sshdLine is one message of an sshd process (OpenSSH 9.8+: the
// per-connection process is sshd-session, the listener sshd).
type sshdLine struct {
	prog string
	pid  int
	msg  string
}

// connectionLog is what sshd 9.8+ at LogLevel VERBOSE writes for:
//   - a colleague (203.0.113.20) whose agent offers 5 other keys first,
//     logging in 20 times, PIDs reused;
//   - an attacker (203.0.113.21) with only wrong keys, 3 connections, each
//     ended by an address-less "Disconnecting: Too many authentication
//     failures";
//   - a scanner (203.0.113.22) whose kex errors name no address, 6 times;
//   - the listener's 9.8 timeout line with the server's address first,
//     6 times for 203.0.113.23.
//
// The split index is where a log rotation falls in the middle of
// connections.
func connectionLog() (lines []sshdLine, split int) {
	add := func(prog string, pid int, f string, a ...any) {
		lines = append(lines, sshdLine{prog, pid, fmt.Sprintf(f, a...)})
	}
	for i := 0; i < 20; i++ {
		pid, port := 3000+i%3, 40000+i
		add("sshd-session", pid, `Connection from 203.0.113.20 port %d on %s port 22 rdomain ""`, port, lab.ServerV4)
		for k := 0; k < 5; k++ {
			add("sshd-session", pid, "Failed publickey for root from 203.0.113.20 port %d ssh2: ED25519 SHA256:wrong%d", port, k)
		}
		if i == 10 {
			split = len(lines) // rotation between the rejected keys and the login
		}
		add("sshd-session", pid, "Accepted publickey for root from 203.0.113.20 port %d ssh2: ED25519 SHA256:right", port)
		add("sshd-session", pid, "Disconnected from user root 203.0.113.20 port %d", port)
	}
	for i := 0; i < 3; i++ {
		pid, port := 4000+i, 41000+i
		for k := 0; k < 6; k++ {
			add("sshd-session", pid, "Failed publickey for root from 203.0.113.21 port %d ssh2: RSA SHA256:k%d", port, k)
		}
		add("sshd-session", pid, "Disconnecting: Too many authentication failures [preauth]")
	}
	for i := 0; i < 6; i++ {
		pid, port := 5000+i, 42000+i
		add("sshd-session", pid, "error: kex_exchange_identification: client sent invalid protocol identifier \"GET / HTTP/1.1\"")
		add("sshd-session", pid, "banner exchange: Connection from 203.0.113.22 port %d: invalid format", port)
	}
	for i := 0; i < 6; i++ {
		add("sshd", 1000, "Timeout before authentication for connection from %s to 203.0.113.23, pid = %d", lab.ServerV4, 6000+i)
	}
	return lines, split
}

// expectConnectionBans checks the bans connectionLog must give.
func (e *env) expectConnectionBans() {
	e.t.Helper()
	waitFor(e.t, 5*time.Second, "the attacker, scanner and timed-out client not all banned", func() bool {
		b := e.bans()
		_, a := b["203.0.113.21"]
		_, s := b["203.0.113.22"]
		_, t := b["203.0.113.23"]
		return a && s && t
	})
	time.Sleep(300 * time.Millisecond)
	bans := e.bans()
	if len(bans) != 3 {
		e.t.Errorf("bans %v; want only 203.0.113.21-23", bans)
	}
	for _, a := range []string{"203.0.113.20", lab.ServerV4.String()} {
		if _, ok := bans[a]; ok {
			e.t.Errorf("%s banned", a)
		}
	}
}

// Issue 11 through journald: sshd-session's PIDs tie a connection's lines
// together; rejected agent keys before a login never count; lines naming
// no address count against their connection. 'moat guard check' on the
// same JSON agrees.
func TestGuardConnectionsJournald(t *testing.T) {
	e, fake := journalEnv(t)
	rec := filepath.Join(e.dir, "journal.json")
	lines, _ := connectionLog()
	f, err := os.Create(rec)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range lines {
		data, _ := json.Marshal(map[string]string{"MESSAGE": l.msg, "SYSLOG_IDENTIFIER": l.prog, "_COMM": l.prog, "_PID": fmt.Sprint(l.pid),
			"_UID": "0", "_EXE": "/usr/lib/openssh/" + l.prog, "_SYSTEMD_UNIT": "ssh.service",
			"__CURSOR": fmt.Sprintf("s=conn;i=%x", i), "__REALTIME_TIMESTAMP": fmt.Sprint(time.Now().UnixMicro())})
		if _, err := fmt.Fprintln(f, string(data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	e.guardEnv = []string{"FAKE_JOURNAL=" + rec}
	e.apply("default deny incoming\nallow 22/tcp\nguard sshd maxretry 3 findtime 10m bantime 1h\n")
	e.startGuard("--journalctl", fake)
	e.expectConnectionBans()
	e.agree(rec, 3, 0.5)
}

// The same through a syslog file rotated (rename and create) in the middle
// of connections: a connection's lines on both sides of the rotation are
// judged together.
func TestGuardConnectionsFileRotation(t *testing.T) {
	requireBackend(t, "iptables")
	t.Parallel()
	e := newEnv(t, "iptables", false)
	logFile := e.newFile("auth.log", "")
	e.apply("default deny incoming\nallow 22/tcp\nguard sshd maxretry 3 findtime 10m bantime 1h\n")
	e.startGuard("--log-file", logFile)
	lines, split := connectionLog()
	text := func(ls []sshdLine) []string {
		var out []string
		for _, l := range ls {
			out = append(out, fmt.Sprintf("Nov 25 11:40:01 srv %s[%d]: %s", l.prog, l.pid, l.msg))
		}
		return out
	}
	appendLines(t, logFile, text(lines[:split])...)
	time.Sleep(500 * time.Millisecond)
	if err := os.Rename(logFile, logFile+".1"); err != nil {
		t.Fatal(err)
	}
	appendLines(t, logFile, text(lines[split:])...)
	e.expectConnectionBans()
	// guard check on both files, in order, judges as the guard did.
	all := filepath.Join(e.dir, "all.log")
	appendLines(t, all, text(lines)...)
	e.agree(all, 3, 0.5)
}
