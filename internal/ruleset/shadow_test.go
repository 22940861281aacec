package ruleset

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
)

func TestShadowed(t *testing.T) {
	svc := policy.ParseServices([]byte("ssh 22/tcp\nhttp 80/tcp\ndomain 53/tcp\ndomain 53/udp\n"))
	cases := []struct {
		rules string
		want  string // "covered<by" line pairs, space separated; "" none
	}{
		{"allow 22/tcp\nlimit ssh", "2<1"},
		{"limit ssh\nallow 22/tcp", "2<1"},
		{"allow 22/tcp\ndeny 22/tcp", "2<1"},
		{"allow 22\ndeny 22/udp\nreject 22/tcp", "2<1 3<1"},
		{"allow 22/tcp\ndeny 22", ""}, // 22/udp still reaches line 2
		{"allow 6000:6010/tcp\ndeny 6003/tcp\ndeny 6005:6010/tcp\ndeny 6009:6011/tcp", "2<1 3<1"},
		{"allow 80,443,8000:8080/tcp\ndeny 443,8080/tcp", "2<1"},
		{"allow 1:100/tcp\nallow 100:200/tcp\ndeny 50:150/tcp", ""}, // two rules together: not flagged
		{"deny from 203.0.113.0/24\nallow from 203.0.113.7", "2<1"},
		{"deny from 203.0.113.0/24\nallow from 203.0.112.7", ""},
		{"deny from 2001:db8::/32\nallow from 2001:db8:1::/48 to any port 22 proto tcp", "2<1"},
		{"deny from 2001:db8::/32\nallow from 203.0.113.7", ""},
		{"deny from 203.0.113.0/24\nallow 22/tcp", ""}, // v6 and other sources still reach it
		{"allow 22/tcp\nallow from 198.51.100.0/24 to any port 22 proto tcp", "2<1"},
		{"allow from 198.51.100.0/24 to any port 22 proto tcp\nallow 22/tcp", ""},
		{"allow in on eth+ to any port 80 proto tcp\ndeny in on eth0 to any port 80 proto tcp", "2<1"},
		{"allow in on eth0 to any port 80 proto tcp\ndeny 80/tcp", ""},
		{"deny in on eth0\nallow in on eth1 to any port 22 proto tcp", ""},
		{"deny out 25/tcp\ndeny 25/tcp", ""}, // other direction
		{"deny out 25/tcp\nallow out to 203.0.113.9 port 25 proto tcp", "2<1"},
		{"allow proto icmp from any\ndeny proto icmp from 203.0.113.0/24", "2<1"},
		{"allow proto ipv6-icmp from any\ndeny proto icmp from any", ""},
		{"deny from any\nallow proto esp from any\nallow 22/tcp", "2<1 3<1"},
		{"route allow in on eth1 out on eth2\nroute deny in on eth1 out on eth2 to 192.0.2.0/24 port 80 proto tcp", "2<1"},
		{"route allow in on eth1 out on eth2\nroute deny in on eth2 out on eth1", ""},
		{"allow 53\ndeny domain", "2<1"},
	}
	for _, c := range cases {
		p, err := policy.NewDocument("moat.conf", []byte(c.rules+"\n")).Policy(svc)
		if err != nil {
			t.Fatalf("%q: %v", c.rules, err)
		}
		var got []string
		for _, cv := range Shadowed(p) {
			got = append(got, strconv.Itoa(cv.Rule.Pos.Line)+"<"+strconv.Itoa(cv.By.Pos.Line))
		}
		if g := strings.Join(got, " "); g != c.want {
			t.Errorf("%q: covered %q, want %q", c.rules, g, c.want)
		}
	}
}

func TestCoveredMessage(t *testing.T) {
	p, err := policy.NewDocument("/etc/moat/moat.conf", []byte("# x\nallow 22/tcp\nlimit 22/tcp\n")).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	cv := Shadowed(p)
	want := "/etc/moat/moat.conf:3: 'limit 22/tcp' never matches: line 2 'allow 22/tcp' matches exactly the same packets first (delete one, or move line 3 above line 2)"
	if len(cv) != 1 || cv[0].String() != want {
		t.Fatalf("got %v\nwant %s", cv, want)
	}
}

// The covered-rule search on small random policies (a small index: no
// filters) finds exactly what comparing every pair finds.
func TestShadowedIndexMatchesPairs(t *testing.T) {
	randomPairs(t, rand.New(rand.NewPCG(1, 2)))
}

