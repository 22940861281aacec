package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// Filtering outside moat that also sees the packets is named by status,
// by explain (for a packet moat accepts) and by every apply (the lockout
// check judges moat's rules only): an nftables table with a drop rule and
// one with a drop policy, iptables and ip6tables DROP rules and policies
// outside moat's chains, and chains that show ufw and Docker. The packets
// prove it: moat allows 8080 and 6007, the foreign rules drop them.
func TestOtherFilteringNamed(t *testing.T) {
	t.Parallel()
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			requireBackend(t, b)
			t.Parallel()
			e := newEnv(t, b, false)
			nftFile := e.dir + "/foreign.nft"
			writeFile(t, nftFile, `table inet foreign {
	chain input {
		type filter hook input priority 10; policy accept;
		tcp dport 8080 counter drop
	}
}
table ip6 fwdonly {
	chain forward {
		type filter hook forward priority 0; policy drop;
	}
}
`)
			e.run("server", "nft", "-f", nftFile)
			e.run("server", "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "6007", "-j", "DROP")
			e.run("server", "ip6tables", "-N", "ufw-user-input")
			e.run("server", "ip6tables", "-A", "INPUT", "-j", "ufw-user-input")
			e.run("server", "ip6tables", "-A", "ufw-user-input", "-p", "tcp", "--dport", "6007", "-j", "REJECT", "--reject-with", "tcp-reset")
			e.run("server", "iptables", "-N", "DOCKER-USER")
			e.run("server", "iptables", "-A", "FORWARD", "-j", "DOCKER-USER")
			e.run("server", "iptables", "-P", "FORWARD", "DROP")
			e.run("server", "ip6tables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "6003", "-j", "DROP")

			writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\nallow 8080/tcp\nallow 6007/tcp\n")
			out := e.mustMoat("enable")
			for _, want := range []string{
				"moat: warning: the lockout check judges moat's rules only; this also filters incoming packets and may drop new SSH connections: nftables table inet foreign, chain input (hook input, priority 10): 1 drop/reject rule (input)",
				"may drop new SSH connections: iptables filter chain INPUT: 1 DROP/REJECT rule (input)",
				"may drop new SSH connections: ufw: ip6tables filter chain ufw-user-input: 1 DROP/REJECT rule (input)",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("enable does not warn %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "fwdonly") || strings.Contains(out, "DOCKER") {
				t.Errorf("enable warns about forward-only filtering as if it could cut SSH:\n%s", out)
			}
			if out := e.mustMoat("allow", "443/tcp"); !strings.Contains(out, "may drop new SSH connections: nftables table inet foreign") {
				t.Errorf("a rule command does not warn:\n%s", out)
			}

			out = e.mustMoat("status")
			for _, want := range []string{
				"Other filtering also sees these packets (moat's ALLOW does not override it):",
				"  - nftables table inet foreign, chain input (hook input, priority 10): 1 drop/reject rule (input)",
				"  - nftables table ip6 fwdonly, chain forward (hook forward, priority 0): policy drop (forward)",
				"  - iptables filter chain INPUT: 1 DROP/REJECT rule (input)",
				"  - ufw: ip6tables filter chain ufw-user-input: 1 DROP/REJECT rule (input)",
				"  - docker: iptables filter chain FORWARD: policy DROP (forward)",
				"  - ip6tables raw chain PREROUTING: 1 DROP/REJECT rule (prerouting)",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("status lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "MOAT-") || strings.Contains(out, "table inet moat") {
				t.Errorf("status lists moat's own rules as other filtering:\n%s", out)
			}
			var st struct {
				Other []struct {
					Tool  string   `json:"tool"`
					Where string   `json:"where"`
					Hooks []string `json:"hooks"`
				} `json:"other_filtering"`
			}
			if err := json.Unmarshal([]byte(e.mustMoat("status", "--json")), &st); err != nil || len(st.Other) != 6 {
				t.Errorf("status --json other_filtering: %v %+v", err, st.Other)
			}

			ex := e.mustMoat("explain", "in", "tcp", "from", "192.0.2.2", "to", "port", "8080")
			if !strings.HasPrefix(ex, "ACCEPT\n") || !strings.Contains(ex, "other filtering also sees this packet and can still drop it") ||
				!strings.Contains(ex, "table inet foreign") {
				t.Errorf("explain of a packet a foreign table drops:\n%s", ex)
			}
			if ex := e.mustMoat("explain", "out", "tcp", "to", "192.0.2.2", "port", "80"); strings.Contains(ex, "other filtering") {
				t.Errorf("explain of outgoing traffic names input-only filtering:\n%s", ex)
			}
			if ex := e.mustMoat("explain", "in", "tcp", "to", "port", "9"); !strings.HasPrefix(ex, "DROP\n") || strings.Contains(ex, "other filtering") {
				t.Errorf("explain of a packet moat drops itself:\n%s", ex)
			}
			// What they say is what the kernel does.
			e.expect(false, "client tcp 192.0.2.1:8080 timeout", "client tcp [2001:db8::1]:8080 timeout",
				"client tcp 192.0.2.1:6007 timeout", "client tcp [2001:db8::1]:6007 refused",
				"client tcp 192.0.2.1:443 open", "client tcp [2001:db8::1]:22 open",
				"client tcp [2001:db8::1]:6003 timeout", "client tcp 192.0.2.1:6003 timeout")
		})
	}
}
