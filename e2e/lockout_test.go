package e2e

import (
	"context"
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
	srv := e.newSSHDDir(s.name, s.port)
	dir := srv.dir
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
	// sshd starts in well under a second on an idle machine, several on
	// a loaded one; one that never lets the client in fails at 20s.
	deadline := time.Now().Add(20 * time.Second)
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
	eachBackend(t, func(t *testing.T, b string) {
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

// loginFrom is sshd.login from another namespace, to an address that may
// carry a zone (fe80::1%eth0).
func (s *sshd) loginFrom(ns *lab.NS, addr netip.Addr) *session {
	t := s.e.t
	t.Helper()
	cmd := exec.Command("ssh", s.sshArgs(addr, "cat")...)
	sess := startSession(t, ns, cmd, "ssh")
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) // may be gone already
	if err := sess.alive(20 * time.Second); err != nil {         // see login
		t.Fatalf("ssh login to %s: %v", addr, err)
	}
	return sess
}

// canLoginFrom opens a new SSH connection from ns and runs true.
func (s *sshd) canLoginFrom(ns *lab.NS, addr netip.Addr) bool {
	s.e.t.Helper()
	return sshWorks(s.e.t, ns, s.sshArgs(addr, "true"))
}

// refused runs a moat command that must be refused for cutting SSH, and
// checks that the kernel and the file stayed as they were.
func (e *env) refused(wants []string, args ...string) string {
	e.t.Helper()
	kernel := e.kernelState()
	file, _ := os.ReadFile(e.conf)
	out, err := e.moat(args...)
	if exitCode(err) != 3 {
		e.t.Fatalf("moat %v was not refused (err %v):\n%s", args, err, out)
	}
	for _, w := range append([]string{"refusing to apply", "to keep it, first run: moat "}, wants...) {
		if !strings.Contains(out, w) {
			e.t.Errorf("refusal lacks %q:\n%s", w, out)
		}
	}
	if after := e.kernelState(); after != kernel {
		e.t.Errorf("kernel changed although refused")
	}
	if after, _ := os.ReadFile(e.conf); string(after) != string(file) {
		e.t.Errorf("policy file changed although refused:\n%s", after)
	}
	return out
}

// A socket-activated sshd (systemd-socket-activate listens, sshd -i
// serves each connection): the session is found by sshd's own socket,
// the port by the listener systemd holds for it.
func TestLockoutSocketActivated(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("systemd-socket-activate"); err != nil {
		t.Fatalf("systemd-socket-activate is not installed (systemd)")
	}
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			requireBackend(t, b)
			t.Parallel()
			e := newSSHEnv(t, b)
			s := sshdSetup{name: "sshd-activated", port: 2222, inetd: true,
				wrap: []string{"systemd-socket-activate", "-l", "2222", "-a", "--inetd"},
				conf: sshdCommon,
			}
			srv, conf := e.prepareSSHD(s)
			e.apply("default allow incoming\n")
			e.runSSHD(s, srv, conf, lab.ServerV4)
			sess, sess6 := srv.loginBoth()

			// systemd's socket is dual-stack: the IPv4 session is IPv4-mapped
			// in /proc/net/tcp6, and must be judged as IPv4.
			if out := e.refused([]string{"session 192.0.2.2:", "session [2001:db8::2]:", "→ 192.0.2.1:2222", "moat allow 2222/tcp"}, "default", "deny", "incoming"); strings.Contains(out, "::ffff:") {
				t.Errorf("an IPv4 session shown as IPv4-mapped:\n%s", out)
			}
			e.refused([]string{"session 192.0.2.2:"}, "prepend", "deny", "from", "192.0.2.0/24")
			// init sees the port systemd listens on for sshd.
			initOut := e.mustMoat("--dry-run", "--force", "--sshd-config", filepath.Join(e.dir, "none"), "init")
			if !strings.Contains(initOut, "allow 2222/tcp") {
				t.Errorf("init does not allow the activated port:\n%s", initOut)
			}
			assertAlive(t, "session", sess, sess6)
			// Allowed first, the same change goes through.
			e.mustMoat("allow", "2222/tcp")
			e.mustMoat("default", "deny", "incoming")
			if !srv.canLogin(lab.ServerV4) || !srv.canLogin(lab.ServerV6) {
				t.Errorf("no new login after the allowed change")
			}
		})
	}
}

