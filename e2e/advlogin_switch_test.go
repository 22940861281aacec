package e2e

import (
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// An admin who logged in after the last apply is spared by the port scan
// trap for a day (the guard puts the address in the login sets). A change
// of backend (nftables <-> iptables) loaded the new backend with empty
// login sets: the admin, logged out since, probing a few closed ports
// from the same address, was banned by the kernel. The login sets go
// over with the ban sets (their time left). Both directions, IPv4 and
// IPv6.
func TestPortscanLoginSurvivesBackendSwitch(t *testing.T) {
	eachBackendSwitch(t, func(t *testing.T, from, to string) {
		e, srv, logFile := trapGuardEnv(t, from)
		// Logged in, exempted, logged out: the switch's protected sets do
		// not hold them.
		loginExemptedThenOut(e, srv, logFile)
		e.backend = to
		if out := e.mustMoat("enable"); !strings.Contains(out, "Backend changed") {
			t.Fatalf("no change of backend:\n%s", out)
		}
		expectScanNotBanned(t, e, "the admin who logged in before the change of backend was banned by the trap after it")
		noDrift(t, e, "the exemptions were carried")
	})
}

// The same for a login made while a --confirm change waits: the guard
// exempts it in the backend the change loaded; the rollback restored the
// snapshot of before (its login sets as they were then) and the
// exemption was lost. A change of backend both ways, and a change that
// keeps the backend.
func TestPortscanLoginSurvivesRollback(t *testing.T) {
	pairs := [][2]string{{"nftables", "iptables"}, {"iptables", "nftables"}, {"nftables", "nftables"}, {"iptables", "iptables"}}
	eachBackendPair(t, pairs, func(t *testing.T, from, to string) {
		e, srv, logFile := trapGuardEnv(t, from)
		e.backend = to
		if err := os.WriteFile(e.conf, []byte(trapPolicy+"allow 443/tcp\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		e.mustMoat("enable", "--confirm", "10m", "--no-wait")
		loginExemptedThenOut(e, srv, logFile)
		e.mustMoat("rollback")
		expectScanNotBanned(t, e, "the admin who logged in while the change waited was banned by the trap after the rollback")
		noDrift(t, e, "the exemptions were carried")
	})
}

// loginExemptedThenOut: the admin logs in over SSH from lab.ClientV4 and
// lab.ClientV6, waits until the guard has exempted both addresses from
// the port scan trap, and logs out.
func loginExemptedThenOut(e *env, srv *sshd, logFile string) {
	e.t.Helper()
	s4 := srv.login(lab.ServerV4)
	s6 := srv.login(lab.ServerV6)
	e.waitExempted(logFile, lab.ClientV4, lab.ClientV6)
	s4.kill()
	s6.kill()
	time.Sleep(300 * time.Millisecond)
}

// expectScanNotBanned: the admin probes closed ports from lab.ClientV4
// and lab.ClientV6, and the trap bans no one (what: who was banned).
func expectScanNotBanned(t *testing.T, e *env, what string) {
	t.Helper()
	e.nmapScan(lab.ClientV4, lab.ServerV4)
	e.nmapScan(lab.ClientV6, lab.ServerV6)
	if bans := e.bans(); len(bans) != 0 {
		t.Errorf("%s: %+v", what, bans)
	}
}

// noDrift: status --json sees no change made outside moat (the guard's
// exemptions, carried or added, are moat's own) after what happened.
func noDrift(t *testing.T, e *env, after string) {
	t.Helper()
	var rep struct {
		KernelChanged []string `json:"kernel_changed"`
	}
	out := e.mustMoat("status", "--json")
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.KernelChanged) != 0 {
		t.Errorf("status sees drift after %s: %v\n%s", after, err, out)
	}
}

// The port scan trap's bans (made by the kernel, without a comment) go
// over a change of backend like the guard's: the scanner stays banned in
// the new backend, real packets dropped, its reason still the trap's.
// Both directions, IPv4 and IPv6. (Only a trap ban made in the instant
// between the switch's read of the old sets and their removal is lost:
// docs/design.md.)
func TestPortscanBansSurviveBackendSwitch(t *testing.T) {
	eachBackendSwitch(t, func(t *testing.T, from, to string) {
		e := newEnv(t, from, false)
		policy := "default deny incoming\nallow 80/tcp\nguard portscan ports 10 within 60s bantime 1h\n"
		e.apply(policy)
		e.nmapScan(netip.MustParseAddr("192.0.2.3"), lab.ServerV4)
		e.nmapScan(netip.MustParseAddr("2001:db8::3"), lab.ServerV6)
		check := func(when string) {
			t.Helper()
			bans := e.bans()
			for _, a := range []string{"192.0.2.3", "2001:db8::3"} {
				if ban, ok := bans[a]; !ok || ban.Reason != "portscan (kernel trap)" {
					t.Errorf("%s: scanner %s not banned with the trap's reason: %+v", when, a, bans)
				}
			}
			e.expect(false,
				"client/192.0.2.3 tcp 192.0.2.1:80 timeout",
				"client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
				"client tcp 192.0.2.1:80 open",
				"client tcp [2001:db8::1]:80 open")
		}
		check("before the switch")
		e.backend = to
		if out := e.mustMoat("enable"); !strings.Contains(out, "Backend changed") {
			t.Fatalf("no change of backend:\n%s", out)
		}
		check("after the switch")
	})
}

// trapPolicy turns on the guard and the port scan trap.
const trapPolicy = "default deny incoming\nallow 22/tcp\nallow 80/tcp\nguard sshd\nguard portscan ports 5 within 60s bantime 1h\n"

// trapGuardEnv is a server with a real sshd, trapPolicy applied with
// backend, and the guard following sshd's log (-v: it logs each
// exemption).
func trapGuardEnv(t *testing.T, backend string) (*env, *sshd, string) {
	t.Helper()
	return guardedSSHEnv(t, backend, verboseSSHD, trapPolicy, "-v")
}

// guardedSSHEnv is a server (backend b) with a real sshd (sshdExtra: its
// config lines) logging to a file, policy applied, and the guard
// following that log (guardArgs: more of its flags); it returns the
// sshd and the log file.
func guardedSSHEnv(t *testing.T, b, sshdExtra, policy string, guardArgs ...string) (*env, *sshd, string) {
	t.Helper()
	e := newSSHEnv(t, b)
	srv, logFile := e.loggedSSHD(sshdExtra)
	e.apply(policy)
	e.startGuard(append([]string{"--log-file", logFile}, guardArgs...)...)
	return e, srv, logFile
}
