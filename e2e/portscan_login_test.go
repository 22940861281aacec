package e2e

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// An admin who logs in over SSH after the last apply, with the guard
// running, then probes closed ports is not banned by the port scan trap
// (the guard puts the login's address in the trap's login set), and the
// session stays up; another client scanning is banned; IPv4 and IPv6,
// both backends.
func TestPortscanSparesLoginAfterApply(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e, srv, logFile := trapGuardEnv(t, b) // -v: the guard logs each exemption
		// Logged in after the apply: not in the protected sets.
		s4 := srv.login(lab.ServerV4) // from lab.ClientV4
		s6 := srv.login(lab.ServerV6) // from lab.ClientV6
		e.waitExempted(logFile, lab.ClientV4, lab.ClientV6)
		e.nmapScan(lab.ClientV4, lab.ServerV4)
		e.nmapScan(lab.ClientV6, lab.ServerV6)
		if bans := e.bans(); len(bans) != 0 {
			t.Errorf("the admin who logged in after the apply was banned: %+v\n%s", bans, e.guardLog())
		}
		assertAlive(t, "session", s4, s6)
		// The guard's additions are not a change made outside moat.
		noDrift(t, e, "a login was exempted")
		// Another client scanning is banned.
		other4, other6 := netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("2001:db8::3")
		e.nmapScan(other4, lab.ServerV4)
		e.nmapScan(other6, lab.ServerV6)
		bans := e.bans()
		for _, a := range []netip.Addr{other4, other6} {
			if _, ok := bans[a.String()]; !ok {
				t.Errorf("scanner %s was not banned: %+v", a, bans)
			}
		}
	})
}

// waitExempted waits until the guard (run with -v) has logged the
// exemption of each address from the port scan trap.
func (e *env) waitExempted(logFile string, addrs ...netip.Addr) {
	e.t.Helper()
	exempted := func() bool {
		seen := map[string]bool{}
		for _, l := range strings.Split(e.guardLog(), "\n") {
			if _, rest, ok := strings.Cut(l, `msg="login exempted from the port scan trap" `); ok {
				for _, f := range strings.Fields(rest) {
					seen[f] = true
				}
			}
		}
		for _, a := range addrs {
			if !seen["addr="+a.String()] {
				return false
			}
		}
		return true
	}
	for end := time.Now().Add(10 * time.Second); !exempted() && time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
	}
	if !exempted() {
		data, _ := os.ReadFile(logFile)
		e.t.Fatalf("the guard did not exempt the logins %v:\n%s\nsshd:\n%s", addrs, e.guardLog(), data)
	}
}
