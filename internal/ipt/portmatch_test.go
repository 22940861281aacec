package ipt

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/rulesettest"
)

// portSides are the port forms of one side of a rule: none, one port, a
// range, lists (multiport).
var portSides = []string{"", "80", "1000:2000", "80,443", "80,1000:2000"}

// portCombinations is a policy with a rule for every pair of source and
// destination port forms, for tcp and udp, incoming, outgoing and
// routed, IPv4 only, IPv6 only and both families.
func portCombinations() string {
	var b strings.Builder
	b.WriteString("default deny incoming\ndefault deny outgoing\ndefault deny routed\n")
	for _, verb := range []string{"allow", "allow out", "route allow"} {
		for _, from := range []string{"any", "0.0.0.0/0", "::/0"} {
			for _, proto := range []string{"tcp", "udp"} {
				for _, sp := range portSides {
					for _, dp := range portSides {
						if sp == "" && dp == "" {
							continue
						}
						rule := verb + " from " + from
						if sp != "" {
							rule += " port " + sp
						}
						rule += " to any"
						if dp != "" {
							rule += " port " + dp
						}
						fmt.Fprintf(&b, "%s proto %s\n", rule, proto)
					}
				}
			}
		}
	}
	return b.String()
}

// The rule of the report renders as iptables-restore reads it: the single
// destination port (tcp's own match) before the multiport source list.
func TestRenderSourceListDestinationPort(t *testing.T) {
	for _, c := range []struct{ policy, want string }{
		{"allow from ::/0 port 80,443 to any port 22 proto tcp\n", "-s ::/0 -p tcp --dport 22 -m multiport --sports 80,443 "},
		{"allow from any port 80,443 to any port 22 proto udp\n", "-p udp --dport 22 -m multiport --sports 80,443 "},
		{"allow from any port 80,443 to any port 1000:2000 proto tcp\n", "-p tcp --dport 1000:2000 -m multiport --sports 80,443 "},
		{"allow from any port 22 to any port 80,443 proto tcp\n", "-p tcp --sport 22 -m multiport --dports 80,443 "},
		{"allow from any port 22,23 to any port 80,443 proto tcp\n", "-p tcp -m multiport --sports 22,23 -m multiport --dports 80,443 "},
		{"allow from any port 22 to any port 80 proto tcp\n", "-p tcp --sport 22 --dport 80 "},
	} {
		rs := compile(t, c.policy)
		got := Render(rs, policy.FamilyV6, nil)
		if !strings.Contains(got, c.want) {
			t.Errorf("%q renders without %q:\n%s", c.policy, c.want, got)
		}
	}
}

// otherPortShapes puts lists and single ports next to the other matches:
// rate limits, logging, rejects, interfaces, addresses, the guards.
const otherPortShapes = `default deny incoming
guard sshd maxretry 5 findtime 10m bantime 1h
guard portscan ports 10 within 60s bantime 1h
allowlist 198.51.100.0/24 2001:db8:1::/48
logging full
limit from any port 80,443 to any port 22 proto tcp rate 6/30s
limit from any port 53 to any port 1000,2000 proto udp
reject from any port 80,443 to any port 22 proto tcp
reject log from any port 80,443 to any port 22 proto udp
deny log-all from any port 80,443 to any port 22 proto tcp
allow in on eth0 from 2001:db8::/32 port 80,443 to 2001:db8::1 port 22 proto tcp
`

