package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/labtest"
)

// startDropbear runs dropbear on port 2222 of the server, with root's
// authorized_keys read from a mount namespace of its own where /root is
// the test's folder (the host's /root is never touched), and returns the
// client's key.
func (e *env) startDropbear() (key string) {
	t := e.t
	t.Helper()
	cmd, key := labtest.Dropbear(t, filepath.Join(e.dir, "dropbear"), "2222")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.topo.Server.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		killDescendants(cmd.Process.Pid)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // gone already if it died
		_ = cmd.Wait()
	})
	return key
}

// dropbearLogin logs in to the server's dropbear from the client and
// runs cat, as sshd.login does with OpenSSH.
func (e *env) dropbearLogin(key string) *session {
	t := e.t
	t.Helper()
	var sess *session
	deadline := time.Now().Add(20 * time.Second)
	for {
		cmd := exec.Command("dbclient", "-y", "-i", key, "-p", "2222", "root@"+lab.ServerV4.String(), "cat")
		cmd.Env = append(os.Environ(), "HOME="+filepath.Dir(key))
		sess = startSession(t, e.topo.Client, cmd, "dbclient")
		if err := sess.alive(5 * time.Second); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("dropbear login: %v", err)
		}
		sess.kill() // dropbear not listening yet
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(sess.kill)
	return sess
}

// The guard never bans the client of a logged-in dropbear session (its
// ban would drop the live flow before conntrack); it still bans another
// address for the same lines.
func TestGuardSparesDropbearSession(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e, key, logFile := dropbearGuardEnv(t, b)
		admin := e.dropbearLogin(key) // from lab.ClientV4
		e.startGuard("--log-file", logFile)
		failFromAdminAndOther(t, e, logFile)
		if _, ok := e.bans()[lab.ClientV4.String()]; ok {
			t.Errorf("the dropbear admin's address was banned: %v", e.bans())
		}
		if err := admin.alive(2 * time.Second); err != nil {
			t.Fatalf("the admin's dropbear session: %v", err)
		}
		e.expectAdminBanRefused()
	})
}

// The same for a dropbear session with no shell and no command, only a
// remote forward (dbclient -N -R): dropbear forks no child for it, and
// the guard used to ban its client, cutting the tunnel. Its forward's
// listener shows it logged in: the guard refuses to ban it and the
// tunnel still carries traffic (real packets through the forward), while
// another address is banned for the same lines.
func TestGuardSparesDropbearForwardOnly(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e, key, logFile := dropbearGuardEnv(t, b)
		// The forward's target, on the client: echoes a line.
		target := loopbackListener(t, e.topo.Client)
		t.Cleanup(func() { _ = target.Close() })
		go func() {
			for {
				c, err := target.Accept()
				if err != nil {
					return
				}
				go func() {
					defer func() { _ = c.Close() }()
					line, _ := bufio.NewReader(c).ReadString('\n')
					_, _ = io.WriteString(c, line)
				}()
			}
		}()
		port := target.Addr().(*net.TCPAddr).Port
		cmd := exec.Command("dbclient", "-y", "-N", "-i", key, "-p", "2222",
			"-R", fmt.Sprintf("127.0.0.1:2400:127.0.0.1:%d", port), "root@"+lab.ServerV4.String())
		cmd.Env = append(os.Environ(), "HOME="+filepath.Dir(key))
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		// echo sends a line through the tunnel from the server's side.
		echo := func() error {
			return e.topo.Server.Do(func() error {
				c, err := net.DialTimeout("tcp", "127.0.0.1:2400", time.Second)
				if err != nil {
					return err
				}
				defer func() { _ = c.Close() }()
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				if _, err := io.WriteString(c, "ping\n"); err != nil {
					return err
				}
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil && line != "ping\n" {
					err = fmt.Errorf("echo %q", line)
				}
				return err
			})
		}
		started := false
		for deadline := time.Now().Add(20 * time.Second); ; {
			if !started {
				if err := e.topo.Client.Start(cmd); err != nil {
					t.Fatalf("dbclient: %v", err)
				}
				started = true
				t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			}
			err := echo()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the tunnel does not carry: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		e.startGuard("--log-file", logFile)
		failFromAdminAndOther(t, e, logFile)
		if _, ok := e.bans()[lab.ClientV4.String()]; ok {
			t.Errorf("the address of the forward-only dropbear session was banned: %v", e.bans())
		}
		if err := echo(); err != nil {
			t.Errorf("the tunnel no longer carries: %v", err)
		}
		e.expectAdminBanRefused()
	})
}

// dropbearGuardEnv is a server (backend b) running dropbear on port
// 2222 with a policy allowing it and guarding sshd (two failures ban);
// it returns the client's key and the log file for the guard to follow.
func dropbearGuardEnv(t *testing.T, b string) (e *env, key, logFile string) {
	t.Helper()
	e = newSSHEnv(t, b)
	key = e.startDropbear()
	logFile = filepath.Join(e.dir, "auth.log")
	e.apply("default deny incoming\nallow 2222/tcp\nguard sshd maxretry 2 findtime 10m bantime 1m weak 1\n")
	return e, key, logFile
}

// failFromAdminAndOther writes three failed passwords from the admin's
// address (lab.ClientV4) and three from another (lab.ClientAlt[1]) in
// the log the guard follows, waits until the other address is banned,
// then a little more for every line to be read.
func failFromAdminAndOther(t *testing.T, e *env, logFile string) {
	t.Helper()
	var lines []string
	for i := 0; i < 3; i++ {
		lines = append(lines,
			fmt.Sprintf("Failed password for root from %s port %d ssh2", lab.ClientV4, 6000+i), // the admin
			fmt.Sprintf("Failed password for root from %s port %d ssh2", lab.ClientAlt[1], 7000+i))
	}
	appendLines(t, logFile, lines...)
	waitFor(t, 5*time.Second, "the other address not banned", func() bool { _, ok := e.bans()[lab.ClientAlt[1].String()]; return ok })
	time.Sleep(300 * time.Millisecond) // every line read
}

// expectAdminBanRefused: the guard logged that it refused to ban the
// admin's address (lab.ClientV4) for its logged-in SSH session.
func (e *env) expectAdminBanRefused() {
	e.t.Helper()
	if log := e.guardLog(); !strings.Contains(log, "it has a logged-in SSH session here") || !strings.Contains(log, "address="+lab.ClientV4.String()) {
		e.t.Errorf("no refusal logged for the admin:\n%s", log)
	}
}
