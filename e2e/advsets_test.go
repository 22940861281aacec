package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// A policy set edited by hand so that it keeps its element count but not
// its contents (a listed address deleted, another added), then a set-only
// change (deny from): the change must not be computed from moat's record of
// what it loaded, or the address deleted by hand stays let through.
func TestAdvSetHandSwapThenDeny(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default allow incoming\ndeny from 192.0.2.3\ndeny from 192.0.2.4\ndeny from 2001:db8::3\ndeny from 2001:db8::4\n")
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
		if b == "nftables" {
			ruleset := e.run("server", "nft", "list", "chain", "inet", "moat", "input")
			for fam, addr := range map[string][2]string{"ip": {"192.0.2.3", "192.0.2.7"}, "ip6": {"2001:db8::3", "2001:db8::7"}} {
				set := regexp.MustCompile(fam + ` saddr @(\S+) [^\n]*comment "set:`).FindStringSubmatch(ruleset)
				if set == nil {
					t.Fatalf("no %s set rule in moat's table", fam)
				}
				e.run("server", "nft", "delete", "element", "inet", "moat", set[1], "{ "+addr[0]+" }")
				e.run("server", "nft", "add", "element", "inet", "moat", set[1], "{ "+addr[1]+" }")
			}
		} else {
			for _, addr := range [][2]string{{"192.0.2.3", "192.0.2.7"}, {"2001:db8::3", "2001:db8::7"}} {
				set := e.ipsetHolding(addr[0])
				e.run("server", "ipset", "del", set, addr[0])
				e.run("server", "ipset", "add", set, addr[1])
			}
		}
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 open", "client/2001:db8::3 tcp [2001:db8::1]:80 open")
		out := e.mustMoat("--verbose", "deny", "from", "192.0.2.6")
		out += e.mustMoat("--verbose", "deny", "from", "2001:db8::6")
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.2 tcp 192.0.2.1:80 open", "client/2001:db8::2 tcp [2001:db8::1]:80 open")
		if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") {
			t.Errorf("drift after the deny:\n%s\n%s", st, out)
		}
	})
}

// Networks that merge into the whole address space (two /1 halves, as a
// country list or a hand-written policy may give) load on both backends:
// an ipset of type hash:net holds no /0, and the iptables apply failed.
func TestAdvSetWholeSpaceMerged(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default allow incoming\nallow from 192.0.2.2\nallow from 2001:db8::2\n" +
			"deny from 0.0.0.0/1\ndeny from 128.0.0.0/1\ndeny from ::/1\ndeny from 8000::/1\n")
		e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 open", "client/2001:db8::2 tcp [2001:db8::1]:80 open",
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
		// And changed in place to a part of it and back.
		e.apply("default allow incoming\nallow from 192.0.2.2\nallow from 2001:db8::2\n" +
			"deny from 0.0.0.0/1\ndeny from 128.0.0.0/2\ndeny from ::/1\ndeny from 8000::/2\n")
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 open", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
		e.apply("default allow incoming\nallow from 192.0.2.2\nallow from 2001:db8::2\n" +
			"deny from 0.0.0.0/1\ndeny from 128.0.0.0/1\ndeny from ::/1\ndeny from 8000::/1\n")
		e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:80 open", "client/192.0.2.3 tcp 192.0.2.1:80 timeout",
			"client/2001:db8::3 tcp [2001:db8::1]:80 timeout")
		e.expectStatusClean("drift")
	})
}

// A refresh that grows a list past what its ipset was made for (maxelem
// 65536 for a small list) loads: changed in place, the adds (before the
// deletes) filled the set and ipset stopped half way with "Hash is full",
// the update failed and left the set half changed. Both backends, real
// packets.
func TestAdvSetListOutgrowsSet(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		list := filepath.Join(e.dir, "grow.netset")
		bigList(t, list, 1000, "192.0.2.3", "2001:db8::3")
		e.apply(fmt.Sprintf("default allow incoming\nallow 22/tcp\nblocklist grow file %s\n", list))
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/192.0.2.4 tcp 192.0.2.1:80 open")
		bigList(t, list, 140000, "192.0.2.3", "2001:db8::3", "192.0.2.4", "2001:db8::4")
		e.mustMoat("blocklist", "update")
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.2 tcp 192.0.2.1:80 open", "client/2001:db8::2 tcp [2001:db8::1]:80 open")
		if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") || strings.Contains(st, "changing") {
			t.Errorf("status after the refresh:\n%s", st)
		}
	})
}

// IPv6 multicast to this host from a blocklisted or banned source is
// dropped before conntrack on both backends (nftables: fib daddr type is
// not unicast; iptables: addrtype LOCAL is not multicast, and no later
// chain checks the sets, so it was let through to an allowed port). The
// prerouting counters of the list and the bans prove where it stopped.
func TestAdvSetMulticastFromListed(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		list := e.newFile("bad.list", "2001:db8::3\n")
		e.apply("default allow incoming\nblocklist bad file " + list + "\n")
		e.mustMoat("ban", "2001:db8::4")
		counts := func() map[string]uint64 {
			seen, _ := e.preroutingPackets()
			return seen
		}
		before := counts()
		e.expect(false, "client/2001:db8::3 udp [ff02::fb%eth0]:5353 timeout", "client/2001:db8::4 udp [ff02::fb%eth0]:5353 timeout")
		after := counts()
		for _, id := range []string{"blocklist:bad", "builtin:ban"} {
			if after[id] <= before[id] {
				t.Errorf("multicast from a source of %s was not dropped before conntrack: %d packets, then %d", id, before[id], after[id])
			}
		}
	})
}

// Forwarded packets are spared by the drops before conntrack, as the docs
// say (the bans and lists are the input chain's): a listed and a banned
// source reach the routed backend while this host drops them.
func TestAdvSetForwardedSpared(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, true)
		list := e.newFile("bad.list", "192.0.2.3\n2001:db8::3\n")
		e.apply("default allow incoming\ndefault allow routed\nblocklist bad file " + list + "\n")
		e.mustMoat("ban", "192.0.2.4", "2001:db8::4")
		e.expect(false,
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.3 tcp 198.51.100.2:80 open", "client/2001:db8::3 tcp [2001:db8:1::2]:80 open",
			"client/192.0.2.4 tcp 198.51.100.2:80 open", "client/2001:db8::4 tcp [2001:db8:1::2]:80 open")
	})
}
