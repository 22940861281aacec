package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// sshdSetup is a real sshd whose configuration the test writes whole.
type sshdSetup struct {
	name string // directory name under the env's dir
	port uint16 // the port the client logs in on
	// conf returns sshd_config, given the directory with the host key
	// ("host") and authorized_keys.
	conf func(dir string) string
	// files are more files under dir (sshd_config.d/port.conf, ...).
	files map[string]string
	// wrap runs sshd through another program (socket activation); the
	// arguments after it are sshd's.
	wrap []string
	// inetd: sshd -i (one process a connection) instead of -D.
	inetd bool
	// ns is where it runs (default the server).
	ns *lab.NS
}

// sshdCommon are the lines every test sshd needs besides its ports.
func sshdCommon(dir string) string {
	return fmt.Sprintf(`HostKey %s/host
PidFile %s/sshd.pid
AuthorizedKeysFile %s/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
MaxStartups 100:30:200
LoginGraceTime 20
`, dir, dir, dir)
}

// prepareSSHD writes the keys and configuration of s and returns the sshd
// (not started) and its config path.
func (e *env) prepareSSHD(s sshdSetup) (*sshd, string) {
	e.t.Helper()
	requireSSH(e.t)
	dir := filepath.Join(e.dir, s.name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		e.t.Fatal(err)
	}
	srv := &sshd{e: e, dir: dir, port: s.port, key: filepath.Join(dir, "client")}
	for _, k := range []string{"host", "client"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			e.t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	pub, err := os.ReadFile(srv.key + ".pub")
	if err != nil {
		e.t.Fatal(err)
	}
	writeFile(e.t, filepath.Join(dir, "authorized_keys"), string(pub))
	for name, text := range s.files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			e.t.Fatal(err)
		}
		writeFile(e.t, filepath.Join(dir, name), strings.ReplaceAll(text, "@DIR@", dir))
	}
	conf := filepath.Join(dir, "sshd_config")
	writeFile(e.t, conf, s.conf(dir))
	return srv, conf
}

// runSSHD starts a prepared sshd and waits until port answers from the
// client over IPv4 (or v6 when the address is IPv6).
func (e *env) runSSHD(s sshdSetup, srv *sshd, conf string, probe netip.Addr) {
	e.t.Helper()
	args := []string{"-D", "-e", "-f", conf}
	if s.inetd {
		args = []string{"-i", "-e", "-f", conf}
	}
	name := "/usr/sbin/sshd"
	if len(s.wrap) > 0 {
		name, args = s.wrap[0], append(append(append([]string{}, s.wrap[1:]...), "/usr/sbin/sshd"), args...)
	}
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	ns := s.ns
	if ns == nil {
		ns = e.topo.Server
	}
	if err := ns.Start(cmd); err != nil {
		e.t.Fatalf("start %s: %v", name, err)
	}
	e.t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // gone already if it died
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(5 * time.Second)
	for !srv.canLogin(probe) {
		if time.Now().After(deadline) {
			e.t.Fatalf("sshd (%s) does not let the client in on port %d", s.name, s.port)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// brokenSaved makes the saved ruleset unreadable, so restore fails closed.
func (e *env) brokenSaved() {
	e.t.Helper()
	if err := os.MkdirAll(e.stateDir(), 0o700); err != nil {
		e.t.Fatal(err)
	}
	writeFile(e.t, filepath.Join(e.stateDir(), "saved.json"), "{not json")
}

// Fail-closed restore keeps the SSH port that only an Include'd file of
// sshd_config names: at boot (sshd not running yet) and with a live session.
func TestFailClosedFollowsSSHDInclude(t *testing.T) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			requireBackend(t, b)
			t.Parallel()
			e := newSSHEnv(t, b)
			s := sshdSetup{name: "sshd-include", port: 2222,
				conf: func(dir string) string {
					return "Include " + dir + "/sshd_config.d/*.conf\nListenAddress 0.0.0.0\nListenAddress ::\n" + sshdCommon(dir)
				},
				files: map[string]string{"sshd_config.d/port.conf": "# moved\nPort 2222\n"},
			}
			srv, conf := e.prepareSSHD(s)

			// Boot: sshd is not running yet; only its configuration knows.
			e.brokenSaved()
			out, err := e.moat("--sshd-config", conf, "restore")
			if err == nil || !strings.Contains(out, "fail-closed") || !strings.Contains(out, "allow 2222/tcp") {
				t.Fatalf("restore did not fail closed with 2222 open (err %v):\n%s", err, out)
			}
			e.runSSHD(s, srv, conf, lab.ServerV4)
			e.expect(false, "client tcp 192.0.2.1:80 timeout", "client tcp [2001:db8::1]:80 timeout")

			// Again with a live session on 2222 and sshd's config moved away:
			// the port sshd really listens on is kept.
			sess := srv.login(lab.ServerV6)
			e.brokenSaved()
			out, err = e.moat("--sshd-config", filepath.Join(e.dir, "none"), "restore")
			if err == nil || !strings.Contains(out, "allow 2222/tcp") {
				t.Fatalf("restore (err %v):\n%s", err, out)
			}
			if err := sess.alive(3 * time.Second); err != nil {
				t.Errorf("live 2222 session cut by fail-closed: %v", err)
			}
			if !srv.canLogin(lab.ServerV4) || !srv.canLogin(lab.ServerV6) {
				t.Errorf("no new login on 2222 after fail-closed")
			}
		})
	}
}

// moat's edits keep a 0600 policy file 0600 and a symlinked one linked.
func TestEditKeepsFileModeAndLink(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	real := filepath.Join(dir, "real.conf")
	writeFile(t, real, "default deny incoming\nallow 22/tcp\n")
	if err := os.Chmod(real, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "moat.conf")
	if err := os.Symlink("real.conf", link); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"allow", "80/tcp"}, {"delete", "1"}, {"default", "reject", "incoming"}, {"insert", "1", "deny", "from", "203.0.113.0/24"}} {
		if out, err := moatHost(t, link, args...); err != nil {
			t.Fatalf("moat %v: %v\n%s", args, err, out)
		}
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the symlink was replaced by a file")
	}
	fi, _ := os.Stat(real)
	data, _ := os.ReadFile(real)
	if fi.Mode().Perm() != 0o600 || string(data) != "default reject incoming\ndeny from 203.0.113.0/24\nallow 80/tcp\n" {
		t.Errorf("mode %v, contents:\n%s", fi.Mode().Perm(), data)
	}
}
