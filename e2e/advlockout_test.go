package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// 'moat restore' of a good saved ruleset that would cut the live session
// (on 2222, which the saved ruleset lacks) is refused like any change: exit
// 3, nothing changed, port 80 still open. It used to load the fail-closed
// ruleset instead, dropping every other service and calling the saved
// ruleset unreadable.
func TestRestoreRefusedByLockout(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newSSHEnv(t, b)
		srv := e.startSSHD(2222)
		e.apply("default deny incoming\nallow 22/tcp\nallow 2222/tcp\nallow 80/tcp\n")
		sess, sess6 := srv.loginBoth()
		savedPath := filepath.Join(e.stateDir(), "saved.json")
		data, err := os.ReadFile(savedPath)
		if err != nil {
			t.Fatal(err)
		}
		var saved map[string]any
		if err := json.Unmarshal(data, &saved); err != nil {
			t.Fatal(err)
		}
		saved["policy"] = "default deny incoming\nallow 22/tcp\nallow 80/tcp\n"
		data, err = json.Marshal(saved)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, savedPath, string(data))
		e.refused([]string{"session 192.0.2.2:", "session [2001:db8::2]:", "moat allow 2222/tcp"}, "restore")
		if st := e.mustMoat("status"); strings.Contains(st, "FAIL-CLOSED") {
			t.Errorf("status after a refused restore:\n%s", st)
		}
		e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open")
		assertAlive(t, "live session", sess, sess6)
	})
}

// --dry-run says what the real command would do: refuse a change that
// cuts the live session (exit 3, the same message), not "Rule updated" and
// exit 0. With --force it warns; nothing changes either way.
func TestDryRunRunsLockoutCheck(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newSSHEnv(t, b)
		srv := e.startSSHD(22)
		e.apply("default deny incoming\nallow 22/tcp\n")
		sess := srv.login(lab.ServerV6)
		e.refused([]string{"session [2001:db8::2]:", "would be dropped by line 2: deny 22/tcp"}, "--dry-run", "deny", "22/tcp")
		e.refused([]string{"would be dropped by line 2: deny from 2001:db8::/32"}, "--dry-run", "insert", "1", "deny", "from", "2001:db8::/32")
		e.refused([]string{"would be dropped by line 1: default deny incoming"}, "--dry-run", "delete", "1")
		kernel := e.kernelState()
		out, err := e.moat("--dry-run", "--force", "deny", "22/tcp")
		if err != nil || !strings.Contains(out, "--force would apply although it cuts SSH access") || !strings.Contains(out, "dry run") {
			t.Errorf("--dry-run --force (err %v):\n%s", err, out)
		}
		// enable --dry-run of a file that cuts the session.
		writeFile(t, e.conf, "default deny incoming\nallow 80/tcp\n")
		out, err = e.moat("--dry-run", "enable")
		if exitCode(err) != 3 || !strings.Contains(out, "refusing to apply") {
			t.Errorf("enable --dry-run of a cutting policy (err %v):\n%s", err, out)
		}
		if e.kernelState() != kernel {
			t.Errorf("a dry run changed the kernel")
		}
		if err := sess.alive(3 * time.Second); err != nil {
			t.Errorf("live session cut: %v", err)
		}
	})
}

