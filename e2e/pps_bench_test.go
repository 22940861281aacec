package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/lab"
)

// BenchmarkPacketRate measures what the server's whole input path costs a
// packet, for: no firewall, conntrack only, the best hand-written
// rulesets (nftables; iptables with ipset) holding the same 100,000
// blocked networks and 10,000 bans with their drops in raw prerouting,
// moat on both backends with 0 and 100,000 blocked networks (a blocklist)
// and 10,000 bans on top, and moat's ruleset with one built-in rule (or
// its counters) repeated, to price each.
//
// A raw AF_PACKET socket in the client namespace sends built Ethernet
// frames (IPv4 UDP to the server's port 9), and a table at input priority
// 1000 counts and drops what reaches the end of the path. veth delivers
// in the sender's context: the receive path, netfilter included, runs in
// the sending thread's softirq, so the CPU time that thread spends
// (CLOCK_THREAD_CPUTIME_ID around a fixed number of sendto calls, on a
// locked thread) is the per-packet cost of the path, largely blind to
// the machine's other load, where packets per second of wall time were
// not. Variants are measured in interleaved rounds (forward, then
// backward), and each reports the median ns/packet, pps (per core,
// 1e9/ns) and ratios of pps against no firewall and against the
// hand-written ruleset of its backend, measured in the same run; a rule's
// variant reports its price (ns-per-rule: the full ruleset with ten more
// copies of the rule, less the full ruleset, over ten), the variant
// without counters what they cost (ns-saved).
//
// "one-flow" repeats one 5-tuple whose conntrack entry the server opened
// (ct state established); "new-flows" gives each packet a source port of
// its own (a new conntrack entry each).
//
//	go test -run XXX -bench PacketRate -benchtime 1x -timeout 30m ./e2e/     # as root
//
// A run killed before its cleanup (kill -9, the timeout) leaves its
// namespaces (moatpps-srv-PID-N, moatpps-cli-PID-N): the next e2e run
// removes them at its start (TestMain, lab.RemoveStale), and only those
// lab.NewNS made whose maker is gone (by PID and start time).
func BenchmarkPacketRate(b *testing.B) {
	// New flows take a source port each: rounds*perRound stays below the
	// 64,512 ports.
	rounds, perRound := 25, 2500
	if s := os.Getenv("MOAT_PPS_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	const amplify = 10
	dir := b.TempDir()
	v4, v6 := blockAddrs(100000)
	list := filepath.Join(dir, "big.list")
	writeFile(b, list, strings.Join(v4, "\n")+"\n"+strings.Join(v6, "\n")+"\n")

	type variant struct {
		name, backend string
		base          string // the variant a rule's variant is priced against
		topo          *lab.Topology
		sport         int
		ns            map[string][]float64
		sent          int
	}
	var vs []*variant
	// MOAT_PPS_ONLY (a regular expression) keeps only the variants it
	// matches, besides the baselines every ratio needs (with
	// MOAT_PPS_STRICT=1 those too: one variant alone, for a profile).
	var only *regexp.Regexp
	if s := os.Getenv("MOAT_PPS_ONLY"); s != "" {
		only = regexp.MustCompile(s)
	}
	strict := os.Getenv("MOAT_PPS_STRICT") == "1"
	add := func(name, backend, base string, setup func(b *testing.B, topo *lab.Topology, dir string)) {
		if only != nil && (strict || name != "no-firewall" && !strings.HasPrefix(name, "hand-")) && !only.MatchString(name) {
			return
		}
		if base != "" && !slices.ContainsFunc(vs, func(v *variant) bool { return v.name == base }) {
			return
		}
		topo, err := lab.NewTopology("moatpps", false)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			if err := topo.Close(); err != nil {
				b.Error(err)
			}
		})
		vdir := filepath.Join(dir, fmt.Sprint(len(vs)))
		if err := os.MkdirAll(vdir, 0o700); err != nil {
			b.Fatal(err)
		}
		if setup != nil {
			setup(b, topo, vdir)
		}
		runNS(b, topo.Server, "table inet count {\n\tchain in { type filter hook input priority 1000; udp dport 9 counter drop; }\n}\n", "nft", "-f", "-")
		vs = append(vs, &variant{name: name, backend: backend, base: base, topo: topo, sport: 1024, ns: map[string][]float64{}})
	}
	moatBinSetup := func(bin, backend string, blocked, bans bool, after func(b *testing.B, ns *lab.NS)) func(*testing.B, *lab.Topology, string) {
		return func(b *testing.B, topo *lab.Topology, dir string) {
			policy := "default deny incoming\nallow 22/tcp\nallow 9/udp\n"
			if blocked {
				policy += "blocklist big file " + list + "\n"
			}
			writeFile(b, filepath.Join(dir, "moat.conf"), policy)
			runIn(b, topo.Server, "", bin, "--config", filepath.Join(dir, "moat.conf"), "--backend", backend,
				"--state-dir", filepath.Join(dir, "state"), "enable", "--force")
			if bans {
				banMany(b, topo.Server, dir, backend, 10000)
			}
			if after != nil {
				after(b, topo.Server)
			}
		}
	}
	moatSetup := func(backend string, blocked, bans bool, after func(b *testing.B, ns *lab.NS)) func(*testing.B, *lab.Topology, string) {
		return moatBinSetup(moatBin, backend, blocked, bans, after)
	}

	add("no-firewall", "", "", nil)
	add("conntrack-only", "", "", func(b *testing.B, topo *lab.Topology, _ string) {
		runNS(b, topo.Server, "table inet conntrack {\n\tchain in { type filter hook input priority 0; ct state new counter; }\n}\n", "nft", "-f", "-")
	})
	add("hand-nftables", "nftables", "", func(b *testing.B, topo *lab.Topology, _ string) {
		runNS(b, topo.Server, handNftPath(v4, v6, 10000), "nft", "-f", "-")
	})
	add("hand-iptables", "iptables", "", func(b *testing.B, topo *lab.Topology, _ string) {
		sets, rules4, rules6 := handIptPath(v4, v6, 10000)
		runNS(b, topo.Server, sets, "ipset", "restore")
		runNS(b, topo.Server, rules4, "iptables-restore")
		runNS(b, topo.Server, rules6, "ip6tables-restore")
	})
	add("hand-nftables-same-protections", "nftables", "", func(b *testing.B, topo *lab.Topology, _ string) {
		runNS(b, topo.Server, handNftFull(v4, v6, 10000), "nft", "-f", "-")
	})
	add("hand-iptables-same-protections", "iptables", "", func(b *testing.B, topo *lab.Topology, _ string) {
		sets, rules4, rules6 := handIptFull(v4, v6, 10000)
		runNS(b, topo.Server, sets, "ipset", "restore")
		runNS(b, topo.Server, rules4, "iptables-restore")
		runNS(b, topo.Server, rules6, "ip6tables-restore")
	})
	for _, be := range backends {
		add("moat-"+be+"-0", be, "", moatSetup(be, false, false, nil))
		add("moat-"+be+"-100k", be, "", moatSetup(be, true, false, nil))
		add("moat-"+be+"-100k-bans-10k", be, "", moatSetup(be, true, true, nil))
		// MOAT_PPS_OLD names another moat binary (an older commit), measured
		// in the same rounds: old and new taking turns.
		if old := os.Getenv("MOAT_PPS_OLD"); old != "" {
			add("old-moat-"+be+"-100k-bans-10k", be, "", moatBinSetup(old, be, true, true, nil))
		}
	}
	// Each built-in rule's price: moat's full ruleset with ten more copies
	// of it right before it (a rule's cost is below the noise of one
	// measurement; ten copies are not). Counters: the full ruleset with
	// none.
	full := func(be string) string { return "moat-" + be + "-100k-bans-10k" }
	for _, r := range []string{"builtin:established", "builtin:loopback", "builtin:ndp", "builtin:invalid", "builtin:icmp", "builtin:icmpv6",
		"builtin:mld", "builtin:dhcp", "builtin:dhcpv6", "builtin:ban", "builtin:ndp-early", "blocklist:big"} {
		add("nftables-"+strings.TrimPrefix(r, "builtin:")+"-x11", "nftables", full("nftables"), moatSetup("nftables", true, true, func(b *testing.B, ns *lab.NS) {
			nftCopyRules(b, ns, r, amplify)
		}))
	}
	add("nftables-without-counters", "nftables", full("nftables"), moatSetup("nftables", true, true, func(b *testing.B, ns *lab.NS) {
		nftDropCounters(b, ns)
	}))
	add("iptables-without-comments", "iptables", full("iptables"), moatSetup("iptables", true, true, func(b *testing.B, ns *lab.NS) {
		iptDropComments(b, ns)
	}))
	// What the two jumps still cost (the drops, then the input chain's
	// rules, moved into the built-in chains: no jump, no return).
	for name, f := range map[string]func(string, []string) []string{"iptables-no-raw-jump": iptNoRawJump, "iptables-no-input-jump": iptNoInputJump} {
		add(name, "iptables", full("iptables"), moatSetup("iptables", true, true, func(b *testing.B, ns *lab.NS) {
			iptRewrite(b, ns, f)
		}))
	}
	// (The raw jump taken only by a listed source, the early list,
	// measured here as iptables-listset-jump in the fifth session, is
	// moat's layout since the sixth: MOAT_PPS_OLD prices it against the
	// one before.)
	// (iptables' established accept is the input jump's condition: the
	// jump variant prices it.)
	for _, r := range []string{"builtin:loopback", "builtin:invalid", "builtin:icmp", "builtin:dhcp", "builtin:ban", "blocklist:big"} {
		add("iptables-"+strings.TrimPrefix(r, "builtin:")+"-x11", "iptables", full("iptables"), moatSetup("iptables", true, true, func(b *testing.B, ns *lab.NS) {
			iptCopyRules(b, ns, r, amplify)
		}))
	}

	flows := []string{"one-flow", "new-flows"}
	for round := 0; round < rounds; round++ {
		order := slices.Clone(vs)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, v := range order {
			for _, f := range flows {
				if f == "one-flow" {
					openFlow(b, v.topo)
				}
				ns, next := sendTimed(b, v.topo, f == "new-flows", v.sport, perRound)
				if f == "new-flows" {
					v.sport = next
				}
				v.ns[f] = append(v.ns[f], ns)
				v.sent += perRound
			}
		}
	}
	// The median round, and the quickest (the one least disturbed by the
	// machine's other load; a path cannot cost less than it does).
	medians, mins := map[string]float64{}, map[string]float64{}
	for _, v := range vs {
		if got := countAtEnd(b, v.topo); got < v.sent*99/100 {
			b.Errorf("%s: only %d of %d packets reached the end of the input path", v.name, got, v.sent)
		}
		for _, f := range flows {
			medians[f+"/"+v.name] = medianF(v.ns[f])
			mins[f+"/"+v.name] = slices.Min(v.ns[f])
		}
	}
	for _, f := range flows {
		for _, v := range vs {
			ns := medians[f+"/"+v.name]
			b.Run(f+"/"+v.name, func(b *testing.B) {
				b.ReportMetric(ns, "ns/pkt")
				b.ReportMetric(1e9/ns, "pps")
				b.ReportMetric(medians[f+"/no-firewall"]/ns, "x-no-firewall")
				if v.backend != "" {
					b.ReportMetric(medians[f+"/hand-"+v.backend]/ns, "x-hand")
					b.ReportMetric(mins[f+"/hand-"+v.backend]/mins[f+"/"+v.name], "x-hand-min")
					if same, ok := medians[f+"/hand-"+v.backend+"-same-protections"]; ok {
						b.ReportMetric(same/ns, "x-hand-same")
					}
				}
				switch {
				case v.base != "" && strings.HasSuffix(v.name, "-x11"):
					b.ReportMetric((ns-medians[f+"/"+v.base])/amplify, "ns-per-rule")
				case v.base != "":
					b.ReportMetric(medians[f+"/"+v.base]-ns, "ns-saved")
				}
			})
		}
	}
}