// A rule on source ports cuts every reconnect from those ports, even when
// the live session's own port is not among them.
func TestLockoutSourcePorts(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		// The client's session comes from 50000-60999, outside the rule.
		e, srv, sess, sess6 := sessionsFromHighPorts(t, b)
		e.refused([]string{"session 192.0.2.2:", "session [2001:db8::2]:", "a reconnect from source port 32768 would be rejected by line 2"},
			"prepend", "reject", "proto", "tcp", "from", "any", "port", "32768:45000", "to", "any", "port", "22")
		// IANA's range (Windows, macOS clients) counts too.
		e.refused([]string{"source port 61000"}, "prepend", "deny", "proto", "tcp", "from", "any", "port", "61000:65535", "to", "any", "port", "22")
		// Ports no client uses as its source are fine.
		e.mustMoat("prepend", "deny", "proto", "tcp", "from", "any", "port", "1:1023", "to", "any", "port", "22")

		// The danger was real: forced through, a client whose source
		// port falls in the range cannot log in; the live sessions stay.
		expectForcedRejectCuts(t, e, srv, "32768:45000", "32768", "45000", sess, sess6)
	})
}

// sessionsFromHighPorts: a server (backend b) with sshd on port 22 that
// the policy allows, and a live session over IPv4 and one over IPv6 from
// a client whose source ports are 50000-60999 (the server's namespace has
// Linux's default range, 32768-60999).
func sessionsFromHighPorts(t *testing.T, b string) (e *env, srv *sshd, v4, v6 *session) {
	t.Helper()
	e = newSSHEnv(t, b)
	srv = e.startSSHD(22)
	e.apply("default deny incoming\nallow 22/tcp\n")
	if err := e.topo.Client.Sysctl("net/ipv4/ip_local_port_range", "50000 60999"); err != nil {
		t.Fatal(err)
	}
	v4, v6 = srv.loginBoth()
	return e, srv, v4, v6
}

// expectForcedRejectCuts forces through a rule rejecting SSH from the
// source ports ports ("from:to"), then checks that a client whose source
// ports are lo-hi (within them) cannot log in, over IPv4 nor IPv6, and
// that the live sessions stay.
func expectForcedRejectCuts(t *testing.T, e *env, srv *sshd, ports, lo, hi string, live ...*session) {
	t.Helper()
	e.mustMoat("--force", "prepend", "reject", "proto", "tcp", "from", "any", "port", ports, "to", "any", "port", "22")
	if err := e.topo.Client.Sysctl("net/ipv4/ip_local_port_range", lo+" "+hi); err != nil {
		t.Fatal(err)
	}
	if srv.canLogin(lab.ServerV4) || srv.canLogin(lab.ServerV6) {
		t.Errorf("a login from source port %s-%s got through the reject rule", lo, hi)
	}
	assertAlive(t, "live session", live...)
}