// matchOpts are the long options of the matches moat renders, as
// iptables 1.8.9 defines them (`iptables -m NAME -h`).
var matchOpts = map[string][]string{
	"multiport": {"--source-ports", "--sports", "--destination-ports", "--dports", "--ports"},
	"conntrack": {"--ctstate", "--ctproto", "--ctorigsrc", "--ctorigdst", "--ctreplsrc", "--ctrepldst", "--ctorigsrcport", "--ctorigdstport", "--ctreplsrcport", "--ctrepldstport", "--ctstatus", "--ctexpire", "--ctdir"},
	"set":       {"--match-set", "--set", "--return-nomatch", "--update-counters", "--update-subcounters", "--packets-eq", "--packets-lt", "--packets-gt", "--bytes-eq", "--bytes-lt", "--bytes-gt"},
	"addrtype":  {"--src-type", "--dst-type", "--limit-iface-in", "--limit-iface-out"},
	"hl":        {"--hl-eq", "--hl-lt", "--hl-gt"},
	"hashlimit": {"--hashlimit-upto", "--hashlimit-above", "--hashlimit-burst", "--hashlimit-mode", "--hashlimit-name", "--hashlimit-srcmask", "--hashlimit-dstmask", "--hashlimit-htable-size", "--hashlimit-htable-max", "--hashlimit-htable-expire", "--hashlimit-htable-gcinterval", "--hashlimit-rate-match", "--hashlimit-rate-interval"},
	"limit":     {"--limit", "--limit-burst"},
	"comment":   {"--comment"},
	"tcp":       {"--source-port", "--sport", "--destination-port", "--dport", "--syn", "--tcp-flags", "--tcp-option"},
	"udp":       {"--source-port", "--sport", "--destination-port", "--dport"},
	"icmp":      {"--icmp-type"},
	"icmp6":     {"--icmpv6-type"},
	"LOG":       {"--log-level", "--log-prefix", "--log-tcp-sequence", "--log-tcp-options", "--log-ip-options", "--log-uid", "--log-macdecode"},
	"REJECT":    {"--reject-with"},
	"SET":       {"--add-set", "--del-set", "--map-set", "--timeout", "--exist", "--map-mark", "--map-prio", "--map-queue"},
}

// globalOpts are iptables' own long options.
var globalOpts = []string{"--append", "--check", "--delete", "--insert", "--replace", "--list", "--list-rules", "--flush", "--zero", "--new-chain", "--delete-chain", "--rename-chain", "--policy", "--source", "--src", "--destination", "--dst", "--protocol", "--in-interface", "--jump", "--table", "--match", "--numeric", "--out-interface", "--verbose", "--wait", "--wait-interval", "--exact", "--fragment", "--version", "--help", "--line-numbers", "--modprobe", "--set-counters", "--goto", "--ipv4", "--ipv6"}

// words splits a rule as iptables-restore does: a double-quoted argument
// is one word.
func words(line string) []string {
	var out []string
	for len(line) > 0 {
		line = strings.TrimLeft(line, " ")
		if line == "" {
			break
		}
		if line[0] == '"' {
			end := strings.IndexByte(line[1:], '"')
			if end < 0 {
				return append(out, line)
			}
			out = append(out, line[:end+2])
			line = line[end+2:]
			continue
		}
		w, rest, _ := strings.Cut(line, " ")
		out = append(out, w)
		line = rest
	}
	return out
}

// optionTrouble reads a rule's options as iptables' getopt_long does,
// over the options of what the rule loaded so far: an option that is no
// loaded extension's but begins one of theirs is taken as that one (its
// abbreviation: "--dport" after "-m multiport" is multiport's --dports),
// never as the option of -p's match iptables would load for it. It says
// what goes wrong, or "".
func optionTrouble(line string) string {
	loaded := [][]string{globalOpts}
	implicit := ""
	ws := words(line)
	for i := 0; i < len(ws); i++ {
		w := ws[i]
		switch {
		case (w == "-m" || w == "-j") && i+1 < len(ws):
			if opts, ok := matchOpts[ws[i+1]]; ok {
				loaded = append(loaded, opts)
			}
			i++
			continue
		case w == "-p" && i+1 < len(ws):
			implicit = map[string]string{"tcp": "tcp", "udp": "udp", "icmp": "icmp", "ipv6-icmp": "icmp6"}[ws[i+1]]
			i++
			continue
		case !strings.HasPrefix(w, "--"):
			continue
		}
		exact := false
		var prefixOf []string
		for _, opts := range loaded {
			for _, o := range opts {
				switch {
				case o == w:
					exact = true
				case strings.HasPrefix(o, w):
					prefixOf = append(prefixOf, o)
				}
			}
		}
		switch {
		case exact:
		case len(prefixOf) > 0:
			return fmt.Sprintf("%s is read as %s (an abbreviation)", w, strings.Join(prefixOf, " or "))
		case implicit != "" && slices.Contains(matchOpts[implicit], w):
			loaded = append(loaded, matchOpts[implicit])
			implicit = ""
		default:
			return fmt.Sprintf("%s is no option of the extensions loaded before it", w)
		}
	}
	return ""
}

