package nft

import (
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

func TestTrapAndBlocklistScript(t *testing.T) {
	p, err := policy.NewDocument("moat.conf", []byte("default deny incoming\nallowlist 198.51.100.0/24\nallow 22/tcp\n"+
		"blocklist drop url https://lists.example/drop.txt\nguard portscan ports 10 within 60s bantime 1h\n")).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Blocklists[0].Prefixes = nil
	rs := ruleset.Compile(p)
	script, err := New().Script(rs)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`add set inet moat ban4 { type ipv4_addr ; flags dynamic,timeout ; size 1048576 ;`,
		`add set inet moat scan4 { type ipv4_addr . inet_proto . inet_service ; flags dynamic,timeout ; timeout 60s ; size 65535 ;`,
		`add set inet moat scan6_rate { type ipv6_addr ; flags dynamic,timeout ; timeout 120s ; size 65535 ;`,
		`add chain inet moat prerouting { type filter hook prerouting priority -300 ; policy accept ; }`,
		`add rule inet moat prerouting ip saddr @bl4_drop iifname != "lo" ip saddr != @protect4 fib daddr type != unicast counter drop comment "blocklist:drop"`,
		`add rule inet moat prerouting ip6 saddr @ban6 iifname != "lo" ip6 saddr != @protect6 fib daddr type != unicast counter drop comment "builtin:ban"`,
		`add rule inet moat input ct state new meta l4proto { tcp, udp } fib saddr type != local ip saddr != @protect4 ip saddr != @login4 ip saddr . meta l4proto . th dport != @scan4 add @scan4 { ip saddr . meta l4proto . th dport } update @scan4_rate { ip saddr limit rate over 9/minute burst 9 packets } add @ban4 { ip saddr timeout 3600s } counter comment "portscan"`,
		`ip6 saddr != @protect6 ip6 saddr != @login6 ip6 saddr . meta l4proto . th dport != @scan6 add @scan6`,
		`add set inet moat login4 { type ipv4_addr ; flags dynamic,timeout ; size 1048576 ;`,
		`add set inet moat login6 { type ipv6_addr ; flags dynamic,timeout ; size 1048576 ;`,
	} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
	// The blocklist drops come before conntrack; the trap after every rule.
	if strings.Index(script, `comment "blocklist:drop"`) > strings.Index(script, `comment "builtin:established"`) ||
		strings.Index(script, `comment "portscan"`) < strings.Index(script, `comment "L3"`) {
		t.Errorf("order:\n%s", script)
	}
}
