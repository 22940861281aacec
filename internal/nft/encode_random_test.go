package nft

import (
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
)

// randomRuleLines writes n policy lines drawn from the rule grammar
// (actions, directions, interfaces, logging, protocols, addresses of both
// families, port lists and ranges, application names, comments, rates,
// routed rules), many of them invalid; compileLines keeps those the
// policy takes.
func randomRuleLines(r *rand.Rand, n int) []string {
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	ports := func() string {
		switch r.IntN(6) {
		case 0:
			return strconv.Itoa(1 + r.IntN(65535))
		case 1:
			a := r.IntN(65535) + 1
			return strconv.Itoa(a) + ":" + strconv.Itoa(a+r.IntN(65536-a))
		case 2:
			var ps []string
			for range 2 + r.IntN(5) {
				if r.IntN(3) == 0 {
					a := 1 + r.IntN(65000)
					ps = append(ps, strconv.Itoa(a)+":"+strconv.Itoa(a+r.IntN(500)))
				} else {
					ps = append(ps, strconv.Itoa(1+r.IntN(65535)))
				}
			}
			return strings.Join(ps, ",")
		case 3:
			return pick("1", "65535", "1:65535", "0:10", "65535:65535", "22,22", "80,81,82")
		case 4:
			return pick("ssh", "22")
		}
		return pick("53", "123", "443,80")
	}
	addr := func() string {
		return pick("any", "192.0.2.1", "192.0.2.0/24", "192.0.2.128/25", "198.51.100.0/255.255.255.0", "0.0.0.0/0",
			"203.0.113.7/32", "2001:db8::1", "2001:db8::/32", "2001:db8:1::/48", "::/0", "::1", "127.0.0.1",
			"2001:db8::/33", "192.0.2.0/31", "10.0.0.0/8", "fe80::/10")
	}
	var out []string
	for range n {
		var w []string
		route := r.IntN(8) == 0
		if route {
			w = append(w, "route")
		}
		act := pick("allow", "deny", "reject", "limit")
		w = append(w, act)
		if act == "limit" && r.IntN(2) == 0 {
			// rate after the rule, below
		}
		dir := pick("", "", "in", "out")
		if dir != "" {
			w = append(w, dir)
		}
		if r.IntN(3) == 0 {
			w = append(w, "on", pick("eth0", "e+", "abcdefghijklmno", "wg0", "br-x", "lo", "eth0.100", "veth+"))
		}
		if route && r.IntN(2) == 0 {
			w = append(w, "out", "on", pick("eth1", "wg+", "ppp0"))
		}
		if r.IntN(4) == 0 {
			w = append(w, pick("log", "log-all"))
		}
		if r.IntN(3) == 0 {
			p := ports()
			if r.IntN(2) == 0 {
				p += pick("/tcp", "/udp")
			}
			w = append(w, p)
		} else {
			if r.IntN(2) == 0 {
				w = append(w, "proto", pick("tcp", "udp", "icmp", "ipv6-icmp", "esp", "ah", "gre", "igmp", "vrrp", "ipv6"))
			}
			if r.IntN(3) != 0 {
				w = append(w, "from", addr())
				if r.IntN(3) == 0 {
					w = append(w, "port", ports())
				}
			}
			if r.IntN(3) != 0 {
				w = append(w, "to", addr())
				if r.IntN(2) == 0 {
					w = append(w, "port", ports())
				}
			}
		}
		if act == "limit" && r.IntN(2) == 0 {
			w = append(w, "rate", strconv.Itoa(1+r.IntN(100))+"/"+strconv.Itoa(1+r.IntN(3600))+"s")
		}
		if r.IntN(4) == 0 {
			w = append(w, "comment", "'"+pick("web", "a b", "é ü", strings.Repeat("x", 100), "x}y{z", "a;b", "#c", "tab x")+"'")
		}
		out = append(out, strings.Join(w, " "))
	}
	return out
}

// TestEncoderMatchesNftRandom is TestEncoderMatchesNft over rules drawn at
// random from the policy's grammar (combinations no list names: a port
// range of one port, a rate with a source, a routed rule with a comment
// and logging...): every one the encoder takes, it writes byte for byte
// as nft does. MOAT_ENCODER_SEED picks another draw (the failing seed is
// in the test's name).
func TestEncoderMatchesNftRandom(t *testing.T) {
	seeds := []uint64{1, 2, 3}
	if s := os.Getenv("MOAT_ENCODER_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seeds = []uint64{v}
	}
	for _, seed := range seeds {
		t.Run("seed-"+strconv.FormatUint(seed, 10), func(t *testing.T) {
			lines := randomRuleLines(rand.New(rand.NewPCG(seed, 0x6d6f6174)), 300)
			encoderMatchesNft(t, "random", compileLines(t, lines))
		})
	}
}
