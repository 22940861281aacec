package e2e

import (
	"strings"
	"testing"
)

// Two edits at once: two changes of sets alone (`deny from` lines
// appended to the run a set holds: on iptables MOAT-GEN's "changing" mark
// and record, written over netlink, and no program), then a rule change
// with a change of sets, each then undone at once. The second command
// waits for the first, both changes are in the file and the kernel,
// status finds no drift (the fingerprint each recorded stands), and real
// packets agree, IPv4 and IPv6. A rule put by hand into moat's chain
// (nft, into iptables-nft's table on iptables) right after is drift for
// status. Both backends.
func TestEditsAtOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\ndeny from 198.51.100.7\ndeny from 198.51.100.8\n")
		e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:6000 timeout", "client tcp [2001:db8::1]:6000 timeout")
		atOnce := func(cmds ...[]string) {
			t.Helper()
			errs := make(chan error, len(cmds))
			outs := make([]string, len(cmds))
			for i, args := range cmds {
				go func() {
					var err error
					outs[i], err = e.moat(args...)
					errs <- err
				}()
			}
			for range cmds {
				if err := <-errs; err != nil {
					t.Fatalf("%v: %v\n%s", cmds, err, strings.Join(outs, "\n"))
				}
			}
			if out := e.mustMoat("status"); strings.Contains(out, "outside moat") || strings.Contains(out, "interrupted") {
				t.Fatalf("status after %v:\n%s", cmds, out)
			}
		}
		for round := 0; round < 2; round++ {
			atOnce([]string{"deny", "from", "198.51.100.9"}, []string{"deny", "from", "198.51.100.10"})
			if out := e.mustMoat("status"); !strings.Contains(out, "198.51.100.9 ") || !strings.Contains(out, "198.51.100.10 ") {
				t.Errorf("round %d: status does not show both denies:\n%s", round, out)
			}
			atOnce([]string{"delete", "deny", "from", "198.51.100.9"}, []string{"delete", "deny", "from", "198.51.100.10"})
			atOnce([]string{"allow", "6000/tcp"}, []string{"deny", "from", "198.51.100.9"})
			e.expect(false, "client tcp 192.0.2.1:6000 open", "client tcp [2001:db8::1]:6000 open", "client tcp 192.0.2.1:80 open")
			atOnce([]string{"delete", "allow", "6000/tcp"}, []string{"delete", "deny", "from", "198.51.100.9"})
			e.expect(false, "client tcp 192.0.2.1:6000 timeout", "client tcp [2001:db8::1]:6000 timeout", "client tcp 192.0.2.1:80 open")
		}
		if b == "iptables" {
			e.run("server", "nft", "add", "rule", "ip6", "filter", "MOAT-INPUT", "tcp", "dport", "6000", "accept")
		} else {
			e.run("server", "nft", "add", "rule", "inet", "moat", "input", "tcp", "dport", "6000", "accept")
		}
		if out := e.mustMoat("status"); !strings.Contains(out, "outside moat") {
			t.Errorf("status after a rule added by hand:\n%s", out)
		}
	})
}