// linkLocal returns the IPv6 link-local address of dev in ns.
func linkLocal(t *testing.T, ns *lab.NS, dev string) netip.Addr {
	t.Helper()
	out, err := ns.Run(context.Background(), "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	f := strings.Fields(string(out))
	for i, w := range f {
		if w == "inet6" && i+1 < len(f) {
			return netip.MustParsePrefix(f[i+1]).Addr()
		}
	}
	t.Fatalf("no link-local address on %s:\n%s", dev, out)
	return netip.Addr{}
}

// A session over an IPv6 link-local address, on a server with several
// interfaces (every one with a route to fe80::/64): the session's
// interface is its socket's, so a rule on that interface is refused and a
// rule on the other is not.
func TestLockoutLinkLocal(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnvPorts(t, b, true, sshFreeTCP())
		srv := e.startSSHD(22)
		e.apply("default allow incoming\n")
		// The backend (behind the server's eth1) and the client (eth0)
		// both log in over link-local addresses.
		viaEth1 := linkLocal(t, e.topo.Server, "eth1").WithZone("eth0")
		viaEth0 := linkLocal(t, e.topo.Server, "eth0").WithZone("eth0")
		sess1 := srv.loginFrom(e.topo.Backend, viaEth1)
		out := e.refused([]string{"session [fe80::", "%eth1]:", "(it comes in on eth1)"},
			"prepend", "deny", "in", "on", "eth1", "to", "any", "port", "22", "proto", "tcp")
		if strings.Contains(out, "%eth0") {
			t.Errorf("the eth1 session was taken for eth0:\n%s", out)
		}
		// A rule on eth0 cuts no session yet: it applies.
		e.mustMoat("prepend", "deny", "in", "on", "eth0", "to", "any", "port", "22", "proto", "tcp")
		if err := sess1.alive(3 * time.Second); err != nil {
			t.Errorf("eth1 session cut: %v", err)
		}
		if !srv.canLoginFrom(e.topo.Backend, viaEth1) {
			t.Errorf("no new login over eth1")
		}
		// Now a client session over eth0's link-local address; the eth0
		// rule is in the way of its reconnect, so deleting...
		e.mustMoat("delete", "1")
		sess0 := srv.loginFrom(e.topo.Client, viaEth0)
		e.refused([]string{"%eth0]:", "(it comes in on eth0)"}, "prepend", "deny", "in", "on", "eth0", "to", "any", "port", "22", "proto", "tcp")
		assertAlive(t, "session", sess0, sess1)
	})
}

// More of the same class, each with a real sshd: an sshd on one address
// and port only (ListenAddress ADDR:PORT, its Port line unused), an
// interface wildcard, and SSH forwarded through the host, which is not the
// host's. (OpenSSH's own listeners are IPv6-only; IPv4-mapped sessions come
// from systemd's dual-stack sockets: TestLockoutSocketActivated.)
func TestLockoutMoreSessions(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnvPorts(t, b, true, sshFreeTCP())
		e.apply("default allow incoming\n")

		// One address, one port: 'Port 22' is unused when every
		// ListenAddress has its port.
		one := sshdSetup{name: "sshd-one", port: 2222, conf: func(dir string) string {
			return "Port 22\nListenAddress 192.0.2.1:2222\n" + sshdCommon(dir)
		}}
		srvOne, confOne := e.prepareSSHD(one)
		e.runSSHD(one, srvOne, confOne, lab.ServerV4)
		sessOne := srvOne.login(lab.ServerV4)
		e.refused([]string{"→ 192.0.2.1:2222", "moat insert 1 allow 2222/tcp"}, "prepend", "reject", "proto", "tcp", "to", "192.0.2.1", "port", "2222")
		e.refused([]string{"session 192.0.2.2:", "(it comes in on eth0)"}, "prepend", "deny", "in", "on", "eth+", "to", "any", "port", "2222", "proto", "tcp")
		// The sshd on one address is not reachable on the others: a rule
		// for the server's other address cuts no SSH session.
		e.mustMoat("prepend", "deny", "proto", "tcp", "to", "198.51.100.1", "port", "2222")
		initOut := e.mustMoat("--dry-run", "--force", "--sshd-config", confOne, "init")
		if !strings.Contains(initOut, "allow 2222/tcp") {
			t.Errorf("init misses 2222:\n%s", initOut)
		}

		// SSH from the client to the backend, forwarded by the server:
		// not a session of the server; a route rule is not refused for it.
		fwd := sshdSetup{name: "sshd-backend", port: 22, ns: e.topo.Backend, conf: func(dir string) string {
			return "Port 22\nListenAddress 0.0.0.0\nListenAddress ::\n" + sshdCommon(dir)
		}}
		srvFwd, confFwd := e.prepareSSHD(fwd)
		e.runSSHD(fwd, srvFwd, confFwd, lab.BackendV4)
		sessFwd := srvFwd.login(lab.BackendV4)
		e.mustMoat("route", "allow", "in", "on", "eth0", "out", "on", "eth1", "to", "198.51.100.2", "port", "22", "proto", "tcp")
		e.mustMoat("default", "deny", "routed")
		assertAlive(t, "session", sessOne, sessFwd)
		if !srvOne.canLogin(lab.ServerV4) || !srvFwd.canLogin(lab.BackendV4) {
			t.Errorf("a new login fails")
		}
	})
}

