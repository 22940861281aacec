package safeapply

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/labtest"
)

// A real dropbear in a namespace: the client of a logged-in session is
// found logged in, a connection still authenticating (its banner read,
// no login) is not. dropbear reads root's authorized_keys from /root, so
// it runs in a mount namespace of its own where /root is the test's
// folder: the host's /root is not touched.
func TestFindSSHLoggedInRealDropbear(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	t.Parallel()
	ns := labtest.NS(t, "moatdb")
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", "192.0.2.1/32", "dev", "lo"},
		{"addr", "add", "198.51.100.7/32", "dev", "lo"},
		{"addr", "add", "203.0.113.9/32", "dev", "lo"},
	} {
		if out, err := ns.Run(context.Background(), "ip", args...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	dir := t.TempDir()
	server, id := labtest.Dropbear(t, dir, "192.0.2.1:2299")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	var serverLog strings.Builder
	server.Stdout, server.Stderr = &serverLog, &serverLog
	must(ns.Start(server))
	t.Cleanup(func() {
		// The connections' processes end with their connections (closed
		// by the cleanups before this one): the daemon is killed last.
		for deadline := time.Now().Add(2 * time.Second); hasChild(server.Process.Pid) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		_ = server.Process.Kill()
		_ = server.Wait()
	})

	// A connection still authenticating: it read the banner, nothing more.
	var guessing net.Conn
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for {
		err = ns.Do(func() error {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("203.0.113.9")}, Timeout: time.Second}
			c, err := d.Dial("tcp", "192.0.2.1:2299")
			guessing = c
			return err
		})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("dropbear does not answer: %v\n%s", err, serverLog.String())
	}
	t.Cleanup(func() { _ = guessing.Close() })
	_ = guessing.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := guessing.Read(make([]byte, 64)); err != nil {
		t.Fatalf("dropbear banner: %v", err)
	}
	// A logged-in session: cat runs until the client's input closes.
	client := exec.Command("dbclient", "-y", "-i", id, "-b", "198.51.100.7", "-p", "2299", "root@192.0.2.1", "cat")
	client.Env = append(os.Environ(), "HOME="+dir)
	stdin, err := client.StdinPipe()
	must(err)
	var clientLog strings.Builder
	client.Stdout, client.Stderr = io.Discard, &clientLog
	must(ns.Start(client))
	t.Cleanup(func() { _ = stdin.Close(); _ = client.Process.Kill(); _ = client.Wait() })

	var st SSHState
	for deadline := time.Now().Add(10 * time.Second); ; {
		must(ns.Do(func() error {
			var err error
			st, err = FindSSH("/proc", "")
			return err
		}))
		if len(st.LoggedIn) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := fmt.Sprint(st.LoggedIn); got != "[198.51.100.7]" {
		t.Errorf("logged in: %s, want [198.51.100.7] (the authenticated client, not 203.0.113.9)\nsessions %+v\nclient: %s\nserver: %s", got, st.Sessions, clientLog.String(), serverLog.String())
	}
	if len(st.Sessions) != 2 {
		t.Errorf("live sessions: %+v", st.Sessions)
	}
}

// hasChild reports whether process pid has a child.
func hasChild(pid int) bool {
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		data, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		if _, ppid, _, ok := parseStat(data); ok && ppid == pid {
			return true
		}
	}
	return false
}
