package foreign

import (
	"net/netip"
	"strings"
	"testing"
)

const bypassSave = `*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:MOAT-PREROUTING - [0:0]
-A PREROUTING -s 198.51.100.7/32 -j ACCEPT
-A PREROUTING ! -i lo -j MOAT-PREROUTING
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:MOAT-INPUT - [0:0]
:MOAT-FORWARD - [0:0]
:MOAT-OUTPUT - [0:0]
:f2b-sshd - [0:0]
:DOCKER-USER - [0:0]
:DOCKER-FORWARD - [0:0]
-A INPUT -j f2b-sshd
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 8080 -m comment --comment "open \"web\" port" -j ACCEPT
-A INPUT -p udp -m multiport --dports 5000:5010,6000 -j ACCEPT
-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT
-A INPUT -p tcp --dport 9090 -j ACCEPT
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A FORWARD -j MOAT-FORWARD
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m owner --uid-owner 0 -j ACCEPT
-A OUTPUT -j MOAT-OUTPUT
-A f2b-sshd -s 203.0.113.9/32 -j REJECT --reject-with icmp-port-unreachable
-A f2b-sshd -j RETURN
-A DOCKER-USER -j RETURN
-A DOCKER-FORWARD -o docker0 -j ACCEPT
COMMIT
`

func bypassOf(fs []Finding, where string) *Finding {
	for i := range fs {
		if fs[i].Bypass != "" && fs[i].Where == where {
			return &fs[i]
		}
	}
	return nil
}

// Rules ahead of moat's jump that accept are bypasses, judged against
// packets; fail2ban's chain (no ACCEPT), established and loopback accepts
// and rules behind moat's jump are not.
func TestBypassesAheadOfMoatsJump(t *testing.T) {
	fs := FromIptablesSave("iptables", []byte(bypassSave))
	in := bypassOf(fs, "iptables filter chain INPUT")
	if in == nil {
		t.Fatalf("no bypass in INPUT: %v", fs)
	}
	if in.Bypass != "accept" || len(in.Rules) != 2 || !strings.Contains(in.Rules[0], "--dport 8080") || strings.Contains(in.What, "9090") {
		t.Errorf("INPUT bypass: %+v", in)
	}
	if in.Sees("input") {
		t.Errorf("a bypass is not filtering that drops: %+v", in)
	}
	src := netip.MustParseAddr("203.0.113.5")
	for _, c := range []struct {
		p    Packet
		want Match
	}{
		{Packet{Chain: "input", Proto: "tcp", Src: src, DPort: 8080}, Yes},
		{Packet{Chain: "input", Proto: "tcp", Src: src, DPort: 8081}, No},
		{Packet{Chain: "input", Proto: "tcp", Src: src, DPort: 9090}, No},
		{Packet{Chain: "input", Proto: "udp", Src: src, DPort: 5005}, Yes},
		{Packet{Chain: "input", Proto: "udp", Src: src, DPort: 6000}, Yes},
		{Packet{Chain: "input", Proto: "udp", Src: src, DPort: 6001}, No},
		{Packet{Chain: "input", Proto: "tcp", Src: src, DPort: 8080, State: "invalid"}, Yes},
		{Packet{Chain: "input", Proto: "tcp", DPort: 8080, V6: true}, No},               // iptables: IPv4 only
		{Packet{Chain: "input", Proto: "tcp", DPort: 8080, FamilyUnknown: true}, Maybe}, // it may be IPv6
		{Packet{Chain: "output", Proto: "tcp", DPort: 8080}, No},
	} {
		if got := in.Accepts(c.p); got != c.want {
			t.Errorf("%+v: %d, want %d", c.p, got, c.want)
		}
	}
	fwd := bypassOf(fs, "iptables filter chain FORWARD")
	if fwd == nil || fwd.Bypass != "may accept" || fwd.Tool != "docker" || len(fwd.Rules) != 2 && len(fwd.Rules) != 1 {
		t.Fatalf("FORWARD: %+v", fwd)
	}
	if got := fwd.Accepts(Packet{Chain: "forward", Proto: "tcp", OutIface: "docker0"}); got != Maybe {
		t.Errorf("docker forward: %d, want maybe", got)
	}
	if got := fwd.Accepts(Packet{Chain: "forward", Proto: "tcp", OutIface: "eth1"}); got != No {
		t.Errorf("forward out eth1: %d, want no", got)
	}
	// -m owner is not read: the rule may accept anything.
	out := bypassOf(fs, "iptables filter chain OUTPUT")
	if out == nil || len(out.Rules) != 1 || out.Accepts(Packet{Chain: "output", Proto: "tcp", DPort: 25}) != Maybe {
		t.Errorf("OUTPUT: %+v", out)
	}
	raw := bypassOf(fs, "iptables raw chain PREROUTING")
	if raw == nil || raw.Accepts(Packet{Chain: "prerouting", Proto: "tcp", Src: netip.MustParseAddr("198.51.100.7")}) != Yes ||
		raw.Accepts(Packet{Chain: "prerouting", Proto: "tcp", Src: src}) != No || raw.Accepts(Packet{Chain: "input", Proto: "tcp", Src: netip.MustParseAddr("198.51.100.7")}) != No {
		t.Errorf("raw PREROUTING: %+v", raw)
	}
}