// Rule positions on the command line are plain numbers within bounds; a
// refused one changes nothing.
func TestRulePositionBounds(t *testing.T) {
	t.Parallel()
	conf := filepath.Join(t.TempDir(), "moat.conf")
	writeFile(t, conf, "allow 22/tcp\nallow 80/tcp\n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"insert", "0", "allow", "443/tcp"}, "cannot insert at position \"0\""},
		{[]string{"insert", "+1", "allow", "443/tcp"}, "cannot insert at position \"+1\""},
		{[]string{"insert", "0x1", "allow", "443/tcp"}, "cannot insert at position"},
		{[]string{"insert", "99999999999999999999", "allow", "443/tcp"}, "cannot insert at position"},
		{[]string{"insert", "18446744073709551617", "allow", "443/tcp"}, "cannot insert at position"},
		{[]string{"insert", "4", "allow", "443/tcp"}, "expected 1 to 2"},
		{[]string{"delete", "+1"}, "invalid rule"},
		{[]string{"delete", "0"}, "invalid rule number 0"},
		{[]string{"delete", "3"}, "expected 1 to 2"},
		{[]string{"delete", "18446744073709551617"}, "invalid rule number 18446744073709551617"},
	} {
		out, err := moatHost(t, conf, c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("moat %v: err %v, want %q:\n%s", c.args, err, c.want, out)
		}
	}
	if data, _ := os.ReadFile(conf); string(data) != "allow 22/tcp\nallow 80/tcp\n" {
		t.Errorf("file changed:\n%s", data)
	}
	if out, err := moatHost(t, conf, "insert", "2", "allow", "443/tcp"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if data, _ := os.ReadFile(conf); string(data) != "allow 22/tcp\nallow 443/tcp\nallow 80/tcp\n" {
		t.Errorf("insert 2:\n%s", data)
	}
}

// dropbear (small servers, appliances) is an SSH server too: a connection
// to it is protected like an OpenSSH session.
func TestLockoutDropbear(t *testing.T) {
	t.Parallel()
	for _, p := range []string{"dropbear", "dropbearkey"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is not installed (dropbear-bin)", p)
		}
	}
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			requireBackend(t, b)
			t.Parallel()
			e := newSSHEnv(t, b)
			dir := filepath.Join(e.dir, "dropbear")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			key := filepath.Join(dir, "host_ed25519")
			if out, err := exec.Command("dropbearkey", "-t", "ed25519", "-f", key).CombinedOutput(); err != nil {
				t.Fatalf("dropbearkey: %v\n%s", err, out)
			}
			cmd := exec.Command("dropbear", "-F", "-E", "-s", "-p", "2222", "-r", key, "-P", filepath.Join(dir, "pid"))
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := e.topo.Server.Start(cmd); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // gone already if it died
				_ = cmd.Wait()
			})
			e.apply("default allow incoming\n")
			// A connection to dropbear, held open before authenticating.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var conn interface{ Close() error }
			for {
				c, err := e.topo.Client.Dial(ctx, "192.0.2.1:2222")
				if err == nil {
					conn = c
					buf := make([]byte, 4)
					if _, err := c.Read(buf); err != nil || string(buf) != "SSH-" {
						t.Fatalf("dropbear banner: %q %v", buf, err)
					}
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("dropbear does not answer: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			t.Cleanup(func() { _ = conn.Close() })
			e.refused([]string{"session 192.0.2.2:", "→ 192.0.2.1:2222", "moat allow 2222/tcp"}, "default", "deny", "incoming")
			out := e.mustMoat("--dry-run", "--force", "--sshd-config", filepath.Join(e.dir, "none"), "init")
			if !strings.Contains(out, "allow 2222/tcp") {
				t.Errorf("init misses dropbear's port:\n%s", out)
			}
		})
	}
}
