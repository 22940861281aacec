package e2e

import (
	"strings"
	"testing"
)

// TestIptForeignAcceptAheadOfMoat: a foreign ACCEPT put ahead of moat's
// jump in INPUT (moat keeps foreign rules there on purpose: fail2ban's
// jump relies on it) really opens a port moat closes, IPv4 and IPv6.
// status warns, explain says the packet is accepted before moat sees it,
// audit does not call the port closed by moat.
func TestIptForeignAcceptAheadOfMoat(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	e.expect(false, "client tcp 192.0.2.1:8080 timeout", "client tcp [2001:db8::1]:8080 timeout")
	if out := e.mustMoat("status"); strings.Contains(out, "ahead of moat") {
		t.Errorf("status warns without a foreign rule:\n%s", out)
	}

	e.run("server", "iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT")
	e.run("server", "ip6tables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT")
	e.expect(false, "client tcp 192.0.2.1:8080 open", "client tcp [2001:db8::1]:8080 open",
		"client tcp 192.0.2.1:25 timeout", "client tcp [2001:db8::1]:25 timeout")

	out := e.mustMoat("status")
	if !strings.Contains(out, "rules ahead of moat's jump accept packets moat would refuse") ||
		!strings.Contains(out, "iptables filter chain INPUT") || !strings.Contains(out, "ip6tables filter chain INPUT") {
		t.Errorf("status does not warn of the accept ahead of moat:\n%s", out)
	}
	for _, from := range []string{"192.0.2.2", "2001:db8::2"} {
		out := e.mustMoat("explain", "in", "tcp", "from", from, "to", "port", "8080")
		if !strings.HasPrefix(out, "ACCEPT") || !strings.Contains(out, "before moat sees") {
			t.Errorf("explain from %s to port 8080:\n%s", from, out)
		}
		if out := e.mustMoat("explain", "in", "tcp", "from", from, "to", "port", "25"); !strings.HasPrefix(out, "DROP") || strings.Contains(out, "ahead of moat") {
			t.Errorf("explain from %s to port 25:\n%s", from, out)
		}
	}
	// With no address, the family is unknown: the IPv4 rule surely accepts one of them.
	if out := e.mustMoat("explain", "in", "tcp", "to", "port", "8080"); !strings.Contains(out, "before moat sees") {
		t.Errorf("explain to port 8080:\n%s", out)
	}
	a, code := e.audit()
	if code != 1 {
		t.Errorf("audit exit %d, want 1 (8080 exposed without a policy line)", code)
	}
	fams := map[string]bool{}
	for _, s := range a.Sockets {
		if s.Proto == "tcp" && s.Port == 8080 {
			if s.Status == "closed" {
				t.Errorf("audit calls 8080 closed by moat: %+v", s)
			}
			if s.Status == "open-ahead" {
				fams[s.Family] = true
			}
		}
		if s.Proto == "tcp" && s.Port == 25 && s.Status != "closed" {
			t.Errorf("audit, port 25: %+v", s)
		}
	}
	if !fams["ipv4"] || !fams["ipv6"] {
		t.Errorf("audit does not say 8080 is open ahead of moat for both families: %+v", a.Sockets)
	}
	if out, _ := e.moat("audit"); !strings.Contains(out, "accepted ahead of moat") {
		t.Errorf("audit text:\n%s", out)
	}

	// reload leaves the rule (moat keeps foreign rules ahead of its jump)
	// and says so.
	if out := e.mustMoat("reload"); !strings.Contains(out, "moat: warning: rules ahead of moat's jump accept packets moat would refuse: iptables filter chain INPUT") {
		t.Errorf("reload does not warn:\n%s", out)
	}

	// A jump ahead of moat's to a chain that accepts, and a rule with a
	// match moat cannot judge: "may be accepted", the ports really open.
	e.run("server", "iptables", "-N", "web")
	e.run("server", "iptables", "-A", "web", "-p", "tcp", "--dport", "6000", "-j", "ACCEPT")
	e.run("server", "iptables", "-I", "INPUT", "1", "-j", "web")
	e.run("server", "ip6tables", "-I", "INPUT", "1", "-p", "tcp", "-m", "length", "--length", "0:65535", "--dport", "6003", "-j", "ACCEPT")
	e.expect(false, "client tcp 192.0.2.1:6000 open", "client tcp [2001:db8::1]:6003 open", "client tcp [2001:db8::1]:6000 timeout")
	for _, c := range [][2]string{{"192.0.2.2", "6000"}, {"2001:db8::2", "6003"}} {
		out := e.mustMoat("explain", "in", "tcp", "from", c[0], "to", "port", c[1])
		if !strings.HasPrefix(out, "DROP") || !strings.Contains(out, "may be accepted before moat sees it") {
			t.Errorf("explain from %s to port %s:\n%s", c[0], c[1], out)
		}
	}
	if out := e.mustMoat("status"); !strings.Contains(out, "may bypass moat") {
		t.Errorf("status does not name the jump:\n%s", out)
	}
	a, _ = e.audit()
	for _, s := range a.Sockets {
		if s.Proto == "tcp" && (s.Port == 6000 && s.Family == "ipv4" || s.Port == 6003 && s.Family == "ipv6") && s.Status != "maybe-open-ahead" {
			t.Errorf("audit: %+v", s)
		}
	}

	// moat's jump deleted and put back behind the rule: the same.
	e.run("server", "iptables", "-D", "INPUT", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED", "-j", "MOAT-INPUT")
	e.run("server", "iptables", "-A", "INPUT", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED", "-j", "MOAT-INPUT")
	e.run("server", "iptables", "-D", "INPUT", "1")
	e.run("server", "iptables", "-I", "INPUT", "1", "-j", "ACCEPT")
	e.expect(false, "client tcp 192.0.2.1:25 open")
	if out := e.mustMoat("explain", "in", "tcp", "from", "192.0.2.2", "to", "port", "25"); !strings.HasPrefix(out, "ACCEPT") {
		t.Errorf("explain behind an accept-all:\n%s", out)
	}
}

// TestNftForeignAcceptNoBypass: on nftables an accept ends one base chain
// only, so another table's accept, even ahead of moat's chains (a lower
// priority) or in iptables-nft's filter table, lets nothing past moat:
// the port stays closed, and nothing is reported as a bypass.
func TestNftForeignAcceptNoBypass(t *testing.T) {
	e := onBackend(t, "nftables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	nftFile := e.dir + "/early.nft"
	writeFile(t, nftFile, "table inet early {\n\tchain input {\n\t\ttype filter hook input priority -400; policy accept;\n\t\ttcp dport 8080 accept\n\t}\n}\n")
	e.run("server", "nft", "-f", nftFile)
	e.run("server", "iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT")
	e.run("server", "ip6tables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT")
	e.expect(false, "client tcp 192.0.2.1:8080 timeout", "client tcp [2001:db8::1]:8080 timeout", "client tcp 192.0.2.1:22 open")
	if out := e.mustMoat("status"); strings.Contains(out, "ahead of moat") {
		t.Errorf("status reports a bypass on nftables:\n%s", out)
	}
	if out := e.mustMoat("explain", "in", "tcp", "from", "192.0.2.2", "to", "port", "8080"); !strings.HasPrefix(out, "DROP") || strings.Contains(out, "before moat") {
		t.Errorf("explain:\n%s", out)
	}
	a, _ := e.audit()
	for _, s := range a.Sockets {
		if s.Proto == "tcp" && s.Port == 8080 && s.Status != "closed" {
			t.Errorf("audit, port 8080: %+v", s)
		}
	}
}

// TestIptRawAcceptAheadOfBans: an ACCEPT in raw PREROUTING ahead of
// MOAT-PREROUTING skips moat's drop of banned sources there; explain and
// status say so.
func TestIptRawAcceptAheadOfBans(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	e.mustMoat("ban", "192.0.2.3", "--for", "1h", "--reason", "test")
	e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:22 timeout")
	e.run("server", "iptables", "-t", "raw", "-I", "PREROUTING", "1", "-s", "192.0.2.3", "-j", "ACCEPT")
	e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:22 open")
	if out := e.mustMoat("status"); !strings.Contains(out, "iptables raw chain PREROUTING") {
		t.Errorf("status:\n%s", out)
	}
	if out := e.mustMoat("explain", "in", "tcp", "from", "192.0.2.3", "to", "port", "22"); !strings.HasPrefix(out, "ACCEPT") || !strings.Contains(out, "before moat sees") {
		t.Errorf("explain:\n%s", out)
	}
}