// randomPairs checks Shadowed against every pair on 300 small random
// policies: one family per line (a line mixing them is refused, and a test
// skipping refused policies checked few), nested and repeated networks on
// both sides, rules with both, port rules and port ranges between. It
// fails if the policies cover too few rules to show a lost one.
func randomPairs(t *testing.T, rng *rand.Rand) {
	t.Helper()
	fams := [][]string{
		{"", "", "198.51.100.0/24", "198.51.100.7", "198.51.0.0/16", "0.0.0.0/0", "198.51.100.0/25"},
		{"", "", "2001:db8::/32", "2001:db8::5", "2001:db8:1::/48", "::/0", "2001:db8::/64"},
	}
	ports := []string{"", "", " port 22", " port 80", " port 20:30"}
	protos := []string{"", "", "", "tcp", "udp"}
	actions := []string{"allow", "deny", "reject"}
	covered := 0
	var compact [2]int // rules held compact: from, to
	for round := 0; round < 300; round++ {
		var b strings.Builder
		for i := 0; i < 30; i++ {
			addrs := fams[rng.IntN(2)]
			from, to := addrs[rng.IntN(len(addrs))], addrs[rng.IntN(len(addrs))]
			line := actions[rng.IntN(3)]
			switch {
			case from == "" && to == "":
				line += " 22/tcp"
			case to == "" && rng.IntN(2) == 0:
				line += " from " + from // the short form, held compact
			case from == "" && rng.IntN(2) == 0:
				line += " to " + to
			default:
				if from == "" {
					from = "any"
				}
				if to == "" {
					to = "any"
				}
				fp, tp := ports[rng.IntN(len(ports))], ports[rng.IntN(len(ports))]
				line += " from " + from + fp + " to " + to + tp
				// A range needs a protocol; others may have one.
				if proto := protos[rng.IntN(len(protos))]; proto != "" || strings.Contains(fp+tp, ":") {
					line += " proto " + cmp.Or(proto, "tcp")
				}
			}
			b.WriteString(line + "\n")
		}
		p, err := policy.NewDocument("moat.conf", []byte(b.String())).Policy(nil)
		if err != nil {
			t.Fatalf("policy:\n%s\n%v", b.String(), err)
		}
		for i := range p.NumRules() {
			if a, ok := p.CompactAddrRule(i); ok {
				compact[btoi(a.To)]++
			}
		}
		covered += len(Shadowed(p))
		samePairs(t, p, b.String())
	}
	if covered < 1000 {
		t.Fatalf("only %d covered rules: the test would not show a lost one", covered)
	}
	if compact[0] < 100 || compact[1] < 100 {
		t.Fatalf("only %d and %d rules held compact (from, to): the test would not show their networks lost", compact[0], compact[1])
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// samePairs checks Shadowed against comparing every pair of rules.
func samePairs(t *testing.T, p *policy.Policy, text string) {
	t.Helper()
	got := Shadowed(p)
	var want []Covered
	rules := p.AllRules()
	for i := range rules {
		for j := 0; j < i; j++ {
			if covers(&rules[j], &rules[i]) {
				want = append(want, Covered{Rule: rules[i], By: rules[j]})
				break
			}
		}
	}
	if len(got) != len(want) {
		t.Fatalf("policy:\n%s\ngot %d covered, want %d", text, len(got), len(want))
	}
	for k := range got {
		if got[k].Rule.Pos != want[k].Rule.Pos || got[k].By.Pos != want[k].By.Pos {
			t.Fatalf("policy:\n%s\n%v\nwant %v", text, got[k], want[k])
		}
	}
}

// A large policy (its index filters lookups through prefixIndex.seen)
// still finds exactly what comparing every pair finds: networks nested
// and repeated, both families, both sides, ports and port rules.
func TestShadowedLargeIndexMatchesPairs(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var b strings.Builder
	addr := func() string {
		if rng.IntN(2) == 0 {
			return fmt.Sprintf("%s.%d/%d", []string{"192.0.2", "198.51.100", "203.0.113"}[rng.IntN(3)], rng.IntN(256),
				[]int{32, 32, 32, 32, 32, 32, 31, 30, 29, 28, 27, 26, 25, 24}[rng.IntN(14)])
		}
		return fmt.Sprintf("2001:db8:%x:%x::%x/%d", rng.IntN(4), rng.IntN(16), rng.IntN(256),
			[]int{128, 128, 128, 128, 128, 128, 124, 120, 64, 60, 56}[rng.IntN(11)])
	}
	actions := []string{"allow", "deny", "reject"}
	for i := 0; i < 3000; i++ {
		a := actions[rng.IntN(3)]
		switch rng.IntN(10) {
		case 0:
			fmt.Fprintf(&b, "%s %d/tcp\n", a, 20+rng.IntN(5))
		case 1:
			fmt.Fprintf(&b, "%s from %s to any port %d proto tcp\n", a, addr(), 20+rng.IntN(5))
		case 2, 3:
			fmt.Fprintf(&b, "%s to %s\n", a, addr())
		default:
			fmt.Fprintf(&b, "%s from %s\n", a, addr())
		}
	}
	p, err := policy.NewDocument("moat.conf", []byte(b.String())).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(Shadowed(p)); n < 500 {
		t.Fatalf("only %d covered rules: the test would not show a lost one", n)
	}
	samePairs(t, p, "(3000 random rules)")
}

func BenchmarkShadowed100k(b *testing.B) {
	var s strings.Builder
	s.WriteString("allow 22/tcp\n")
	for i := 0; i < 100000; i++ {
		fmt.Fprintf(&s, "deny from 10.%d.%d.%d\n", i>>16, i>>8&255, i&255)
	}
	p, err := policy.NewDocument("moat.conf", []byte(s.String())).Policy(nil)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		Shadowed(p)
	}
}

// An application profile's rules share their line: they are one rule to
// the admin, never reported as covering each other.
func TestShadowedSameLine(t *testing.T) {
	p := policy.New()
	p.SetRules([]policy.Rule{
		{Action: policy.Allow, Direction: policy.In, Proto: "tcp", ToPort: policy.Ports{{First: 80, Last: 443}}, Pos: policy.Pos{Line: 3}, Text: "allow WWW"},
		{Action: policy.Allow, Direction: policy.In, Proto: "tcp", ToPort: policy.Ports{{First: 443, Last: 443}}, Pos: policy.Pos{Line: 3}, Text: "allow WWW"},
		{Action: policy.Deny, Direction: policy.In, Proto: "tcp", ToPort: policy.Ports{{First: 443, Last: 443}}, Pos: policy.Pos{Line: 4}, Text: "deny 443/tcp"},
	})
	got := Shadowed(p)
	if len(got) != 1 || got[0].Rule.Pos.Line != 4 || got[0].By.Pos.Line != 3 {
		t.Errorf("got %v", got)
	}
}

// BenchmarkShadowedBlocklist100k: the policy of e2e's BenchmarkChange at
// 100,000 entries (IPv4 hosts and IPv6 /64 networks, one port rule).
func BenchmarkShadowedBlocklist100k(b *testing.B) {
	var s strings.Builder
	s.WriteString("default deny incoming\n")
	for i := 0; i < 50000; i++ {
		fmt.Fprintf(&s, "deny from 10.%d.%d.%d\ndeny from 2001:db8:%x:%x::/64\n", i>>15&255, i>>7&255, 2*(i&127), i>>7, 2*(i&127))
	}
	s.WriteString("allow 22/tcp\n")
	p, err := policy.NewDocument("moat.conf", []byte(s.String())).Policy(nil)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		Shadowed(p)
	}
}

