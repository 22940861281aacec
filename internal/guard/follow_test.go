package guard

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// collect reads lines from a running source until want lines came or the
// wait ran out.
func collect(t *testing.T, ch <-chan Line, want int) []string {
	t.Helper()
	var got []string
	deadline := time.After(5 * time.Second)
	for len(got) < want {
		select {
		case l := <-ch:
			got = append(got, l.Text)
		case <-deadline:
			t.Fatalf("got %d lines, want %d: %q", len(got), want, got)
		}
	}
	select {
	case l := <-ch:
		t.Fatalf("extra line %q (re-read?)", l.Text)
	case <-time.After(300 * time.Millisecond):
	}
	return got
}

func appendLines(t *testing.T, path string, from, to int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < to; i++ {
		fmt.Fprintf(f, "line %d\n", i)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func startFollow(t *testing.T, s *FileSource) <-chan Line {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan Line, 1000)
	done := make(chan error, 1)
	before := openCount(t, s.Path)
	go func() { done <- s.Run(ctx, ch) }()
	t.Cleanup(func() { cancel(); <-done })
	// The follower has the file open (its watcher is set up before):
	// lines appended from now on are new to it. A fixed wait (50 ms) lost
	// them on a loaded machine, where the follower opened the file after
	// the test appended them, and started at their end.
	for deadline := time.Now().Add(5 * time.Second); openCount(t, s.Path) <= before; {
		if time.Now().After(deadline) {
			t.Fatalf("the follower did not open %s", s.Path)
		}
		time.Sleep(time.Millisecond)
	}
	return ch
}

// openCount is how many descriptors of this process have path open.
func openCount(t *testing.T, path string) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && l == path {
			n++
		}
	}
	return n
}

func expectLines(t *testing.T, got []string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if got[i-from] != fmt.Sprintf("line %d", i) {
			t.Fatalf("line %d is %q; lines %q", i, got[i-from], got)
		}
	}
}

func TestFollowRotationByRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "auth.log")
	appendLines(t, path, 0, 3) // old lines: a new follower starts at the end
	ch := startFollow(t, &FileSource{Path: path, Poll: 100 * time.Millisecond})
	appendLines(t, path, 3, 6)
	expectLines(t, collect(t, ch, 3), 3, 6)
	// logrotate: more lines, rename, more lines to the old file (the daemon
	// still has it open), then a new file.
	appendLines(t, path, 6, 8)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendLines(t, path+".1", 8, 10)
	appendLines(t, path, 10, 13)
	expectLines(t, collect(t, ch, 7), 6, 13)
}

func TestFollowCopyTruncate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "auth.log")
	appendLines(t, path, 0, 0)
	ch := startFollow(t, &FileSource{Path: path, Poll: 100 * time.Millisecond})
	appendLines(t, path, 0, 5)
	expectLines(t, collect(t, ch, 5), 0, 5)
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	appendLines(t, path, 5, 8)
	expectLines(t, collect(t, ch, 3), 5, 8)
}

// A restart resumes at the saved offset: nothing lost, nothing read twice.
func TestFollowResume(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "auth.log")
	appendLines(t, path, 0, 4)
	ch := startFollow(t, &FileSource{Path: path, From: &FilePos{Path: path}, Poll: 100 * time.Millisecond})
	_ = ch // inode 0 never matches: a rotated file is read from its start
	got := collect(t, ch, 4)
	expectLines(t, got, 0, 4)

	fi, _ := os.Stat(path)
	pos := &FilePos{Path: path, Inode: inodeOf(fi), Offset: int64(len("line 0\nline 1\n"))}
	appendLines(t, path, 4, 6)
	ch2 := startFollow(t, &FileSource{Path: path, From: pos, Poll: 100 * time.Millisecond})
	expectLines(t, collect(t, ch2, 4), 2, 6)
}

func TestParseJournalEntry(t *testing.T) {
	l, err := ParseJournalEntry([]byte(`{"MESSAGE":"Failed password for root from 203.0.113.9 port 5 ssh2","SYSLOG_IDENTIFIER":"sshd","__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1700000000000000"}`))
	if err != nil || l.Prog != "sshd" || l.Cursor != "s=1;i=2" || l.Time.Unix() != 1700000000 {
		t.Fatalf("%+v %v", l, err)
	}
	// Non-UTF-8 messages come as byte arrays.
	l, err = ParseJournalEntry([]byte(`{"MESSAGE":[73,110,118,97,108,105,100,32,117,115,101,114,32,255,32,102,114,111,109,32,49,46,50,46,51,46,52],"_COMM":"sshd"}`))
	if err != nil || l.Prog != "sshd" {
		t.Fatalf("%+v %v", l, err)
	}
	if ev, ok := ParseMessage(l.Prog, l.Text); !ok || ev.Addr.String() != "1.2.3.4" {
		t.Fatalf("byte message: %+v %v", ev, ok)
	}
}

// A line past maxLine is skipped whole, never cut and parsed (its head
// could read as a failure), with the read position after it; the lines
// after it come through. It used to be cut to its first 64 KiB.
func TestFollowSkipsOverlongLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "auth.log")
	appendLines(t, path, 0, 0)
	ch := startFollow(t, &FileSource{Path: path, Poll: 100 * time.Millisecond})
	long := "Nov 25 11:40:01 srv sshd[812]: Failed password for root from 203.0.113.9 port 22 ssh2 " + strings.Repeat("x", maxLine)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(long + "\nline 1\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var got []Line
	timeout := time.After(5 * time.Second)
	for len(got) < 2 {
		select {
		case l := <-ch:
			got = append(got, l)
		case <-timeout:
			t.Fatalf("got %d lines", len(got))
		}
	}
	if got[0].Skip != SkipTooLong || got[0].Text != "" || got[0].File.Offset != int64(len(long)+1) {
		t.Errorf("the long line: skip %q, %d bytes of text, offset %d", got[0].Skip, len(got[0].Text), got[0].File.Offset)
	}
	if got[1].Skip != "" || got[1].Text != "line 1" || got[1].File.Offset != int64(len(long)+1+len("line 1\n")) {
		t.Errorf("the next line: %+v", got[1])
	}
}

// The guard is ready (sd_notify READY=1; the e2e tests write the log
// then) only once its file source has the file open at its end: a line
// written right after is read. Ready came as soon as the source's
// goroutine started, and under load a line written before the file was
// opened at its end was lost (e2e TestGuardReload failed in CI).
func TestReadyOnceFollowing(t *testing.T) {
	dir := stateDir(t)
	logPath := filepath.Join(t.TempDir(), "auth.log")
	if err := os.WriteFile(logPath, []byte("an old line, not read\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	beforeOpen = func() { time.Sleep(300 * time.Millisecond) }
	t.Cleanup(func() { beforeOpen = nil })
	svc := newService(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	svc.Ready = func() {
		f, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer func() { _ = f.Close() }()
		for i := 0; i < svc.Cfg.MaxRetry; i++ {
			if _, err := fmt.Fprintf(f, "Nov 25 11:40:01 srv sshd[%d]: Failed password for root from 203.0.113.9 port 22 ssh2\n", 100+i); err != nil {
				t.Error(err)
			}
		}
	}
	bans := runUntilBanned(svc, &FileSource{Path: logPath, Poll: 50 * time.Millisecond}, 3*time.Second)
	if len(bans) != 1 || bans[0].Addr != netip.MustParseAddr("203.0.113.9") {
		t.Fatalf("the failures written once the guard was ready: bans %v", bans)
	}
}