// A multi-homed server with source-based policy routing (an uplink per
// address): the main table sends replies to the admin out of eth0, but the
// admin's session runs over eth1, as the rule for the server's eth1
// address routes it. The session's interface is the route back from the
// address it connected to: a rule on eth1 is refused; before, the main
// table's eth0 was taken and the rule cut every reconnect.
func TestLockoutPolicyRouting(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnvPorts(t, b, true, sshFreeTCP())
		srv := e.startSSHD(22)
		e.apply("default deny incoming\nallow 22/tcp\n")
		for _, cmd := range [][]string{
			{"ip", "route", "add", "198.51.100.2/32", "via", "192.0.2.2", "dev", "eth0"},
			{"ip", "rule", "add", "from", "198.51.100.1", "lookup", "100"},
			{"ip", "route", "add", "198.51.100.0/24", "dev", "eth1", "table", "100"},
			{"ip", "-6", "route", "add", "2001:db8:1::2/128", "via", "2001:db8::2", "dev", "eth0"},
			{"ip", "-6", "rule", "add", "from", "2001:db8:1::1", "lookup", "100"},
			{"ip", "-6", "route", "add", "2001:db8:1::/64", "dev", "eth1", "table", "100"},
		} {
			e.run("server", cmd...)
		}
		if out := e.run("server", "ip", "route", "get", "198.51.100.2"); !strings.Contains(out, "dev eth0") {
			t.Fatalf("the main table should route to the admin over eth0:\n%s", out)
		}
		sess := srv.loginFrom(e.topo.Backend, lab.RouterV4)
		sess6 := srv.loginFrom(e.topo.Backend, lab.RouterV6)
		e.refused([]string{"session 198.51.100.2:", "session [2001:db8:1::2]:", "(it comes in on eth1)"},
			"prepend", "deny", "in", "on", "eth1", "to", "any", "port", "22", "proto", "tcp")
		// eth0 carries no session: that rule applies.
		e.mustMoat("prepend", "deny", "in", "on", "eth0", "to", "any", "port", "22", "proto", "tcp")
		if !srv.canLoginFrom(e.topo.Backend, lab.RouterV4) || !srv.canLoginFrom(e.topo.Backend, lab.RouterV6) {
			t.Errorf("no new login over eth1 with a rule on eth0")
		}
		// The danger was real: forced through, the eth1 rule stops
		// every new login of the admin.
		e.mustMoat("delete", "1")
		e.mustMoat("--force", "prepend", "deny", "in", "on", "eth1", "to", "any", "port", "22", "proto", "tcp")
		if srv.canLoginFrom(e.topo.Backend, lab.RouterV4) || srv.canLoginFrom(e.topo.Backend, lab.RouterV6) {
			t.Errorf("a login over eth1 got through 'deny in on eth1'")
		}
		assertAlive(t, "live session", sess, sess6)
	})
}

// The admin comes in through a reverse tunnel the server opened (ssh -N
// -R to a bastion, here the client's sshd): 'default deny outgoing' leaves
// the live tunnel up (conntrack) but would stop it from ever being opened
// again, so moat names it, with the rule to add.
func TestOutgoingTunnelWarned(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newSSHEnv(t, b)
		s := sshdSetup{name: "bastion", port: 22, ns: e.topo.Client,
			conf: func(dir string) string {
				return "Port 22\nListenAddress 0.0.0.0\nListenAddress ::\n" + sshdCommon(dir)
			}}
		bastion, conf := e.prepareSSHD(s)
		e.runSSHD(s, bastion, conf, lab.ClientV4)
		e.apply("default deny incoming\n")
		for _, addr := range []netip.Addr{lab.ClientV4, lab.ClientV6} {
			cmd := exec.Command("ssh", append([]string{"-N", "-R", "2200:localhost:22"}, bastion.sshArgs(addr)...)...)
			if err := e.topo.Server.Start(cmd); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		}
		deadline := time.Now().Add(5 * time.Second)
		for strings.Count(e.run("server", "ss", "-tn", "state", "established"), ":22 ") < 2 {
			if time.Now().After(deadline) {
				t.Fatalf("the tunnels did not come up:\n%s", e.run("server", "ss", "-tnp"))
			}
			time.Sleep(50 * time.Millisecond)
		}
		out := e.mustMoat("default", "deny", "outgoing")
		for _, w := range []string{"SSH connection to 192.0.2.2:22", "SSH connection to [2001:db8::2]:22", "moat allow out to 192.0.2.2 port 22 proto tcp"} {
			if !strings.Contains(out, w) {
				t.Errorf("no warning %q:\n%s", w, out)
			}
		}
		// The warning is true: the server cannot open it again.
		if bastion.canLoginFrom(e.topo.Server, lab.ClientV4) || bastion.canLoginFrom(e.topo.Server, lab.ClientV6) {
			t.Errorf("a new SSH connection got out through 'default deny outgoing'")
		}
		e.mustMoat("allow", "out", "to", "192.0.2.2", "port", "22", "proto", "tcp")
		e.mustMoat("allow", "out", "to", "2001:db8::2", "port", "22", "proto", "tcp")
		if !bastion.canLoginFrom(e.topo.Server, lab.ClientV4) || !bastion.canLoginFrom(e.topo.Server, lab.ClientV6) {
			t.Errorf("the suggested rule does not let the tunnel out")
		}
		if out := e.mustMoat("reload"); strings.Contains(out, "SSH connection to") {
			t.Errorf("warned although allowed:\n%s", out)
		}
	})
}