// run runs a command with stdin in ns.
func runNS(b *testing.B, ns *lab.NS, stdin string, name string, args ...string) {
	b.Helper()
	if out, err := nsRunner(ns)(context.Background(), []byte(stdin), name, args...); err != nil {
		b.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func medianF(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// handNftPath is the best hand-written nftables ruleset for moat's
// default policy with a 100k blocklist and bans: the drops in raw
// prerouting (before conntrack), then a filter chain.
func handNftPath(v4, v6 []string, bans int) string {
	var els []string
	for i := 0; i < bans; i++ {
		els = append(els, fmt.Sprintf("100.64.%d.%d timeout 1h", i>>8, i&255))
	}
	return "table inet hand {\n" +
		"\tset ban4 { type ipv4_addr; flags timeout; elements = { " + strings.Join(els, ", ") + " }; }\n" +
		"\tset ban6 { type ipv6_addr; flags timeout; }\n" +
		"\tset b4 { type ipv4_addr; flags interval; elements = { " + strings.Join(v4, ", ") + " }; }\n" +
		"\tset b6 { type ipv6_addr; flags interval; elements = { " + strings.Join(v6, ", ") + " }; }\n" +
		"\tchain pre { type filter hook prerouting priority raw; policy accept;\n" +
		"\t\tip saddr @ban4 drop\n\t\tip saddr @b4 drop\n\t\tip6 saddr @ban6 drop\n\t\tip6 saddr @b6 drop\n\t}\n" +
		"\tchain input { type filter hook input priority 0; policy drop;\n" +
		"\t\tct state established,related accept\n\t\tct state invalid drop\n\t\tiif lo accept\n" +
		"\t\ttcp dport 22 accept\n\t\tudp dport 9 accept\n\t}\n}\n"
}

// handIptPath is the same for iptables and ipset.
func handIptPath(v4, v6 []string, bans int) (sets, rules4, rules6 string) {
	var s strings.Builder
	s.WriteString("create ban4 hash:ip family inet timeout 0 maxelem 1048576\ncreate ban6 hash:ip family inet6 timeout 0 maxelem 1048576\n")
	s.WriteString("create b4 hash:net family inet maxelem 1048576\ncreate b6 hash:net family inet6 maxelem 1048576\n")
	for i := 0; i < bans; i++ {
		fmt.Fprintf(&s, "add ban4 100.64.%d.%d timeout 3600\n", i>>8, i&255)
	}
	for i := range v4 {
		fmt.Fprintf(&s, "add b4 %s\nadd b6 %s\n", v4[i], v6[i])
	}
	rules := func(fam string) string {
		return "*raw\n-A PREROUTING -m set --match-set ban" + fam + " src -j DROP\n-A PREROUTING -m set --match-set b" + fam + " src -j DROP\nCOMMIT\n" +
			"*filter\n:INPUT DROP [0:0]\n-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A INPUT -m conntrack --ctstate INVALID -j DROP\n" +
			"-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp --dport 22 -j ACCEPT\n-A INPUT -p udp --dport 9 -j ACCEPT\nCOMMIT\n"
	}
	return s.String(), rules("4"), rules("6")
}

// handNftFull is handNftPath with the protections moat's default policy
// adds, written as an admin would write them (no counters): loopback, the
// protected set (empty) and forwarded packets spared by the early drops,
// neighbour discovery before them, and in the input chain neighbour
// discovery, ICMP and ICMPv6 errors, MLD and DHCP/DHCPv6 client replies,
// without which IPv6 and DHCP break.
func handNftFull(v4, v6 []string, bans int) string {
	var els []string
	for i := 0; i < bans; i++ {
		els = append(els, fmt.Sprintf("100.64.%d.%d timeout 1h", i>>8, i&255))
	}
	ex4 := ` iifname != "lo" ip saddr != @protect4 fib daddr type != unicast drop`
	ex6 := ` iifname != "lo" ip6 saddr != @protect6 fib daddr type != unicast drop`
	nd := "ip6 hoplimit 255 icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept"
	return "table inet hand {\n" +
		"\tset ban4 { type ipv4_addr; flags timeout; elements = { " + strings.Join(els, ", ") + " }; }\n" +
		"\tset ban6 { type ipv6_addr; flags timeout; }\n" +
		"\tset protect4 { type ipv4_addr; flags interval; }\n" +
		"\tset protect6 { type ipv6_addr; flags interval; }\n" +
		"\tset b4 { type ipv4_addr; flags interval; elements = { " + strings.Join(v4, ", ") + " }; }\n" +
		"\tset b6 { type ipv6_addr; flags interval; elements = { " + strings.Join(v6, ", ") + " }; }\n" +
		"\tchain pre { type filter hook prerouting priority raw; policy accept;\n" +
		"\t\tip saddr @ban4" + ex4 + "\n\t\tip saddr @b4" + ex4 + "\n\t\t" + nd + "\n" +
		"\t\tip6 saddr @ban6" + ex6 + "\n\t\tip6 saddr @b6" + ex6 + "\n\t}\n" +
		"\tchain input { type filter hook input priority 0; policy drop;\n" +
		"\t\tct state established,related accept\n\t\tiif lo accept\n\t\t" + nd + "\n\t\tct state invalid drop\n" +
		"\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem } accept\n" +
		"\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept\n" +
		"\t\tip6 saddr fe80::/10 icmpv6 type { mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report } accept\n" +
		"\t\tmeta nfproto ipv4 udp sport 67 udp dport 68 accept\n" +
		"\t\tip6 saddr fe80::/10 udp sport 547 udp dport 546 accept\n" +
		"\t\ttcp dport 22 accept\n\t\tudp dport 9 accept\n\t}\n}\n"
}

// handIptFull is handIptPath with the same protections.
func handIptFull(v4, v6 []string, bans int) (sets, rules4, rules6 string) {
	sets, _, _ = handIptPath(v4, v6, bans)
	sets += "create protect4 hash:net family inet\ncreate protect6 hash:net family inet6\n"
	drop := func(set, fam, dst string) string {
		return "-A PREROUTING ! -i lo -m set --match-set " + set + " src -m set ! --match-set protect" + fam + " src " + dst + " -j DROP\n"
	}
	head := "*filter\n:INPUT DROP [0:0]\n-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A INPUT -i lo -j ACCEPT\n"
	tail := "-A INPUT -p tcp --dport 22 -j ACCEPT\n-A INPUT -p udp --dport 9 -j ACCEPT\nCOMMIT\n"
	rules4 = "*raw\n" + drop("ban4", "4", "-m addrtype ! --dst-type UNICAST") + drop("b4", "4", "-m addrtype ! --dst-type UNICAST") + "COMMIT\n" +
		head + "-A INPUT -m conntrack --ctstate INVALID -j DROP\n" +
		"-A INPUT -p icmp --icmp-type 3 -j ACCEPT\n-A INPUT -p icmp --icmp-type 11 -j ACCEPT\n-A INPUT -p icmp --icmp-type 12 -j ACCEPT\n" +
		"-A INPUT -p udp --sport 67 --dport 68 -j ACCEPT\n" + tail
	ndRules := func(chain, verdict string) string {
		var out strings.Builder
		for _, t := range []string{"133", "134", "135", "136"} {
			fmt.Fprintf(&out, "-A %s -m hl --hl-eq 255 -p ipv6-icmp --icmpv6-type %s -j %s\n", chain, t, verdict)
		}
		return out.String()
	}
	rules6 = "*raw\n" + ndRules("PREROUTING", "ACCEPT") +
		drop("ban6", "6", "-m addrtype --dst-type LOCAL") + "-A PREROUTING -d ff00::/8 ! -i lo -m set --match-set ban6 src -m set ! --match-set protect6 src -j DROP\n" +
		drop("b6", "6", "-m addrtype --dst-type LOCAL") + "-A PREROUTING -d ff00::/8 ! -i lo -m set --match-set b6 src -m set ! --match-set protect6 src -j DROP\n" +
		"COMMIT\n" + head + ndRules("INPUT", "ACCEPT") + "-A INPUT -m conntrack --ctstate INVALID -j DROP\n"
	for _, t := range []string{"1", "2", "3", "4"} {
		rules6 += "-A INPUT -p ipv6-icmp --icmpv6-type " + t + " -j ACCEPT\n"
	}
	for _, t := range []string{"130", "131", "132", "143"} {
		rules6 += "-A INPUT -s fe80::/10 -p ipv6-icmp --icmpv6-type " + t + " -j ACCEPT\n"
	}
	rules6 += "-A INPUT -s fe80::/10 -p udp --sport 547 --dport 546 -j ACCEPT\n" + tail
	return sets, rules4, rules6
}

// nftPathChains are moat's chains an incoming packet can pass.
var nftPathChains = []string{"prerouting", "input", "input_icmp", "input_udp"}

var nftHandle = regexp.MustCompile(`^\s*(.*?)\s*# handle (\d+)$`)

// nftRules lists moat's rules of a chain: text (with counters) and handle.
func nftRules(b *testing.B, ns *lab.NS, chain string) [][2]string {
	b.Helper()
	out, err := ns.Run(context.Background(), "nft", "-a", "list", "chain", "inet", "moat", chain)
	if err != nil && strings.Contains(string(out), "No such file or directory") {
		return nil // a gated chain this policy does not have
	}
	if err != nil {
		b.Fatalf("nft list chain %s: %v\n%s", chain, err, out)
	}
	var rules [][2]string
	for _, line := range strings.Split(string(out), "\n") {
		if m := nftHandle.FindStringSubmatch(line); m != nil && strings.Contains(m[1], "comment ") {
			rules = append(rules, [2]string{m[1], m[2]})
		}
	}
	return rules
}

// nftCopyRules inserts n copies of each of moat's rules tagged tag right
// before it (a copy of an accepting rule accepts what the rule would).
func nftCopyRules(b *testing.B, ns *lab.NS, tag string, n int) {
	b.Helper()
	found := 0
	for _, chain := range nftPathChains {
		for _, r := range nftRules(b, ns, chain) {
			if !strings.HasSuffix(r[0], `comment "`+tag+`"`) {
				continue
			}
			found++
			text := nftCounter.ReplaceAllString(r[0], "counter ")
			var script strings.Builder
			for i := 0; i < n; i++ {
				fmt.Fprintf(&script, "insert rule inet moat %s position %s %s\n", chain, r[1], text)
			}
			runNS(b, ns, script.String(), "nft", "-f", "-")
		}
	}
	if found == 0 {
		b.Fatalf("no rule %s", tag)
	}
}

var nftCounter = regexp.MustCompile(`counter packets \d+ bytes \d+ `)

// nftDropCounters replaces each rule of moat's prerouting and input chains
// by the same rule without its counter.
func nftDropCounters(b *testing.B, ns *lab.NS) {
	b.Helper()
	for _, chain := range nftPathChains {
		for _, r := range nftRules(b, ns, chain) {
			if nftCounter.MatchString(r[0]) {
				runNS(b, ns, "", "nft", "replace", "rule", "inet", "moat", chain, "handle", r[1], nftCounter.ReplaceAllString(r[0], ""))
			}
		}
	}
}

// iptCopyRules inserts n copies of each of moat's IPv4 rules tagged tag
// right before the first of them.
func iptCopyRules(b *testing.B, ns *lab.NS, tag string, n int) {
	b.Helper()
	found := 0
	for _, table := range []string{"raw", "filter"} {
		out, err := ns.Run(context.Background(), "iptables", "-t", table, "-S")
		if err != nil {
			b.Fatal(err)
		}
		pos := map[string]int{}
		var chain string
		var first int
		var specs []string
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "-A" {
				continue
			}
			pos[f[1]]++
			if strings.HasPrefix(f[1], "MOAT-") && (strings.Contains(line, `--comment "`+tag+`"`) || strings.Contains(line, "--comment "+tag+" ")) {
				if specs == nil {
					chain, first = f[1], pos[f[1]]
				}
				specs = append(specs, strings.ReplaceAll(strings.TrimPrefix(line, "-A "+f[1]+" "), `"`, ""))
			}
		}
		if specs == nil {
			continue
		}
		found++
		var script strings.Builder
		fmt.Fprintf(&script, "*%s\n", table)
		for i := 0; i < n; i++ {
			for _, spec := range specs {
				fmt.Fprintf(&script, "-I %s %d %s\n", chain, first, spec)
			}
		}
		script.WriteString("COMMIT\n")
		runNS(b, ns, script.String(), "iptables-restore", "--noflush")
	}
	if found == 0 {
		b.Fatalf("no rule %s", tag)
	}
}

var iptComment = regexp.MustCompile(` -m comment --comment ("[^"]*"|\S+)`)

// iptDropComments reloads moat's IPv4 rules without their comments (the
// tags status reads counters by): what the comment match costs.
func iptDropComments(b *testing.B, ns *lab.NS) {
	b.Helper()
	for _, table := range []string{"raw", "filter"} {
		out, err := ns.Run(context.Background(), "iptables-save", "-t", table)
		if err != nil {
			b.Fatal(err)
		}
		var s strings.Builder
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "-A MOAT-") && !strings.HasPrefix(line, "-A MOAT-GEN") {
				line = iptComment.ReplaceAllString(line, "")
			}
			s.WriteString(line + "\n")
		}
		runNS(b, ns, s.String(), "iptables-restore")
	}
}

