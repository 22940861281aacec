package e2e

import (
	"strings"
	"testing"
)

// A source port list with one destination port (or range), and the other
// pairs of port forms, on both backends, IPv4 and IPv6, incoming,
// outgoing and routed: the iptables backend rendered
// "-m multiport --sports 443,1443 --dport 22", which iptables-restore
// read as multiport's --dports (an abbreviation) and refused, so no
// such policy could be applied. Real packets from the listed source
// ports pass, from others not; the full drift check (fingerprint
// removed, the kernel compared with a scratch load) finds nothing.
// Source ports are ones no listener of the topology holds.
func TestSourcePortListToOnePort(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		t.Run("input output", func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, b, false)
			e.apply(`default deny incoming
default deny outgoing
allow from ::/0 port 443,1443 to any port 22 proto tcp
allow from 0.0.0.0/0 port 443,1443 to any port 22 proto tcp
allow from any port 5353,5354 to any port 6000:6007 proto udp
allow from any port 1234 to any port 5432,8080 proto tcp
allow from any port 2000,2001 to any port 443,2222 proto tcp
allow out from any port 3000,3001 to any port 25 proto tcp
allow out from any port 3100:3200,3300 to any port 53 proto udp
`)
			e.expect(false,
				"client/192.0.2.2:443 tcp 192.0.2.1:22 open", "client/192.0.2.3:1443 tcp 192.0.2.1:22 open",
				"client/192.0.2.4:1500 tcp 192.0.2.1:22 timeout",
				"client/[2001:db8::2]:443 tcp [2001:db8::1]:22 open", "client/[2001:db8::3]:1443 tcp [2001:db8::1]:22 open",
				"client/[2001:db8::4]:1500 tcp [2001:db8::1]:22 timeout",
				"client/192.0.2.2:5353 udp 192.0.2.1:6000 open", "client/[2001:db8::2]:5354 udp [2001:db8::1]:6007 open",
				"client/192.0.2.3:5355 udp 192.0.2.1:6000 timeout", "client/[2001:db8::3]:5355 udp [2001:db8::1]:6007 timeout",
				"client/192.0.2.2:1234 tcp 192.0.2.1:5432 open", "client/[2001:db8::2]:1234 tcp [2001:db8::1]:8080 open",
				"client/192.0.2.3:1235 tcp 192.0.2.1:5432 timeout",
				"client/192.0.2.2:2000 tcp 192.0.2.1:443 open", "client/[2001:db8::2]:2001 tcp [2001:db8::1]:2222 open",
				"client/192.0.2.3:2002 tcp 192.0.2.1:443 timeout",
				"server/192.0.2.1:3000 tcp 192.0.2.2:25 open", "server/[2001:db8::1]:3001 tcp [2001:db8::2]:25 open",
				"server/192.0.2.1:3002 tcp 192.0.2.2:25 timeout", "server/[2001:db8::1]:3002 tcp [2001:db8::2]:25 timeout",
				"server/192.0.2.1:3150 udp 192.0.2.2:53 open", "server/[2001:db8::1]:3300 udp [2001:db8::2]:53 open",
				"server/192.0.2.1:3250 udp 192.0.2.2:53 timeout",
			)
			portsNoDrift(t, e)
		})
		t.Run("route", func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, b, true)
			e.apply(`default deny routed
route allow from any port 1443,2443 to any port 80 proto tcp
route allow from any port 5353,5354 to any port 53 proto udp
`)
			e.expect(false,
				"client/192.0.2.2:1443 tcp 198.51.100.2:80 open", "client/[2001:db8::2]:2443 tcp [2001:db8:1::2]:80 open",
				"client/192.0.2.3:3000 tcp 198.51.100.2:80 timeout", "client/[2001:db8::3]:3000 tcp [2001:db8:1::2]:80 timeout",
				"client/192.0.2.2:5353 udp 198.51.100.2:53 open", "client/[2001:db8::2]:5354 udp [2001:db8:1::2]:53 open",
				"client/192.0.2.3:5355 udp 198.51.100.2:53 timeout",
			)
			portsNoDrift(t, e)
		})
	})
}

// portsNoDrift: the full drift check (no fingerprint to vouch for the kernel)
// finds nothing changed outside moat, and the next command neither.
func portsNoDrift(t *testing.T, e *env) {
	t.Helper()
	e.expectStatusClean("drift right after the apply")
	e.removeFingerprint()
	e.expectStatusClean("the full drift check sees drift")
	e.removeFingerprintIfAny()
	if out, err := e.moat("allow", "6003/tcp"); err != nil || strings.Contains(out, "changed outside moat") {
		t.Errorf("the next command: %v\n%s", err, out)
	}
}
