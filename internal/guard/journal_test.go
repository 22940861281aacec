package guard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary stand in for journalctl: with
// GUARD_TEST_JOURNAL set, it prints that file and waits, as
// `journalctl --follow` does.
func TestMain(m *testing.M) {
	if f := os.Getenv("GUARD_TEST_JOURNAL"); f != "" {
		in, err := os.Open(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if _, err := io.Copy(os.Stdout, in); err != nil {
			os.Exit(1)
		}
		time.Sleep(time.Hour)
	}
	os.Exit(m.Run())
}

func entry(fields map[string]string) string {
	data, _ := json.Marshal(fields)
	return string(data)
}

func sshdEntry(msg, cursor string) map[string]string {
	return map[string]string{"MESSAGE": msg, "SYSLOG_IDENTIFIER": "sshd", "_COMM": "sshd", "_EXE": "/usr/sbin/sshd",
		"_UID": "0", "_SYSTEMD_UNIT": "ssh.service", "_PID": "812", "__CURSOR": cursor}
}

// An entry longer than the bound (here 5 MiB) is skipped and reported, and
// the source reads on: it used to stop reading for good.
func TestJournalSourceOverlong(t *testing.T) {
	rec := filepath.Join(t.TempDir(), "journal.json")
	var b strings.Builder
	b.WriteString(entry(sshdEntry("Failed password for root from 203.0.113.1 port 1 ssh2", "c1")) + "\n")
	b.WriteString(entry(sshdEntry("Failed password for "+strings.Repeat("A", 5<<20)+" from 203.0.113.2 port 1 ssh2", "c2")) + "\n")
	b.WriteString(entry(sshdEntry("Failed password for root from 203.0.113.3 port 1 ssh2", "c3")) + "\n")
	if err := os.WriteFile(rec, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GUARD_TEST_JOURNAL", rec)
	src := &JournalSource{Journalctl: os.Args[0]}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan Line, 10)
	go func() { _ = src.Run(ctx, out) }() // ends with ctx
	var got []Line
	timeout := time.After(10 * time.Second)
	for len(got) < 3 {
		select {
		case l := <-out:
			got = append(got, l)
		case <-timeout:
			t.Fatalf("got %d lines: %+v", len(got), got)
		}
	}
	if got[0].Cursor != "c1" || got[1].Skip != SkipTooLong || got[2].Cursor != "c3" || got[2].Skip != "" {
		t.Fatalf("lines %+v", got)
	}
}

// Only entries sshd wrote count: journald's trusted fields (_UID, _COMM,
// _EXE, _SYSTEMD_UNIT) decide, never SYSLOG_IDENTIFIER, which the sender
// chooses.
func TestJournalTrust(t *testing.T) {
	msg := "Failed password for root from 203.0.113.1 port 1 ssh2"
	mod := func(change map[string]string) map[string]string {
		e := sshdEntry(msg, "c")
		for k, v := range change {
			if v == "" {
				delete(e, k)
			} else {
				e[k] = v
			}
		}
		return e
	}
	for _, c := range []struct {
		name  string
		entry map[string]string
		want  bool
	}{
		{"sshd", mod(nil), true},
		{"sshd-session (OpenSSH 9.8)", mod(map[string]string{"_COMM": "sshd-session", "_EXE": "/usr/lib/openssh/sshd-session", "SYSLOG_IDENTIFIER": "sshd-session"}), true},
		{"dropbear", mod(map[string]string{"_COMM": "dropbear", "_EXE": "/usr/sbin/dropbear", "_SYSTEMD_UNIT": "dropbear.service"}), true},
		{"session scope, root sshd", mod(map[string]string{"_SYSTEMD_UNIT": "session-4.scope"}), true},
		{"socket-activated instance", mod(map[string]string{"_COMM": "", "_EXE": "", "_SYSTEMD_UNIT": "sshd@3-192.0.2.1:22-203.0.113.1:5000.service"}), true},
		{"logger as uid 1000", mod(map[string]string{"_COMM": "logger", "_EXE": "/usr/bin/logger", "_UID": "1000", "_SYSTEMD_UNIT": "session-2.scope"}), false},
		{"a user's own binary named sshd", mod(map[string]string{"_EXE": "/home/u/sshd", "_UID": "1000", "_SYSTEMD_UNIT": "user@1000.service"}), false},
		{"root's logger", mod(map[string]string{"_COMM": "logger", "_EXE": "/usr/bin/logger", "_SYSTEMD_UNIT": "cron.service"}), false},
		{"no _UID", mod(map[string]string{"_UID": ""}), false},
		{"lookalike unit", mod(map[string]string{"_COMM": "python3", "_EXE": "/usr/bin/python3", "_SYSTEMD_UNIT": "sshd-keygen.service"}), false},
	} {
		_, err := ParseTrustedJournalEntry([]byte(entry(c.entry)))
		if got := err == nil; got != c.want {
			t.Errorf("%s: trusted=%v, want %v (%v)", c.name, got, c.want, err)
		}
	}
}
