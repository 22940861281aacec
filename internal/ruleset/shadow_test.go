package ruleset

import (
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