// moat in a PID namespace of its own (as in a container with the host's
// network) sees none of sshd's processes; it used to find no session and
// let 'delete allow 22/tcp' through. Connections to port 22 count then.
func TestLockoutSSHDNotVisible(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newSSHEnv(t, b)
		srv := e.startSSHD(22)
		e.apply("default deny incoming\nallow 22/tcp\n")
		sess, sess6 := srv.loginBoth()
		kernel := e.kernelState()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args := []string{"--pid", "--fork", "--mount-proc", moatBin, "--config", e.conf, "--backend", b, "--state-dir", e.stateDir(), "delete", "allow", "22/tcp"}
		out, err := e.topo.Server.Run(ctx, "unshare", args...)
		if !strings.Contains(string(out), "refusing to apply") || !strings.Contains(string(out), "session 192.0.2.2:") ||
			!strings.Contains(string(out), "session [2001:db8::2]:") || !strings.Contains(string(out), "not visible") {
			t.Errorf("moat in its own PID namespace was not refused (err %v):\n%s", err, out)
		}
		if e.kernelState() != kernel {
			t.Errorf("kernel changed although refused")
		}
		assertAlive(t, "live session", sess, sess6)
		if !srv.canLogin(lab.ServerV4) || !srv.canLogin(lab.ServerV6) {
			t.Errorf("no new login")
		}
	})
}

// A NAT between the admin and the server may give a reconnect any
// unprivileged source port, outside every client's own range: a rule on
// 1024-32767 is refused; forced through, a client whose port lands there
// (as a NAT maps it) cannot log in.
func TestLockoutNATSourcePorts(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e, srv, sess, sess6 := sessionsFromHighPorts(t, b)
		e.refused([]string{"session 192.0.2.2:", "session [2001:db8::2]:", "a reconnect from source port 1024 would be rejected by line 2"},
			"prepend", "reject", "proto", "tcp", "from", "any", "port", "1024:32767", "to", "any", "port", "22")
		expectForcedRejectCuts(t, e, srv, "1024:32767", "20000", "20100", sess, sess6)
	})
}

// The admin reaches a host behind this one through it (SSH routed by the
// server, as a jump to an internal host): 'default deny routed' leaves the
// live connection up (conntrack) but would cut the next one, so moat names
// it, with the route rule to add.
func TestForwardedSSHWarned(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnvPorts(t, b, true, sshFreeTCP())
		s := sshdSetup{name: "inside", port: 22, ns: e.topo.Backend,
			conf: func(dir string) string {
				return "Port 22\nListenAddress 0.0.0.0\nListenAddress ::\n" + sshdCommon(dir)
			}}
		inside, conf := e.prepareSSHD(s)
		e.runSSHD(s, inside, conf, lab.BackendV4)
		e.apply("default deny incoming\nallow 22/tcp\n")
		sess := inside.login(lab.BackendV4)
		sess6 := inside.login(lab.BackendV6)
		out := e.mustMoat("default", "deny", "routed")
		for _, w := range []string{"routes from 192.0.2.2 to 198.51.100.2:22", "routes from 2001:db8::2 to [2001:db8:1::2]:22",
			"moat route allow proto tcp from 192.0.2.2 to 198.51.100.2 port 22"} {
			if !strings.Contains(out, w) {
				t.Errorf("no warning %q:\n%s", w, out)
			}
		}
		// The warning is true: no new connection gets through.
		if inside.canLogin(lab.BackendV4) || inside.canLogin(lab.BackendV6) {
			t.Errorf("a routed SSH login got through 'default deny routed'")
		}
		assertAlive(t, "live routed session", sess, sess6)
		e.mustMoat("route", "allow", "proto", "tcp", "from", "192.0.2.2", "to", "198.51.100.2", "port", "22")
		e.mustMoat("route", "allow", "proto", "tcp", "from", "2001:db8::2", "to", "2001:db8:1::2", "port", "22")
		if !inside.canLogin(lab.BackendV4) || !inside.canLogin(lab.BackendV6) {
			t.Errorf("the suggested route rules do not let SSH through")
		}
		if out := e.mustMoat("reload"); strings.Contains(out, "routes from") {
			t.Errorf("warned although allowed:\n%s", out)
		}
	})
}