// The same for a large destination index (its query filter, markQueried):
// most rules name a destination network, some a source as well (they look
// up the destination index without being added to it), so networks are
// only read back through lookups of other rules.
func TestShadowedLargeToIndexMatchesPairs(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var b strings.Builder
	addr := func() string {
		if rng.IntN(2) == 0 {
			return fmt.Sprintf("198.51.100.%d/%d", rng.IntN(256), []int{32, 32, 32, 32, 30, 28, 24}[rng.IntN(7)])
		}
		return fmt.Sprintf("2001:db8:%x::%x/%d", rng.IntN(8), rng.IntN(256), []int{128, 128, 128, 124, 64, 48}[rng.IntN(6)])
	}
	actions := []string{"allow", "deny", "reject"}
	for i := 0; i < 3000; i++ {
		a := actions[rng.IntN(3)]
		switch rng.IntN(10) {
		case 0:
			fmt.Fprintf(&b, "%s out %d/tcp\n", a, 20+rng.IntN(5))
		case 1:
			to := addr()
			from := "192.0.2.0/24"
			if !strings.Contains(to, ".") {
				from = "2001:db8:ff::/48"
			}
			fmt.Fprintf(&b, "%s out from %s to %s\n", a, from, to)
		default:
			fmt.Fprintf(&b, "%s out to %s\n", a, addr())
		}
	}
	p, err := policy.NewDocument("moat.conf", []byte(b.String())).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(Shadowed(p)); n < 500 {
		t.Fatalf("only %d covered rules: the test would not show a lost one", n)
	}
	samePairs(t, p, "(3000 random outgoing rules)")
}

