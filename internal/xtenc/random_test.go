package xtenc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
)

// randomLine draws a line from the parts of moat's shapes, in orders and
// combinations the renderer does not write, with values at their limits.
func randomLine(rng *rand.Rand, proto uint8) string {
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	maybe := func(s string) string {
		if rng.IntN(2) == 0 {
			return ""
		}
		return s
	}
	v6 := proto == unix.NFPROTO_IPV6
	addr := func() string {
		if v6 {
			return pick("2001:db8::/32", "2001:db8::1/128", "2001:db8:8000::/33", "::/0", "fe80::/10", "ff00::/8", "2001:db8::/127", "2001:db8::/64,2001:db8:1::/64")
		}
		return pick("192.0.2.0/24", "192.0.2.1/32", "198.51.100.0/23", "0.0.0.0/0", "10.0.0.0/8", "128.0.0.0/1", "203.0.113.0/31", "192.0.2.0/24,198.51.100.7/32")
	}
	port := func() string { return pick("1", "22", "65535", "1:1024", "1024:65535", "80:81", "0", "70000") }
	var head, matches []string
	head = append(head, maybe(pick("-i eth0", "! -i lo", "-i eth+", "-i abcdefghijklmno", "-i abcdefghijklmnop")))
	head = append(head, maybe(pick("-o wg0", "! -o ppp+", "-o x")))
	head = append(head, maybe(pick("", "! ")+"-s "+addr()))
	head = append(head, maybe(pick("", "! ")+"-d "+addr()))
	p := pick("", "tcp", "udp", "icmp", "ipv6-icmp", "50", "47", "2", "112")
	rng.Shuffle(len(head), func(i, j int) { head[i], head[j] = head[j], head[i] })
	var l4 []string
	if p != "" {
		l4 = append(l4, "-p "+p)
		switch p {
		case "tcp", "udp":
			switch rng.IntN(4) {
			case 0:
				l4 = append(l4, "--sport "+port())
			case 1:
				l4 = append(l4, "--dport "+port())
			case 2:
				l4 = append(l4, "--sport "+port(), "--dport "+port())
			case 3:
				l4 = append(l4, "-m multiport "+pick("--dports ", "--sports ")+pick("22,80", "1:2,3", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16"))
			}
		case "icmp":
			l4 = append(l4, maybe("--icmp-type "+pick("0", "3", "8", "11", "254")))
		case "ipv6-icmp":
			l4 = append(l4, maybe("--icmpv6-type "+pick("1", "128", "135", "143")))
		}
	}
	if rng.IntN(2) == 0 {
		matches = append(matches, "-m conntrack "+pick("", "! ")+"--ctstate "+pick("NEW", "RELATED,ESTABLISHED", "INVALID", "NEW,UNTRACKED", "DNAT,SNAT"))
	}
	for range rng.IntN(3) {
		matches = append(matches, "-m set "+pick("", "! ")+"--match-set "+pick("moat-a", "moat-b", "moat-scan-60")+" "+pick("src", "dst", "src,dst"))
	}
	if rng.IntN(3) == 0 {
		matches = append(matches, "-m addrtype "+pick("", "! ")+pick("--dst-type ", "--src-type ")+pick("LOCAL", "UNICAST", "MULTICAST", "BROADCAST"))
	}
	if rng.IntN(4) == 0 {
		matches = append(matches, "-m hl --hl-eq "+pick("255", "1", "0"))
	}
	if rng.IntN(4) == 0 {
		matches = append(matches, "-m limit --limit "+pick("3/min", "1/sec", "10000/sec", "20000/sec", "1/day", "5/hour")+maybe(" --limit-burst "+pick("1", "10", "10000")))
	}
	if rng.IntN(4) == 0 {
		matches = append(matches, fmt.Sprintf("-m hashlimit --hashlimit-above %s --hashlimit-burst %s --hashlimit-mode srcip --hashlimit-name %s --hashlimit-htable-expire %s",
			pick("5/sec", "3/min", "1/day", "1000000/sec", "2000000/sec"), pick("1", "5", "10000"), pick("moat_a_4", "x"), pick("1", "120000", "4294967295")))
	}
	rng.Shuffle(len(matches), func(i, j int) { matches[i], matches[j] = matches[j], matches[i] })
	// The protocol's options may stand after other matches too.
	at := rng.IntN(len(matches) + 1)
	parts := append(head, matches[:at]...)
	parts = append(parts, l4...)
	parts = append(parts, matches[at:]...)
	if rng.IntN(3) > 0 {
		parts = append(parts, `-m comment --comment "`+pick("builtin:drop", "input:allow:1 web é", "x", "a'b", "moat:gen 0123", "100% (ok) [yes] {no} <x> =+~^|/@#&*;,.!?")+`"`)
	}
	t := pick("-j DROP", "-j RETURN", "-j ACCEPT", "-j MOAT-X", "-j REJECT", "-j REJECT --reject-with tcp-reset",
		"-j REJECT --reject-with "+pick("icmp-host-prohibited", "icmp6-adm-prohibited", "icmp-admin-prohibited", "icmp6-no-route"),
		`-j LOG --log-prefix "`+pick("[MOAT x] ", "p", "12345678901234567890123456789", "123456789012345678901234567890")+`"`+maybe(" --log-level "+pick("0", "7", "info", "debug")),
		"-j SET --add-set "+pick("moat-a", "moat-scan-60")+" "+pick("src", "src,dst")+maybe(" --timeout "+pick("0", "60", "3600"))+maybe(" --exist"))
	parts = append(parts, t)
	var out []string
	for _, s := range parts {
		if s != "" {
			out = append(out, s)
		}
	}
	return "-A MOAT-INPUT " + strings.Join(out, " ")
}

// TestKernelRandomLines: lines drawn at random are refused by the encoder
// when iptables-restore refuses them, and those both take are the same
// rules (compareKernel) and the same bytes on the wire (compareWire); the
// encoder may refuse more (ErrUnsupported).
func TestKernelRandomLines(t *testing.T) {
	skipWithoutNft(t)
	// A fixed seed keeps CI the same run after run; XTENC_SEED=random
	// (or a number) explores others.
	seed := uint64(1)
	switch v := os.Getenv("XTENC_SEED"); v {
	case "":
	case "random":
		seed = rand.Uint64()
	default:
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("XTENC_SEED %q", v)
		}
		seed = n
	}
	t.Logf("seed %d (XTENC_SEED)", seed)
	for _, f := range fams {
		t.Run(f.family, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, uint64(f.proto)))
			ns := labtest.NS(t, "xtencR")
			ctx := context.Background()
			var lines []string
			for range 150 {
				lines = append(lines, randomLine(rng, f.proto))
			}
			sets := corpusSets([]string{"--match-set moat-a src --match-set moat-b src --match-set moat-scan-60 src,dst"}, f.family)
			var taken []string
			refused := 0
			err := ns.Do(func() error {
				if out, err := execrun.Exec(ctx, []byte(strings.Join(sets, "\n")+"\n"), "ipset", "restore"); err != nil {
					t.Fatal(err, string(out))
				}
				if out, err := execrun.Exec(ctx, []byte("*filter\n:MOAT-INPUT - [0:0]\n:MOAT-X - [0:0]\nCOMMIT\n"), f.restore, "--noflush"); err != nil {
					t.Fatal(err, string(out))
				}
				lookup, closeFn, err := KernelSetIndex()
				if err != nil {
					return err
				}
				defer func() { _ = closeFn() }()
				for _, l := range lines {
					rules, encErr := EncodeAll(f.proto, l, lookup)
					out, restErr := execrun.Exec(ctx, []byte("*filter\n"+l+"\nCOMMIT\n"), f.restore, "--noflush")
					switch {
					case restErr != nil && encErr == nil:
						// Then the kernel must refuse the encoding too
						// (iptables-restore's refusal came from it).
						var x nft.XtBatch
						for _, r := range rules {
							x.Add(f.proto, unix.NFT_MSG_NEWRULE, netlink.Create|0x800, r.Attributes("filter"))
						}
						if err := x.Send(); err == nil {
							t.Errorf("%s refuses, the encoder and the kernel take: %s\n%s", f.restore, l, out)
						}
					case encErr != nil && !errors.Is(encErr, ErrUnsupported):
						t.Errorf("%s: %v", l, encErr)
					case encErr != nil:
						if restErr == nil {
							refused++
						}
					default:
						taken = append(taken, l)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d lines: %d encoded as iptables-restore writes them, %d refused by the encoder only", len(lines), len(taken), refused)
			compareKernel(t, f, taken)
			compareWire(t, f, taken)
		})
	}
}
