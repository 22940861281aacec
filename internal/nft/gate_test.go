package nft

import (
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// Only runs of two or more built-ins that match only ICMP/ICMPv6, or only
// UDP from given source ports, stand behind a gate; a policy rule, a
// lone built-in and a built-in of another kind are never moved.
func TestGateRuns(t *testing.T) {
	b := func(id string, m ruleset.Match) ruleset.Rule {
		return ruleset.Rule{Match: m, Verdict: ruleset.Accept, Origin: ruleset.Origin{ID: id}}
	}
	icmp := ruleset.Match{Protos: []string{"icmp"}, ICMPTypes: []uint8{3}}
	icmp6 := ruleset.Match{Protos: []string{"ipv6-icmp"}, ICMPTypes: []uint8{1}}
	dhcp := ruleset.Match{Protos: []string{"udp"}, SPorts: policy.Ports{{First: 67, Last: 67}}}
	dhcp6 := ruleset.Match{Protos: []string{"udp"}, SPorts: policy.Ports{{First: 547, Last: 547}}}
	est := ruleset.Match{CTStates: []ruleset.CTState{ruleset.CTEstablished}}
	rules := []ruleset.Rule{
		b("builtin:established", est),
		b("builtin:icmp", icmp), b("builtin:icmpv6", icmp6), // 1-2: a gate
		b("builtin:dhcp", dhcp), b("builtin:dhcpv6", dhcp6), // 3-4: a gate
		b("L1", icmp), b("L2", icmp6), // policy rules: never
		b("builtin:icmp", icmp),                          // alone: no gate
		b("builtin:dhcp", dhcp),                          // alone, then another kind
		b("builtin:icmp", icmp), b("builtin:mld", icmp6), // 9-10: a second ICMP gate
	}
	got := gateRuns(rules)
	want := map[int]gate{
		1: {name: "icmp", what: "ICMP and ICMPv6", text: "meta l4proto { icmp, ipv6-icmp }", end: 3},
		3: {name: "udp", what: "UDP from their source ports", text: "udp sport { 67, 547 }", end: 5},
		9: {name: "icmp2", what: "ICMP and ICMPv6", text: "meta l4proto { icmp, ipv6-icmp }", end: 11},
	}
	if len(got) != len(want) {
		t.Fatalf("gates %+v, want %+v", got, want)
	}
	for i, g := range want {
		if got[i] != g {
			t.Errorf("gate at %d: %+v, want %+v", i, got[i], g)
		}
	}
}

// TestUngatedScript: the earlier layout (ruleset.CompileEarlierOrder, Ungated)
// renders the built-ins inline, with no gate rule and no gated chain, as
// moat loaded them before it gated them; Compile's rendering has the gates.
func TestUngatedScript(t *testing.T) {
	p, err := policy.NewDocument("moat.conf", []byte("default deny incoming\nallow 22/tcp\n")).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{}
	gated, err := b.Script(ruleset.Compile(p))
	if err != nil {
		t.Fatal(err)
	}
	earlier, err := b.Script(ruleset.CompileEarlierOrder(p))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"input_icmp", "gate:icmp", "input_udp"} {
		if !strings.Contains(gated, s) {
			t.Errorf("this version's script lacks %q:\n%s", s, gated)
		}
		if strings.Contains(earlier, s) {
			t.Errorf("the earlier layout holds %q:\n%s", s, earlier)
		}
	}
	if !strings.Contains(earlier, "builtin:icmp") || !strings.Contains(earlier, "builtin:dhcp") {
		t.Errorf("the earlier layout lacks the built-ins:\n%s", earlier)
	}
}
