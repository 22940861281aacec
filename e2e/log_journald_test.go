package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// journald is a real systemd-journald in a mount namespace of its own:
// /run/systemd, /run/log and /var/log/journal are its own (the host's
// journal is never touched), and /dev/kmsg, where it reads the kernel's log, is a FIFO the
// test writes records into in the kernel's format. The kernel's own log
// lines cannot be used: netfilter's log target writes nothing from a
// network namespace other than the first unless the host-wide
// net.netfilter.nf_log_all_netns is set, which a test must not change.
type journald struct {
	t    *testing.T
	pid  int // journald, in the mount namespace
	kmsg *os.File
	seq  int
}

func startJournald(t *testing.T) *journald {
	t.Helper()
	for _, p := range []string{"/lib/systemd/systemd-journald", "journalctl", "unshare", "nsenter", "logger"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is not installed (systemd, util-linux, bsdutils)", p)
		}
	}
	dir := t.TempDir()
	fifo := filepath.Join(dir, "kmsg")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The script is fixed; the FIFO's path is its argument.
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/journal && mount -t tmpfs tmpfs /run/log && `+
			`{ ! [ -d /var/log/journal ] || mount -t tmpfs tmpfs /var/log/journal; } && mount --bind "$0" /dev/kmsg && exec /lib/systemd/systemd-journald`, fifo)
	// Its own messages to the console (its log file): to /dev/kmsg they
	// would be a writer's open of the FIFO, which waits for a reader.
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_TARGET=console")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logf, err := os.Create(filepath.Join(dir, "journald.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		_ = logf.Close()
	})
	j := &journald{t: t, pid: cmd.Process.Pid}
	// Ready once journald holds the FIFO and answers on its socket.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if out, err := j.run("journalctl", "--no-pager", "-n", "1"); err == nil && j.holdsKmsg() {
			break
		} else if time.Now().After(deadline) {
			data, _ := os.ReadFile(logf.Name())
			t.Fatalf("journald did not start: %v\n%s\n%s", err, out, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Journald holds the FIFO open for reading: opening it to write does
	// not wait.
	if j.kmsg, err = os.OpenFile(fifo, os.O_WRONLY, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.kmsg.Close() })
	return j
}

// holdsKmsg says whether journald (the exec'd script) has /dev/kmsg open.
func (j *journald) holdsKmsg() bool {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", j.pid))
	for _, e := range ents {
		// Seen from outside its mount namespace, the FIFO may be named
		// by either path.
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", j.pid, e.Name())); strings.HasSuffix(l, "kmsg") {
			return true
		}
	}
	return false
}

// run runs a program in journald's mount namespace.
func (j *journald) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"-t", fmt.Sprint(j.pid), "-m", "--", name}, args...)...).CombinedOutput()
	return string(out), err
}

// kernel writes one kernel log record, and waits until journald has read
// it (a read of /dev/kmsg is one record: two in the FIFO at once would be
// read as one).
func (j *journald) kernel(msg string) {
	j.t.Helper()
	j.seq++
	rec := fmt.Sprintf("4,%d,%d,-;%s\n", j.seq, j.seq*1000, msg)
	if _, err := j.kmsg.WriteString(rec); err != nil {
		j.t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var n int32
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, j.kmsg.Fd(), syscall.TIOCINQ, uintptr(unsafe.Pointer(&n))); e != 0 {
			j.t.Fatal(e)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			j.t.Fatal("journald does not read /dev/kmsg")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// What netfilter's log target writes, with moat's prefixes.
func blockLine4(kind, src string, dport int) string {
	return fmt.Sprintf("[MOAT %s] IN=eth0 OUT= MAC=02:00:00:00:00:01:02:00:00:00:00:02:08:00 SRC=%s DST=192.0.2.1 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=54321 DF PROTO=TCP SPT=40000 DPT=%d WINDOW=64240 RES=0x00 SYN URGP=0 ", kind, src, dport)
}

func blockLine6(kind, src string, dport int) string {
	return fmt.Sprintf("[MOAT %s] IN=eth0 OUT= MAC=02:00:00:00:00:01:02:00:00:00:00:02:86:dd SRC=%s DST=2001:db8:0000:0000:0000:0000:0000:0001 LEN=80 TC=0 HOPLIMIT=64 FLOWLBL=12345 PROTO=UDP SPT=40000 DPT=%d LEN=40 ", kind, src, dport)
}

// 'moat log' reads the kernel's lines from a real journald through
// journalctl: it counts moat's BLOCK lines by source and port (IPv4 and
// IPv6, IPv6 sources as the kernel writes them, expanded), not moat's
// other kinds, other kernel lines, or "[MOAT BLOCK]" lines that a user
// program wrote to the journal, even as "kernel"; --follow prints each
// new line.
func TestLogFromJournald(t *testing.T) {
	t.Parallel()
	j := startJournald(t)
	for i := 0; i < 3; i++ {
		j.kernel(blockLine4("BLOCK", "192.0.2.3", 443))
	}
	for i := 0; i < 2; i++ {
		j.kernel(blockLine6("BLOCK L7", "2001:0db8:0000:0000:0000:0000:0000:0003", 53))
	}
	j.kernel(blockLine4("ALLOW", "192.0.2.2", 22))
	j.kernel("eth0: entered promiscuous mode")
	j.kernel("[MOAT BLOCK] IN=eth0 SRC=not-an-address DPT=80")
	// Anyone may write to the journal: as a program called kernel, at
	// kernel priority, it is still no kernel line.
	for _, tag := range []string{"kernel", "sshd"} {
		if out, err := j.run("logger", "-u", "/run/systemd/journal/dev-log", "-t", tag, "-p", "kern.warning", blockLine4("BLOCK", "203.0.113.9", 80)); err != nil {
			t.Fatalf("logger: %v\n%s", err, out)
		}
	}
	waitFor(t, 10*time.Second, "the user program's line is not in the journal: the test would prove nothing", func() bool {
		out, _ := j.run("journalctl", "--no-pager", "-t", "kernel", "--grep", "203.0.113.9")
		return strings.Contains(out, "203.0.113.9")
	})
	dir := t.TempDir()
	moat := func(args ...string) string {
		t.Helper()
		full := append([]string{"--config", filepath.Join(dir, "moat.conf"), "--state-dir", filepath.Join(dir, "state")}, args...)
		out, err := j.run(moatBin, full...)
		if err != nil {
			t.Fatalf("moat %v: %v\n%s", args, err, out)
		}
		return out
	}
	var sum struct {
		Lines   int `json:"lines"`
		Sources []struct {
			Key   string `json:"key"`
			Count int    `json:"count"`
		} `json:"top_sources"`
		Ports []struct {
			Key   string `json:"key"`
			Count int    `json:"count"`
		} `json:"top_ports"`
	}
	out := moat("log", "--json")
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("moat log --json: %v\n%s", err, out)
	}
	got := fmt.Sprint(sum.Lines, sum.Sources, sum.Ports)
	if want := "5 [{192.0.2.3 3} {2001:db8::3 2}] [{443/tcp 3} {53/udp 2}]"; got != want {
		t.Errorf("moat log --json from the journal: %s, want %s\n%s", got, want, out)
	}
	if text := moat("log"); !strings.Contains(text, "5 blocked packets logged") || !strings.Contains(text, "192.0.2.3") || strings.Contains(text, "203.0.113.9") {
		t.Errorf("moat log:\n%s", text)
	}

	// --follow: only lines that come after it starts.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	follow := exec.CommandContext(ctx, "nsenter", "-t", fmt.Sprint(j.pid), "-m", "--", moatBin,
		"--config", filepath.Join(dir, "moat.conf"), "--state-dir", filepath.Join(dir, "state"), "log", "--follow", "--json")
	pipe, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	follow.Stderr = os.Stderr
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = follow.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// journalctl --follow --lines=0 starts at the journal's end; until it
	// runs, a line may come before it: send until one is seen.
	var first string
	deadline := time.Now().Add(30 * time.Second)
	for first == "" {
		j.kernel(blockLine4("BLOCK", "192.0.2.4", 25))
		select {
		case first = <-lines:
		case <-time.After(500 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("moat log --follow printed nothing")
			}
		}
	}
	if !strings.Contains(first, `"src":"192.0.2.4"`) || strings.Contains(first, "192.0.2.3") {
		t.Errorf("moat log --follow printed an old line or the wrong one: %s", first)
	}
	j.kernel(blockLine6("INVALID", "2001:db8::4", 0))
	for l := range lines {
		if strings.Contains(l, "2001:db8::4") {
			if !strings.Contains(l, `"kind":"INVALID"`) {
				t.Errorf("moat log --follow: %s", l)
			}
			break
		}
		if !strings.Contains(l, "192.0.2.4") {
			t.Errorf("moat log --follow printed %s", l)
		}
	}
}