// banMany bans n addresses of 100.64.0.0/10 (never the client's) in moat's
// ban sets, in one batch.
func banMany(b *testing.B, ns *lab.NS, dir, backend string, n int) {
	b.Helper()
	var s strings.Builder
	if backend == "nftables" {
		var els []string
		for i := 0; i < n; i++ {
			els = append(els, fmt.Sprintf("100.64.%d.%d timeout 1h", i>>8, i&255))
		}
		s.WriteString("add element inet moat ban4 { " + strings.Join(els, ", ") + " }\n")
		runNS(b, ns, s.String(), "nft", "-f", "-")
		return
	}
	for i := 0; i < n; i++ {
		fmt.Fprintf(&s, "add moat-ban4 100.64.%d.%d timeout 3600 -exist\n", i>>8, i&255)
	}
	runNS(b, ns, s.String(), "ipset", "restore")
}

// openFlow has the server send one datagram from its port 9 to the
// client's port 40000: the client's packets of that 5-tuple are then
// replies of an established conntrack entry.
func openFlow(b *testing.B, topo *lab.Topology) {
	b.Helper()
	err := topo.Server.Do(func() error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: lab.ServerV4.AsSlice(), Port: 9}, &net.UDPAddr{IP: lab.ClientV4.AsSlice(), Port: 40000})
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }() // a datagram socket: nothing to flush
		_, err = c.Write([]byte("open"))
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
}