// Without a foreign rule ahead (moat's own layout, fail2ban's jump), or
// without moat's jump, there is no bypass; negations are judged.
func TestNoBypass(t *testing.T) {
	for _, save := range []string{
		"*filter\n:INPUT ACCEPT [0:0]\n:MOAT-INPUT - [0:0]\n-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n-A INPUT -p tcp --dport 80 -j ACCEPT\nCOMMIT\n",
		"*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 80 -j ACCEPT\nCOMMIT\n",
		"*filter\n:INPUT ACCEPT [0:0]\n:f2b-sshd - [0:0]\n:MOAT-INPUT - [0:0]\n-A INPUT -p tcp -m multiport --dports 22 -j f2b-sshd\n-A INPUT -j MOAT-INPUT\n-A f2b-sshd -s 192.0.2.9/32 -j REJECT\n-A f2b-sshd -j RETURN\nCOMMIT\n",
	} {
		for _, f := range FromIptablesSave("iptables", []byte(save)) {
			if f.Bypass != "" {
				t.Errorf("bypass in\n%s: %+v", save, f)
			}
		}
	}
	fs := FromIptablesSave("ip6tables", []byte("*filter\n:INPUT ACCEPT [0:0]\n:MOAT-INPUT - [0:0]\n-A INPUT ! -s 2001:db8::/32 -p tcp ! --dport 22 -j ACCEPT\n-A INPUT -j MOAT-INPUT\nCOMMIT\n"))
	in := bypassOf(fs, "ip6tables filter chain INPUT")
	if in == nil {
		t.Fatalf("no bypass: %v", fs)
	}
	for _, c := range []struct {
		p    Packet
		want Match
	}{
		{Packet{Chain: "input", Proto: "tcp", Src: netip.MustParseAddr("2001:db8::5"), DPort: 80, V6: true}, No},
		{Packet{Chain: "input", Proto: "tcp", Src: netip.MustParseAddr("2001:db9::5"), DPort: 80, V6: true}, Yes},
		{Packet{Chain: "input", Proto: "tcp", Src: netip.MustParseAddr("2001:db9::5"), DPort: 22, V6: true}, No},
		{Packet{Chain: "input", Proto: "tcp", DPort: 80, V6: true}, Maybe}, // a source no rule names
		{Packet{Chain: "input", Proto: "tcp", DPort: 80}, No},              // IPv4
	} {
		if got := in.Accepts(c.p); got != c.want {
			t.Errorf("%+v: %d, want %d", c.p, got, c.want)
		}
	}
}

func FuzzBypassRule(f *testing.F) {
	f.Add(`-A INPUT -p tcp -m tcp --dport 8080 -m comment --comment "a \"b\" c" -j ACCEPT`)
	f.Add(`-A INPUT ! -s 10.0.0.0/8 -p udp -m multiport --dports 1:2,3 -j ACCEPT`)
	f.Fuzz(func(t *testing.T, line string) {
		data := "*filter\n:INPUT ACCEPT [0:0]\n:X - [0:0]\n" + line + "\n-A X -j ACCEPT\n-A INPUT -j MOAT-INPUT\nCOMMIT\n"
		for _, f := range FromIptablesSave("iptables", []byte(data)) {
			_ = f.String()
			_ = f.Accepts(Packet{Chain: "input", Proto: "tcp", DPort: 1})
		}
	})
}

// moat's own chains are not read for bypasses (their 100,000 rules cost
// time and memory, and they are moat's): an ACCEPT reached only through a
// jump into one is no bypass.
func TestBypassSkipsMoatChains(t *testing.T) {
	save := "*filter\n:INPUT ACCEPT [0:0]\n:X - [0:0]\n:MOAT-GEN - [0:0]\n:MOAT-INPUT - [0:0]\n" +
		"-A INPUT -j X\n-A INPUT -j MOAT-INPUT\n-A X -j MOAT-GEN\n-A MOAT-GEN -p tcp --dport 80 -j ACCEPT\n-A MOAT-INPUT -j ACCEPT\nCOMMIT\n"
	for _, f := range FromIptablesSave("iptables", []byte(save)) {
		if f.Bypass != "" {
			t.Errorf("bypass through moat's chain: %+v", f)
		}
	}
}