// The filters of a large index (seen, queried) on the small random
// policies of randomPairs. Fails when the query filter drops any needed
// network.
func TestShadowedFilteredIndexMatchesPairs(t *testing.T) {
	old := bigIndex
	bigIndex = 1
	t.Cleanup(func() { bigIndex = old })
	randomPairs(t, rand.New(rand.NewPCG(7, 8)))
}

// TestShadowedProfileWarnedOnce: a rule naming a profile of several
// protocols (Samba: udp and tcp) is one line to the admin; covered by
// another such line, it is named once, not once a protocol ('moat check'
// printed the same warning for each).
func TestShadowedProfileWarnedOnce(t *testing.T) {
	v6 := netip.MustParsePrefix("2001:db8::/32")
	udp := policy.Ports{{First: 137, Last: 138}}
	tcp := policy.Ports{{First: 139, Last: 139}, {First: 445, Last: 445}}
	p := policy.New()
	p.SetRules([]policy.Rule{
		{Action: policy.Allow, Direction: policy.In, Proto: "udp", ToPort: udp, ToApp: "Samba", Pos: policy.Pos{Line: 4}, Text: "allow Samba"},
		{Action: policy.Allow, Direction: policy.In, Proto: "tcp", ToPort: tcp, ToApp: "Samba", Pos: policy.Pos{Line: 4}, Text: "allow Samba"},
		{Action: policy.Allow, Direction: policy.In, Proto: "udp", ToPort: udp, ToApp: "Samba", From: v6, Family: policy.FamilyV6, Pos: policy.Pos{Line: 5}, Text: "allow from 2001:db8::/32 app Samba"},
		{Action: policy.Allow, Direction: policy.In, Proto: "tcp", ToPort: tcp, ToApp: "Samba", From: v6, Family: policy.FamilyV6, Pos: policy.Pos{Line: 5}, Text: "allow from 2001:db8::/32 app Samba"},
		{Action: policy.Deny, Direction: policy.In, Proto: "tcp", ToPort: policy.Ports{{First: 445, Last: 445}}, Pos: policy.Pos{Line: 6}, Text: "deny 445/tcp"},
	})
	got := Shadowed(p)
	var lines []string
	for _, c := range got {
		lines = append(lines, fmt.Sprintf("%d by %d", c.Rule.Pos.Line, c.By.Pos.Line))
	}
	if strings.Join(lines, ", ") != "5 by 4, 6 by 4" {
		t.Errorf("covered: %q, want 5 by 4, 6 by 4", lines)
	}
}

// TestShadowedProfilePartlyCovered: a profile line of which one protocol
// is covered still matches the other's packets: it is not called dead.
func TestShadowedProfilePartlyCovered(t *testing.T) {
	p := policy.New()
	p.SetRules([]policy.Rule{
		{Action: policy.Deny, Direction: policy.In, Proto: "udp", ToPort: policy.Ports{{First: 137, Last: 138}}, Pos: policy.Pos{Line: 3}, Text: "deny 137:138/udp"},
		{Action: policy.Allow, Direction: policy.In, Proto: "udp", ToPort: policy.Ports{{First: 137, Last: 138}}, ToApp: "Samba", Pos: policy.Pos{Line: 4}, Text: "allow Samba"},
		{Action: policy.Allow, Direction: policy.In, Proto: "tcp", ToPort: policy.Ports{{First: 139, Last: 139}, {First: 445, Last: 445}}, ToApp: "Samba", Pos: policy.Pos{Line: 4}, Text: "allow Samba"},
	})
	if got := Shadowed(p); len(got) != 0 {
		t.Errorf("covered: %v, want none (Samba's tcp part matches)", got)
	}
}