var countRe = regexp.MustCompile(`counter packets (\d+)`)

// sendTimed sends n frames from the client to the server's UDP port 9 and
// returns the sending thread's CPU time per frame in ns. With newFlows
// each frame has a source port of its own, from sport on; it returns the
// next free one.
func sendTimed(b *testing.B, topo *lab.Topology, newFlows bool, sport, n int) (float64, int) {
	b.Helper()
	var dstMAC net.HardwareAddr
	if err := topo.Server.Do(func() error {
		i, err := net.InterfaceByName("eth0")
		if err == nil {
			dstMAC = i.HardwareAddr
		}
		return err
	}); err != nil {
		b.Fatal(err)
	}
	var perPacket float64
	err := topo.Client.Do(func() error {
		i, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer func() { _ = unix.Close(fd) }() // a send socket: nothing to flush
		addr := &unix.SockaddrLinklayer{Ifindex: i.Index, Halen: 6}
		copy(addr.Addr[:], dstMAC)
		frame := udpFrame(i.HardwareAddr, dstMAC, 40000)
		var t0, t1 unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t0); err != nil {
			return err
		}
		for sent := 0; sent < n; {
			if newFlows {
				setSport(frame, uint16(sport))
				sport++
				if sport > 65535 {
					sport = 1024
				}
			}
			if err := unix.Sendto(fd, frame, 0, addr); err != nil {
				if err == unix.ENOBUFS || err == unix.EAGAIN {
					continue
				}
				return err
			}
			sent++
		}
		if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t1); err != nil {
			return err
		}
		perPacket = float64(t1.Nano()-t0.Nano()) / float64(n)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return perPacket, sport
}

