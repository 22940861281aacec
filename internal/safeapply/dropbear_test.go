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

	"github.com/moat-fw/moat/internal/lab"
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
	ns, dir, id, serverLog := startDropbear(t, "moatdb", "192.0.2.1:2299", "198.51.100.7", "203.0.113.9")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// A connection still authenticating: it read the banner, nothing more.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("203.0.113.9")}, Timeout: time.Second}
	guessing, err := dialUntil(ns, d, "192.0.2.1:2299", 5*time.Second)
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

// startDropbear makes a network namespace (name its prefix) with lo up,
// 192.0.2.1 and addrs on it, and runs dropbear in it listening on listen
// (root's key id; dir is root's home), logging to serverLog. The daemon
// is killed last: the connections' processes end with their connections
// (closed by the cleanups registered after this one).
func startDropbear(t *testing.T, name, listen string, addrs ...string) (ns *lab.NS, dir, id string, serverLog *strings.Builder) {
	t.Helper()
	ns = labtest.NS(t, name)
	cmds := [][]string{{"link", "set", "lo", "up"}, {"addr", "add", "192.0.2.1/32", "dev", "lo"}}
	for _, a := range addrs {
		cmds = append(cmds, []string{"addr", "add", a + "/32", "dev", "lo"})
	}
	for _, args := range cmds {
		if out, err := ns.Run(context.Background(), "ip", args...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	dir = t.TempDir()
	server, id := labtest.Dropbear(t, dir, listen)
	serverLog = &strings.Builder{}
	server.Stdout, server.Stderr = serverLog, serverLog
	if err := ns.Start(server); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for deadline := time.Now().Add(2 * time.Second); hasChild(server.Process.Pid) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		_ = server.Process.Kill()
		_ = server.Wait()
	})
	return ns, dir, id, serverLog
}

// dialUntil dials addr from ns with d until it answers or wait has
// passed, and gives the connection or the last error.
func dialUntil(ns *lab.NS, d net.Dialer, addr string, wait time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(wait)
	for {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = d.Dial("tcp", addr)
			return err
		})
		if err == nil || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(50 * time.Millisecond)
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