func TestOptionTroubleModel(t *testing.T) {
	for line, bad := range map[string]bool{
		"-A MOAT-INPUT -p tcp -m multiport --sports 80,443 --dport 22 -j RETURN":                          true,
		"-A MOAT-INPUT -p tcp -m multiport --dports 80,443 --sport 22 -j RETURN":                          true,
		"-A MOAT-INPUT -p tcp --dport 22 -m multiport --sports 80,443 -j RETURN":                          false,
		"-A MOAT-INPUT -p tcp -m multiport --sports 1,2 -m multiport --dports 80,443 -j RETURN":           false,
		"-A MOAT-INPUT -p tcp --dport 22 -m limit --limit 3/min -m comment --comment \"--x y\" -j RETURN": false,
		"-A MOAT-INPUT -m limit --limit-b 3 -j RETURN":                                                    true,
		"-A MOAT-INPUT -p udp --syn -j RETURN":                                                            true,
	} {
		if got := optionTrouble(line) != ""; got != bad {
			t.Errorf("%s: trouble %v, want %v (%s)", line, got, bad, optionTrouble(line))
		}
	}
}

// No option moat renders is read as another's abbreviation, in any rule
// of the port combinations, the golden policy and the other shapes.
func TestRenderedOptionsReadAsWritten(t *testing.T) {
	golden, err := os.ReadFile("../nft/testdata/golden.policy")
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{
		"ports":  portCombinations(),
		"golden": string(golden),
		"other":  otherPortShapes,
		"more": `default reject incoming
default deny outgoing
default reject routed
logging high
limit 53/udp
allow out 53
reject out to 2001:db8::/32
route reject in on eth1 out on eth2 proto udp
allow proto icmp from 198.51.100.0/24
allow proto ipv6-icmp from 2001:db8::/32
allow in on wg+ log-all from 203.0.113.0/24
allow proto esp from 2001:db8::9
reject 6000:6007/tcp
deny log 23
`,
	} {
		rs := rulesettest.Compile(t, text, "ssh 22/tcp\nauth 113/tcp\n")
		for _, fam := range []policy.Family{policy.FamilyV4, policy.FamilyV6} {
			for _, l := range strings.Split(Render(rs, fam, nil), "\n") {
				if !strings.HasPrefix(l, "-A ") && !strings.HasPrefix(l, "-I ") {
					continue
				}
				if why := optionTrouble(l); why != "" {
					t.Errorf("%s %s: %s\n%s", name, fam, why, l)
				}
			}
		}
	}
}

// Every port combination loads into the kernel's iptables-restore (both
// families, tcp and udp, in, out and routed), and so do port lists next
// to the other matches; the check passes.
func TestKernelPortCombinations(t *testing.T) {
	ctx := context.Background()
	b := kernelBackend(t)
	other := compile(t, otherPortShapes)
	if err := b.Check(ctx, other); err != nil {
		t.Fatalf("check: %v", err)
	}
	if err := b.Apply(ctx, other); err != nil {
		t.Fatalf("apply: %v", err)
	}
	rs := compile(t, portCombinations())
	if err := b.Check(ctx, rs); err != nil {
		t.Fatalf("check: %v", err)
	}
	if err := b.Apply(ctx, rs); err != nil {
		t.Fatalf("apply: %v", err)
	}
	for _, prog := range []string{"iptables-save", "ip6tables-save"} {
		out, err := b.Run(ctx, nil, prog)
		if err != nil {
			t.Fatalf("%s: %v", prog, err)
		}
		for _, want := range []string{
			"-p tcp -m tcp --dport 80 -m multiport --sports 80,443 ",
			"-p udp -m udp --dport 1000:2000 -m multiport --sports 80,1000:2000 ",
			"-p udp -m udp --sport 80 -m multiport --dports 80,443 ",
			"-p tcp -m multiport --sports 80,443 -m multiport --dports 80,1000:2000 ",
		} {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s lists no rule with %q", prog, want)
			}
		}
	}
}
