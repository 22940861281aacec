package ipt

import (
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

func TestTrapAndBlocklistRender(t *testing.T) {
	p, err := policy.NewDocument("moat.conf", []byte("default deny incoming\nallowlist 198.51.100.0/24\nallow 22/tcp\n"+
		"blocklist drop url https://lists.example/drop.txt\nguard portscan ports 10 within 60s bantime 1h\n")).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	rs := ruleset.Compile(p)
	names := SetNames(rs)
	if names["scan4"] != "moat-scan4-60" || names["ban4"] != "moat-ban4" {
		t.Errorf("names: %v", names)
	}
	sets := RenderSets(rs, nil)
	if !strings.Contains(sets, "create moat-scan4-60 hash:ip,port family inet timeout 60 maxelem 65536\n") ||
		!strings.Contains(sets, "create moat-scan6-60 hash:ip,port family inet6 timeout 60 maxelem 65536\n") ||
		!strings.Contains(sets, "create moat-login4 hash:ip family inet timeout 0 ") ||
		!strings.Contains(sets, "create moat-login6 hash:ip family inet6 timeout 0 ") {
		t.Errorf("sets:\n%s", sets)
	}
	v4 := Render(rs, policy.FamilyV4, nil)
	protect := names["protect4"]
	for _, want := range []string{
		"-A MOAT-PREROUTING ! -i lo -m set --match-set " + names["bl4_drop"] + " src -m set ! --match-set " + protect + " src -m addrtype ! --dst-type UNICAST" + ` -m comment --comment "blocklist:drop" -j DROP`,
		"-A MOAT-INPUT -p tcp -m conntrack --ctstate NEW -m addrtype ! --src-type LOCAL -m set ! --match-set " + protect + " src -m set ! --match-set moat-login4 src -m set ! --match-set moat-scan4-60 src,dst " +
			"-m hashlimit --hashlimit-above 9/min --hashlimit-burst 9 --hashlimit-mode srcip --hashlimit-name moat_scan4 --hashlimit-htable-expire 120000 " +
			`-m comment --comment "portscan" -j SET --add-set moat-ban4 src --timeout 3600 --exist`,
		"-A MOAT-INPUT -p udp -m conntrack --ctstate NEW -m addrtype ! --src-type LOCAL -m set ! --match-set " + protect + ` src -m set ! --match-set moat-login4 src -m set ! --match-set moat-scan4-60 src,dst -m comment --comment "portscan" -j SET --add-set moat-scan4-60 src,dst --exist`,
	} {
		if !strings.Contains(v4, want) {
			t.Errorf("IPv4 rules lack %q:\n%s", want, v4)
		}
	}
	if strings.Contains(v4, "moat-scan6") || strings.Contains(v4, "moat-ban6") {
		t.Errorf("IPv6 sets in IPv4 rules:\n%s", v4)
	}
	if v6 := Render(rs, policy.FamilyV6, nil); !strings.Contains(v6, "--add-set moat-ban6 src --timeout 3600") {
		t.Errorf("IPv6 rules:\n%s", v6)
	}
}