// countAtEnd reads the packets counted at the end of the input path.
func countAtEnd(b *testing.B, topo *lab.Topology) int {
	b.Helper()
	out, err := topo.Server.Run(context.Background(), "nft", "list", "table", "inet", "count")
	if err != nil {
		b.Fatal(err)
	}
	m := countRe.FindSubmatch(out)
	if m == nil {
		b.Fatalf("no counter:\n%s", out)
	}
	n, err := strconv.Atoi(string(m[1]))
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// udpFrame is an Ethernet frame with an IPv4 UDP packet from the client
// (192.0.2.2) to the server's port 9 (192.0.2.1), 18 bytes of payload.
func udpFrame(src, dst net.HardwareAddr, sport uint16) []byte {
	f := make([]byte, 14+20+8+18)
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(len(f)-14))
	ip[8] = 64
	ip[9] = 17
	copy(ip[12:16], []byte{192, 0, 2, 2})
	copy(ip[16:20], []byte{192, 0, 2, 1})
	binary.BigEndian.PutUint16(ip[10:12], ipChecksum(ip))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:2], sport)
	binary.BigEndian.PutUint16(udp[2:4], 9)
	binary.BigEndian.PutUint16(udp[4:6], uint16(8+18))
	return f // UDP checksum 0: none, valid for IPv4
}

