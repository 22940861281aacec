package e2e

import (
	"testing"
)

// behaviourCase is a policy and the fate of probes under it.
type behaviourCase struct {
	name   string
	policy string
	routed bool // build the backend host behind the server
	seq    bool // send probes one after another (rate limits)
	probes []string
}

// The addresses: server 192.0.2.1 / 2001:db8::1, client 192.0.2.2 /
// 2001:db8::2 (also .3, .4, ::3, ::4), backend 198.51.100.2 /
// 2001:db8:1::2 behind the server's eth1.
var behaviourCases = []behaviourCase{
	{name: "guide: default deny, allow ssh", policy: "default deny incoming\nallow 22/tcp\n", probes: []string{
		"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open",
		"client tcp 192.0.2.1:80 timeout", "client tcp [2001:db8::1]:80 timeout",
		"client udp 192.0.2.1:53 timeout", "client udp [2001:db8::1]:53 timeout",
		"client icmp 192.0.2.1 timeout", "client icmp 2001:db8::1 timeout",
		"server tcp 192.0.2.2:80 open", "server tcp [2001:db8::2]:80 open",
		"server udp 192.0.2.2:53 open", "server udp [2001:db8::2]:53 open",
		"server icmp 192.0.2.2 open", "server icmp 2001:db8::2 open",
	}},
	{name: "empty policy denies incoming like ufw", policy: "", probes: []string{
		"client tcp 192.0.2.1:22 timeout", "client tcp [2001:db8::1]:80 timeout", "server tcp 192.0.2.2:80 open",
	}},
	{name: "port without proto is tcp and udp", policy: "allow 53\n", probes: []string{
		"client tcp 192.0.2.1:53 open", "client udp 192.0.2.1:53 open",
		"client tcp [2001:db8::1]:53 open", "client udp [2001:db8::1]:53 open", "client udp 192.0.2.1:123 timeout",
	}},
	{name: "udp port only", policy: "allow 53/udp\n", probes: []string{
		"client udp 192.0.2.1:53 open", "client udp [2001:db8::1]:53 open",
		"client tcp 192.0.2.1:53 timeout", "client tcp [2001:db8::1]:53 timeout",
	}},
	{name: "port list", policy: "allow 80,443/tcp\n", probes: []string{
		"client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:443 open",
		"client tcp 192.0.2.1:22 timeout", "client tcp [2001:db8::1]:8080 timeout",
	}},
	{name: "tcp port range", policy: "allow 6000:6007/tcp\n", probes: []string{
		"client tcp 192.0.2.1:6000 open", "client tcp 192.0.2.1:6003 open", "client tcp [2001:db8::1]:6007 open",
		"client tcp 192.0.2.1:8080 timeout", "client udp 192.0.2.1:6000 timeout",
	}},
	{name: "udp port range", policy: "allow 6000:6007/udp\n", probes: []string{
		"client udp 192.0.2.1:6000 open", "client udp [2001:db8::1]:6007 open", "client tcp 192.0.2.1:6000 timeout",
	}},
	{name: "service name", policy: "allow ssh\nallow http\n", probes: []string{
		"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:80 open", "client tcp 192.0.2.1:443 timeout",
	}},
	{name: "reject auth answers with a reset", policy: "reject auth\n", probes: []string{
		"client tcp 192.0.2.1:113 refused", "client tcp [2001:db8::1]:113 refused", "client tcp 192.0.2.1:80 timeout",
	}},
	{name: "reject udp answers port unreachable", policy: "reject 53/udp\n", probes: []string{
		"client udp 192.0.2.1:53 refused", "client udp [2001:db8::1]:53 refused", "client tcp 192.0.2.1:53 timeout",
	}},
	{name: "reject without proto", policy: "reject 53\n", probes: []string{
		"client udp 192.0.2.1:53 refused", "client tcp 192.0.2.1:53 refused", "client tcp [2001:db8::1]:53 refused",
	}},
	{name: "deny under default allow", policy: "default allow incoming\ndeny 22/tcp\n", probes: []string{
		"client tcp 192.0.2.1:22 timeout", "client tcp [2001:db8::1]:22 timeout",
		"client tcp 192.0.2.1:80 open", "client udp [2001:db8::1]:53 open", "client icmp 192.0.2.1 open",
	}},
	{name: "default reject incoming", policy: "default reject incoming\n", probes: []string{
		"client tcp 192.0.2.1:80 refused", "client tcp [2001:db8::1]:80 refused",
		"client udp 192.0.2.1:53 refused", "client icmp 192.0.2.1 refused", "client icmp 2001:db8::1 refused",
	}},
	{name: "default allow incoming", policy: "default allow incoming\n", probes: []string{
		"client tcp 192.0.2.1:80 open", "client udp [2001:db8::1]:53 open", "client icmp 2001:db8::1 open",
	}},
	{name: "deny from one address", policy: "default allow incoming\ndeny from 192.0.2.3\ndeny from 2001:db8::3\n", probes: []string{
		"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/192.0.2.2 tcp 192.0.2.1:80 open",
		"client/2001:db8::3 tcp [2001:db8::1]:80 timeout", "client/2001:db8::2 tcp [2001:db8::1]:80 open",
		"client/192.0.2.3 icmp 192.0.2.1 timeout",
	}},
	{name: "many deny-from rules share a set", policy: "default allow incoming\ndeny from 203.0.113.0/24\ndeny from 192.0.2.3\ndeny from 192.0.2.4/32\ndeny from 2001:db8::3\ndeny from 2001:db8::4\ndeny from 198.51.100.0/24\n", probes: []string{
		"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/192.0.2.4 udp 192.0.2.1:53 timeout", "client/192.0.2.2 tcp 192.0.2.1:80 open",
		"client/2001:db8::3 tcp [2001:db8::1]:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout", "client/2001:db8::2 tcp [2001:db8::1]:80 open",
	}},
	{name: "first matching rule wins: deny before allow", policy: "deny from 192.0.2.3\nallow 80/tcp\n", probes: []string{
		"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/192.0.2.2 tcp 192.0.2.1:80 open",
	}},
	{name: "first matching rule wins: allow before deny", policy: "default allow incoming\nallow 80/tcp\ndeny from 192.0.2.3\n", probes: []string{
		"client/192.0.2.3 tcp 192.0.2.1:80 open", "client/192.0.2.3 tcp 192.0.2.1:22 timeout", "client/192.0.2.2 tcp 192.0.2.1:22 open",
	}},
	{name: "allow from an address", policy: "allow from 192.0.2.3\nallow from 2001:db8::3\n", probes: []string{
		"client/192.0.2.3 tcp 192.0.2.1:80 open", "client/192.0.2.3 udp 192.0.2.1:53 open", "client/192.0.2.3 icmp 192.0.2.1 open",
		"client/192.0.2.2 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:5432 open", "client/2001:db8::2 tcp [2001:db8::1]:5432 timeout",
	}},
	{name: "IPv4 source network is IPv4 only", policy: "allow from 192.0.2.0/24 to any port 80 proto tcp\n", probes: []string{
		"client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 timeout",
	}},
	{name: "IPv6 source network is IPv6 only", policy: "allow from 2001:db8::/64 to any port 80 proto tcp\n", probes: []string{
		"client tcp [2001:db8::1]:80 open", "client tcp 192.0.2.1:80 timeout",
	}},
	{name: "full syntax from address to port", policy: "allow proto tcp from 192.0.2.3 to any port 5432\nallow proto tcp from 2001:db8::3 to any port 5432\n", probes: []string{
		"client/192.0.2.3 tcp 192.0.2.1:5432 open", "client/192.0.2.2 tcp 192.0.2.1:5432 timeout",
		"client/2001:db8::3 tcp [2001:db8::1]:5432 open", "client/2001:db8::2 tcp [2001:db8::1]:5432 timeout",
		"client/192.0.2.3 tcp 192.0.2.1:80 timeout",
	}},
	{name: "destination address", policy: "allow to 192.0.2.1 port 80 proto tcp\nallow to 2001:db8::1 port 443 proto tcp\n", probes: []string{
		"client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 timeout", "client tcp [2001:db8::1]:443 open", "client tcp 192.0.2.1:443 timeout",
	}},
	{name: "source port", policy: "allow proto tcp from any port 1000:2000 to any port 80\n", probes: []string{
		"client/192.0.2.2:1500 tcp 192.0.2.1:80 open", "client/192.0.2.2:3000 tcp 192.0.2.1:80 timeout",
		"client/[2001:db8::2]:1999 tcp [2001:db8::1]:80 open", "client/[2001:db8::2]:2001 tcp [2001:db8::1]:80 timeout",
	}},
	{name: "incoming interface", policy: "allow in on eth0 to any port 80 proto tcp\nallow in on eth9 to any port 443 proto tcp\n", probes: []string{
		"client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open", "client tcp 192.0.2.1:443 timeout",
	}},
	{name: "interface wildcard", policy: "allow in on eth+ to any port 80 proto tcp\nallow in on wlan+ to any port 443 proto tcp\n", probes: []string{
		"client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open", "client tcp [2001:db8::1]:443 timeout",
	}},
	{name: "interface and source network", policy: "default allow incoming\ndeny in on eth0 from 192.0.2.0/24\n", probes: []string{
		"client tcp 192.0.2.1:80 timeout", "client tcp [2001:db8::1]:80 open",
	}},
	{name: "icmp allowed for IPv4 only", policy: "allow proto icmp from any\n", probes: []string{
		"client icmp 192.0.2.1 open", "client icmp 2001:db8::1 timeout",
	}},
	{name: "icmpv6 allowed for IPv6 only", policy: "allow proto ipv6-icmp from any\n", probes: []string{
		"client icmp 2001:db8::1 open", "client icmp 192.0.2.1 timeout",
	}},
	{name: "deny outgoing port", policy: "deny out 80/tcp\n", probes: []string{
		"server tcp 192.0.2.2:80 timeout", "server tcp [2001:db8::2]:80 timeout",
		"server tcp 192.0.2.2:25 open", "server udp [2001:db8::2]:53 open",
	}},
	{name: "reject outgoing port", policy: "reject out 25/tcp\n", probes: []string{
		"server tcp 192.0.2.2:25 refused", "server tcp [2001:db8::2]:25 refused", "server tcp 192.0.2.2:80 open",
	}},
	{name: "default deny outgoing with an exception", policy: "default deny outgoing\nallow out 53/udp\n", probes: []string{
		"server udp 192.0.2.2:53 open", "server udp [2001:db8::2]:53 open",
		"server tcp 192.0.2.2:80 timeout", "server icmp 2001:db8::2 timeout",
	}},
	{name: "default reject outgoing", policy: "default reject outgoing\n", probes: []string{
		"server tcp 192.0.2.2:80 refused", "server tcp [2001:db8::2]:80 refused", "server udp 192.0.2.2:53 refused",
	}},
	{name: "outgoing to one address", policy: "default deny outgoing\nallow out to 192.0.2.2 port 80 proto tcp\n", probes: []string{
		"server tcp 192.0.2.2:80 open", "server tcp [2001:db8::2]:80 timeout", "server tcp 192.0.2.2:25 timeout",
	}},
	{name: "outgoing interface", policy: "default deny outgoing\nallow out on eth0 to any port 80 proto tcp\n", probes: []string{
		"server tcp 192.0.2.2:80 open", "server tcp [2001:db8::2]:80 open", "server tcp 192.0.2.2:25 timeout",
	}},
	{name: "limit refuses the sixth quick connection", policy: "limit 22/tcp\n", seq: true, probes: []string{
		"client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 open",
		"client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 refused",
		"client/192.0.2.3 tcp 192.0.2.1:22 open",
		"client tcp [2001:db8::1]:22 open", "client tcp [2001:db8::1]:22 open", "client tcp [2001:db8::1]:22 open",
		"client tcp [2001:db8::1]:22 open", "client tcp [2001:db8::1]:22 open", "client tcp [2001:db8::1]:22 refused",
	}},
	{name: "limit with a rate", policy: "limit ssh rate 3/60s\n", seq: true, probes: []string{
		"client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:22 refused",
		"client tcp [2001:db8::1]:22 open", "client tcp [2001:db8::1]:22 open", "client tcp [2001:db8::1]:22 refused",
	}},
	{name: "logged rule and comment still decide", policy: "allow log 22/tcp comment 'admins'\nallow log-all 80/tcp\n", probes: []string{
		"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:80 open", "client tcp 192.0.2.1:443 timeout",
	}},
	{name: "forwarding is left alone without route rules", policy: "default deny incoming\n", routed: true, probes: []string{
		"client tcp 198.51.100.2:80 open", "client tcp [2001:db8:1::2]:443 open", "backend tcp 192.0.2.2:80 open",
	}},
	{name: "route allow one service", policy: "default deny routed\nroute allow in on eth0 out on eth1 to 198.51.100.2 port 80 proto tcp\n", routed: true, probes: []string{
		"client tcp 198.51.100.2:80 open", "client tcp 198.51.100.2:443 timeout",
		"client tcp [2001:db8:1::2]:80 timeout", "backend tcp 192.0.2.2:80 timeout",
	}},
	{name: "route allow by interfaces", policy: "default deny routed\nroute allow in on eth0 out on eth1\n", routed: true, probes: []string{
		"client tcp 198.51.100.2:443 open", "client tcp [2001:db8:1::2]:80 open", "client udp [2001:db8:1::2]:53 open",
		"backend tcp 192.0.2.2:80 timeout", "backend tcp [2001:db8::2]:80 timeout",
	}},
	{name: "route reject", policy: "default allow routed\nroute reject in on eth0 out on eth1 to any port 443 proto tcp\n", routed: true, probes: []string{
		"client tcp 198.51.100.2:443 refused", "client tcp [2001:db8:1::2]:443 refused", "client tcp 198.51.100.2:80 open",
	}},
	{name: "route deny from a network", policy: "default allow routed\nroute deny from 192.0.2.0/24\n", routed: true, probes: []string{
		"client tcp 198.51.100.2:80 timeout", "client tcp [2001:db8:1::2]:80 open", "backend tcp 192.0.2.2:80 open",
	}},
	{name: "reject from an IPv6 address", policy: "default allow incoming\nreject from 2001:db8::3\n", probes: []string{
		"client/2001:db8::3 tcp [2001:db8::1]:80 refused", "client/2001:db8::3 udp [2001:db8::1]:53 refused",
		"client/2001:db8::2 tcp [2001:db8::1]:80 open", "client/192.0.2.3 tcp 192.0.2.1:80 open",
	}},
	{name: "allow from a network to a port list", policy: "allow from 192.0.2.0/24 to any port 22,80 proto tcp\nallow from 2001:db8::/64 to any port 22,443 proto tcp\n", probes: []string{
		"client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:443 timeout",
		"client tcp [2001:db8::1]:443 open", "client tcp [2001:db8::1]:80 timeout",
	}},
	{name: "established replies survive default deny both ways", policy: "default deny incoming\ndefault deny outgoing\nallow 22/tcp\nallow out 80/tcp\n", probes: []string{
		"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open",
		"server tcp 192.0.2.2:80 open", "server tcp [2001:db8::2]:80 open", "server tcp 192.0.2.2:25 timeout",
	}},
}

func TestBehaviourMatrix(t *testing.T) {
	t.Parallel()
	if len(behaviourCases) < 40 {
		t.Fatalf("only %d behaviour cases; want at least 40", len(behaviourCases))
	}
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			requireBackend(t, b)
			for _, c := range behaviourCases {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					e := newEnv(t, b, c.routed)
					e.apply(c.policy)
					e.expect(c.seq, c.probes...)
				})
			}
		})
	}
}
