package xtenc_test

import (
	"os"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/rulesettest"
	"github.com/moat-fw/moat/internal/xtenc"
)

// corpusPolicies are policies whose renderings hold every rule shape moat
// writes for iptables: the built-ins, logging at each level, rate limits,
// the port scan trap, interfaces, addresses of both families, port lists
// and ranges, every protocol, output and routed rules, reject variants,
// the MOAT-GEN record, the jumps.
var corpusPolicies = map[string]string{
	"readme": `default deny incoming
default allow outgoing
limit 22/tcp comment 'admins'
allow 80,443/tcp
deny from 203.0.113.0/24
allow proto tcp from 198.51.100.0/24 to any port 5432
route allow in on eth1 out on eth2 to 192.0.2.0/24 port 80 proto tcp
`,
	"guard": `default deny incoming
guard sshd maxretry 5 findtime 10m bantime 1h
guard portscan ports 10 within 60s bantime 1h
blocklist spamhaus_drop file /etc/moat/lists/drop.txt
blocklist cn file /etc/moat/lists/cn.zone
allowlist 198.51.100.0/24 2001:db8:1::/48
limit ssh rate 6/30s
logging full
allow 53
`,
	"output": `default allow incoming
default deny outgoing
default reject routed
logging medium
allow out 53
reject out to 2001:db8::/32
deny out on eth0 to 192.0.2.0/24 port 25 proto tcp
route reject in on eth1 out on eth2 proto udp
route deny from 2001:db8::/48 to 2001:db8:2::/48
route allow 8080/tcp
allow from 192.0.2.0/24 port 53 to any port 1000:2000 proto udp comment 'odd é € :;,.!?#%&*()[]{}<>=+~^|/@ text'
`,
	"protos": `default reject incoming
logging high
limit 53/udp
allow in on wg+ log-all from 203.0.113.0/24
reject proto igmp from any
allow proto vrrp from any
allow proto ah from any
allow proto gre to any
allow proto ipv6 from any
allow proto esp from 2001:db8::9
allow from 2001:db8::1 to 2001:db8::2 port 80,443,8000:8080 proto tcp
allow in on veth0123456789a to 192.0.2.1
reject 6000:6007/tcp
reject 7000/udp
deny log 23
`,
	"any": `default deny incoming
allow from 0.0.0.0/0 to any port 22 proto tcp
allow from ::/0 to any port 22 proto tcp
allow from 192.0.2.0/24 port 53,54 proto udp
allow from 192.0.2.0/24 port 67 to any port 68 proto udp
allow from ::/0 port 80,443 to any port 22 proto tcp
allow from 0.0.0.0/0 port 80,443 to any port 22 proto tcp
allow from any port 1000,2000 to any port 3000:4000 proto udp
allow out to any port 25,587 proto tcp
route allow from any port 80,443 to any port 8080,8443 proto tcp
`,
	"low": `default deny incoming
default reject outgoing
logging low
allow in log 22/tcp
allow proto icmp from 198.51.100.0/24
allow proto ipv6-icmp from 2001:db8::/32
`,
}

// renderedShapes are the parts of every shape moat renders: the corpus
// must hold each (a renderer change that adds a shape adds it here, and
// to the corpus).
var renderedShapes = []string{
	"-A MOAT-INPUT ", "-A MOAT-OUTPUT ", "-A MOAT-FORWARD ", "-A MOAT-PREROUTING ", "-A MOAT-GEN ",
	"-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT", "-A PREROUTING -m set --match-set moat-early",
	"-m conntrack --ctstate INVALID", "-m conntrack --ctstate NEW", "! -i lo ", " -i lo ", " -i eth1 ", " -o eth2 ", " -i wg+ ", " -o eth0 ",
	" -s 198.51.100.0/24 ", " -s 2001:db8::/32 ", " -d 192.0.2.0/24 ", " -d 2001:db8::2/128 ", " -d ff00::/8 ", " -s fe80::/10 ", " -s 0.0.0.0/0 ", " -s ::/0 ",
	"-m hl --hl-eq 255", "-m set --match-set ", "-m set ! --match-set ", " src,dst ",
	"-m addrtype --dst-type LOCAL", "-m addrtype ! --dst-type UNICAST", "-m addrtype ! --src-type LOCAL",
	"-p icmp --icmp-type ", "-p ipv6-icmp --icmpv6-type ", "--sport 67 --dport 68", "--dport 22 ", "--dport 6000:6007 ", "--dport 1000:2000 ",
	"-m multiport --dports 80,443", "-m multiport --sports 53,54", "-m multiport --dports 80,443,8000:8080",
	"-p tcp --dport 22 -m multiport --sports 80,443 ", "-p udp --dport 3000:4000 -m multiport --sports 1000,2000 ", "-m multiport --sports 80,443 -m multiport --dports 8080,8443 ",
	"-m hashlimit --hashlimit-above ", "-m limit --limit 3/min --limit-burst 10", "-j LOG --log-prefix ",
	"-j REJECT --reject-with tcp-reset", "-j REJECT\n", "-j SET --add-set ", " --timeout ", "-j DROP", "-j RETURN",
	"-p 50 ", "-p 51 ", "-p 47 ", "-p 2 ", "-p 112 ", "-p 41 ", "-p udp ", "-p tcp ",
	`--comment "builtin:`, `--comment "moat:gen `, "--match-set moat-bl4_", "--match-set moat-bl6_", `--comment "blocklist:`,
	"-A INPUT -j MOAT-INPUT", "-A PREROUTING ! -i lo -j MOAT-PREROUTING", `--comment "moat:set `, "€",
}

// ruleLines are the rules of a restore script as -A lines (a jump
// inserted with -I N as the same rule appended).
func ruleLines(script string) []string {
	var out []string
	for _, l := range strings.Split(script, "\n") {
		switch {
		case strings.HasPrefix(l, "-A "):
			out = append(out, l)
		case strings.HasPrefix(l, "-I "):
			f := strings.SplitN(l, " ", 4)
			out = append(out, "-A "+f[1]+" "+f[3])
		}
	}
	return out
}

func TestKernelCorpus(t *testing.T) {
	xtenc.SkipWithoutNft(t)
	golden, err := os.ReadFile("../nft/testdata/golden.policy")
	if err != nil {
		t.Fatal(err)
	}
	policies := map[string]string{"golden": string(golden)}
	for k, v := range corpusPolicies {
		policies[k] = v
	}
	var all strings.Builder
	// The jumps of earlier layouts, which moat still writes for them.
	policies["golden-plainjumps"] = string(golden)
	policies["guard-loopbackjump"] = corpusPolicies["guard"]
	for name, text := range policies {
		rs := rulesettest.Compile(t, text, "ssh 22/tcp\nauth 113/tcp\n")
		rs.PlainJumps = strings.HasSuffix(name, "-plainjumps")
		rs.LoopbackRawJump = strings.HasSuffix(name, "-loopbackjump")
		for fname, f := range xtenc.Families() {
			fam := policy.FamilyV4
			if fname == "inet6" {
				fam = policy.FamilyV6
			}
			lines := ruleLines(ipt.Render(rs, fam, nil))
			for _, l := range lines {
				all.WriteString(l + "\n")
			}
			t.Run(name+"/"+fname, func(t *testing.T) {
				t.Parallel()
				t.Logf("%d lines", len(lines))
				xtenc.CompareKernel(t, f, lines)
				xtenc.CompareWire(t, f, lines)
			})
		}
	}
	for _, s := range renderedShapes {
		if !strings.Contains(all.String(), s) {
			t.Errorf("no line of the corpus holds %q", s)
		}
	}
}