func setSport(f []byte, sport uint16) { binary.BigEndian.PutUint16(f[34:36], sport) }

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i : i+2]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// iptRewrite reloads the IPv4 raw and filter tables as f rewrites them.
func iptRewrite(b *testing.B, ns *lab.NS, f func(table string, lines []string) []string) {
	b.Helper()
	for _, table := range []string{"raw", "filter"} {
		out, err := ns.Run(context.Background(), "iptables-save", "-t", table)
		if err != nil {
			b.Fatal(err)
		}
		lines := f(table, strings.Split(string(out), "\n"))
		runNS(b, ns, strings.Join(lines, "\n")+"\n", "iptables-restore")
	}
}

func mapLines(lines []string, f func(string) []string) []string {
	var out []string
	for _, l := range lines {
		out = append(out, f(l)...)
	}
	return out
}

// iptNoRawJump moves moat's IPv4 drops into raw PREROUTING itself, without
// the jump (nor the loopback exemption it carries).
func iptNoRawJump(_ string, lines []string) []string {
	return mapLines(lines, func(l string) []string {
		if strings.HasPrefix(l, "-A PREROUTING ") && strings.HasSuffix(l, " -j MOAT-PREROUTING") {
			return nil
		}
		return []string{strings.Replace(l, "-A MOAT-PREROUTING ", "-A PREROUTING ", 1)}
	})
}

// iptNoInputJump moves moat's IPv4 input rules into INPUT itself, the
// established accept first, moat's returns made accepts.
func iptNoInputJump(_ string, lines []string) []string {
	return mapLines(lines, func(l string) []string {
		switch {
		case strings.HasPrefix(l, "-A INPUT ") && strings.HasSuffix(l, " -j MOAT-INPUT"):
			return []string{"-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"}
		case strings.HasPrefix(l, "-A MOAT-INPUT "):
			l = strings.Replace(l, "-A MOAT-INPUT ", "-A INPUT ", 1)
			return []string{strings.Replace(l, " -j RETURN", " -j ACCEPT", 1)}
		}
		return []string{l}
	})
}
