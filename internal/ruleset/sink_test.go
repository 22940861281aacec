package ruleset

import (
	"net/netip"
	"strings"
	"testing"
)

// The built-ins that sink past the policy's rules give every packet the
// verdict and the counter (the deciding rule) it had with the built-ins
// first: the evaluator walks both orders over packets of every protocol,
// family, port, ICMP type, interface and conntrack state the built-ins
// and the policy's rules tell apart.
func TestSinkBuiltinsSameVerdicts(t *testing.T) {
	for _, text := range []string{
		"default deny incoming\nallow 22/tcp\nallow 9/udp\n",
		`default deny incoming
default reject outgoing
deny from 203.0.113.7
deny from 203.0.113.0/28
deny from 2001:db8:bad::/48
allow 22/tcp comment 'admins'
allow 53
allow 80,443/tcp
allow 6000:6007/udp
reject 113/tcp
limit 2222/tcp
allow in on eth+ log to any port 8080 proto tcp
allow proto icmp from 198.51.100.0/24
allow proto ipv6-icmp from 2001:db8::/32
allow proto esp from 192.0.2.9
deny 68/udp
reject proto udp from any port 547
deny proto ipv6-icmp from 2001:db8::66
allow out to 2001:db8::53 port 53 proto udp
deny out 546:547/udp
allow out 68/udp
route allow in on eth1 out on eth2 to 192.0.2.0/24 port 80 proto tcp
route deny proto icmp from 198.51.100.9
`,
		"default deny incoming\nallow 22/tcp\ndeny in on eth1\nallow 1:65535/udp\nallow proto udp from 192.0.2.0/24\ndeny proto icmp from any\n",
		"default allow incoming\nlogging medium\ndeny 22/tcp\ndeny proto udp to any port 67:68\n",
		"default deny incoming\nlogging high\nallow 22/tcp\nguard portscan ports 10 within 60s bantime 1h\nallow 443/tcp\n",
	} {
		p := mustPolicy(t, text)
		sunk := Compile(p)
		sinkOn = false
		first := Compile(p)
		sinkOn = true
		moved := false
		for i, c := range sunk.Chains {
			for j := range c.Rules {
				if c.Rules[j].Origin.ID != first.Chains[i].Rules[j].Origin.ID {
					moved = true
				}
			}
		}
		if !moved {
			t.Errorf("%q: no built-in moved", text)
		}
		n := 0
		for _, pk := range packets() {
			want, err1 := first.Evaluate(pk)
			got, err2 := sunk.Evaluate(pk)
			if err1 != nil || err2 != nil {
				continue // a chain the policy does not have
			}
			n++
			if got.Verdict != want.Verdict || got.Origin.ID != want.Origin.ID || got.Chain != want.Chain {
				t.Errorf("%q: %+v: %s by %s (%s), with the built-ins first %s by %s (%s)", text, pk,
					got.Verdict, got.Origin.ID, got.Chain, want.Verdict, want.Origin.ID, want.Chain)
			}
		}
		if n < 10000 {
			t.Errorf("%q: only %d packets evaluated", text, n)
		}
	}
}

// packets are every combination of the fields the built-ins and the
// policies above tell apart.
func packets() []Packet {
	var out []Packet
	srcs := []string{"192.0.2.2", "198.51.100.9", "203.0.113.5", "192.0.2.9", "2001:db8::2", "fe80::1", "2001:db8:bad::1", "2001:db8::66", "2001:db8::53"}
	dst := map[bool]netip.Addr{true: netip.MustParseAddr("192.0.2.1"), false: netip.MustParseAddr("2001:db8::1")}
	for _, hook := range []Hook{Input, Output, Forward} {
		for _, s := range srcs {
			src := netip.MustParseAddr(s)
			for _, iface := range []string{"eth0", "eth1", "lo"} {
				for _, ct := range []CTState{CTNew, CTInvalid, CTEstablished, CTUntracked} {
					base := Packet{Hook: hook, Src: src, Dst: dst[src.Is4()], CTState: ct}
					if hook == Output {
						base.Src, base.Dst = base.Dst, src
						base.OutIface = iface
					} else {
						base.InIface = iface
						if hook == Forward {
							base.OutIface = "eth2"
						}
					}
					for _, proto := range []string{"tcp", "udp"} {
						for _, sp := range []uint16{67, 68, 546, 547, 40000} {
							for _, dp := range []uint16{22, 53, 67, 68, 80, 546, 547, 6000, 9} {
								pk := base
								pk.Proto, pk.SPort, pk.DPort = proto, sp, dp
								out = append(out, pk)
							}
						}
					}
					icmp := "icmp"
					if !src.Is4() {
						icmp = "ipv6-icmp"
					}
					for _, typ := range []uint8{0, 1, 2, 3, 4, 8, 11, 12, 128, 129, 130, 131, 133, 134, 135, 136, 143} {
						for _, hl := range []uint8{255, 64} {
							pk := base
							pk.Proto, pk.ICMPType, pk.HasICMPType, pk.HopLimit = icmp, typ, true, hl
							out = append(out, pk)
						}
					}
					pk := base
					pk.Proto = "esp"
					out = append(out, pk)
				}
			}
		}
	}
	return out
}

// TestCompileEarlierOrder: the earlier order is every built-in first (what
// moat loaded before it sank them), the same rules otherwise.
func TestCompileEarlierOrder(t *testing.T) {
	p := mustPolicy(t, "default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	sunk, earlier := Compile(p), CompileEarlierOrder(p)
	differs := false
	for i, c := range earlier.Chains {
		seenUser := false
		for j, r := range c.Rules {
			builtin := strings.HasPrefix(r.Origin.ID, "builtin:")
			if builtin && seenUser {
				t.Errorf("chain %d: built-in %s after a policy rule", i, r.Origin.ID)
			}
			seenUser = seenUser || !builtin
			if sunk.Chains[i].Rules[j].Origin.ID != r.Origin.ID {
				differs = true
			}
		}
		if len(c.Rules) != len(sunk.Chains[i].Rules) {
			t.Errorf("chain %d: %d rules, sunk %d", i, len(c.Rules), len(sunk.Chains[i].Rules))
		}
	}
	if !differs {
		t.Error("the earlier order is the sunk one: the test cannot tell them apart")
	}
}
