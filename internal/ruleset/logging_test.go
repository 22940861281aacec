package ruleset

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
)

func logRules(rs *Ruleset) string {
	var out []string
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			if r.Verdict == Log {
				out = append(out, fmt.Sprintf("%s %s%v %s", c.Hook, strings.TrimSpace(r.Log), r.CTStates, map[bool]string{true: "limited", false: "unlimited"}[r.LogLimited]))
			}
		}
	}
	return strings.Join(out, "; ")
}

func TestLoggingLevels(t *testing.T) {
	cases := map[string]string{
		"":               "",
		"logging off":    "",
		"logging low":    "input [MOAT BLOCK][] limited",
		"logging on":     "input [MOAT BLOCK][] limited",
		"logging medium": "input [MOAT INVALID][invalid] limited; input [MOAT BLOCK][] limited; output [MOAT ALLOW][new] limited",
		"logging high":   "input [MOAT AUDIT][] limited; input [MOAT INVALID][invalid] unlimited; input [MOAT BLOCK][] unlimited; output [MOAT AUDIT][] limited; output [MOAT ALLOW][new] unlimited",
		"logging full":   "input [MOAT AUDIT][] unlimited; input [MOAT INVALID][invalid] unlimited; input [MOAT BLOCK][] unlimited; output [MOAT AUDIT][] unlimited; output [MOAT ALLOW][new] unlimited",
		"logging low\ndefault deny outgoing\nroute allow 80/tcp\ndefault deny routed": "input [MOAT BLOCK][] limited; output [MOAT BLOCK][] limited; forward [MOAT BLOCK][] limited",
	}
	for text, want := range cases {
		d := policy.NewDocument("moat.conf", []byte("allow 22/tcp\n"+text+"\n"))
		p, err := d.Policy(nil)
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if got := logRules(Compile(p)); got != want {
			t.Errorf("%q:\n got %s\nwant %s", text, got, want)
		}
	}
}

func TestLoggingDoesNotDecide(t *testing.T) {
	d := policy.NewDocument("moat.conf", []byte("logging full\nallow 22/tcp\n"))
	p, err := d.Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	rs := Compile(p)
	dec, err := rs.Evaluate(Packet{Hook: Input, Proto: "tcp", Src: netip.MustParseAddr("192.0.2.2"), Dst: netip.MustParseAddr("192.0.2.1"), DPort: 22, CTState: CTNew})
	if err != nil {
		t.Fatal(err)
	}
	if dec.Verdict != Accept || dec.Origin.ID != "L2" {
		t.Errorf("decision %+v, want accept by L2", dec)
	}
}
