package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// conntrackCount is the number of conntrack entries of a namespace.
func conntrackCount(t *testing.T, ns *lab.NS) int {
	t.Helper()
	out, err := ns.Run(context.Background(), "cat", "/proc/sys/net/netfilter/nf_conntrack_count")
	if err != nil {
		t.Fatalf("conntrack count: %v\n%s", err, out)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ctProbe is a table of the test's own that counts, right after conntrack
// (prerouting priority -150), the packets conntrack saw as new from the
// refused sources and from an allowed one. A packet dropped later in the
// filter hook still cost conntrack an entry, freed with the packet (so
// nf_conntrack_count alone cannot tell); one dropped before conntrack
// never reaches this chain.
const ctProbe = `table inet ctprobe {
	chain pre {
		type filter hook prerouting priority -150; policy accept;
		ct state new ip saddr { 192.0.2.3, 192.0.2.5 } counter comment "refused"
		ct state new ip6 saddr { 2001:db8::3, 2001:db8::5 } counter comment "refused"
		ct state new ip saddr 192.0.2.4 counter comment "allowed"
		ct state new ip6 saddr 2001:db8::4 counter comment "allowed"
	}
}
`

// ctProbed sums the probe's counters of rules with the comment.
func ctProbed(t *testing.T, ns *lab.NS, comment string) int {
	t.Helper()
	out, err := ns.Run(context.Background(), "nft", "list", "table", "inet", "ctprobe")
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, out)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.Contains(line, `comment "`+comment+`"`) {
			continue
		}
		m := countRe.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("no counter in %q", line)
		}
		k, _ := strconv.Atoi(m[1])
		n += k
	}
	return n
}

// Banned and blocklisted sources are dropped before conntrack, so their
// packets never make conntrack state (not even the entry conntrack makes
// and frees for a packet the filter hook drops); the allowlist, the
// admin's live SSH sessions (even banned with --force) and loopback pass;
// status counts the drops and explain names the chain. Both backends,
// IPv4 and IPv6, real packets.
func TestDropsBeforeConntrack(t *testing.T) {
	requireSSH(t)
	eachBackend(t, func(t *testing.T, b string) {
		e := newSSHEnv(t, b)
		ctx := context.Background()
		// Two more client addresses to ban (never a listed or
		// allowlisted one).
		e.addClientAddrs("192.0.2.5/24", "2001:db8::5/64")
		srv := e.startSSHD(22)
		admin4, admin6 := srv.login(lab.ServerV4), srv.login(lab.ServerV6) // from 192.0.2.2, 2001:db8::2
		list := e.newFile("bad.list", "192.0.2.3\n192.0.2.4\n192.0.2.2\n2001:db8::3\n2001:db8::4\n2001:db8::2\n")
		// The list covers the admin: it is refused with the reason.
		writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\nallow 80/tcp\nallowlist 192.0.2.4 2001:db8::4\nblocklist bad file "+list+"\n")
		if out, err := e.moat("enable"); err == nil {
			t.Fatalf("a list covering the admin's session was applied:\n%s", out)
		}
		// The server's own addresses are listed too: its connections to
		// itself come over loopback, which is exempt.
		writeFile(t, list, "192.0.2.3\n192.0.2.4\n2001:db8::3\n2001:db8::4\n192.0.2.1\n2001:db8::1\n")
		e.mustMoat("enable")
		e.mustMoat("ban", "192.0.2.5", "2001:db8::5")
		// The admin's addresses are banned too, on purpose.
		e.mustMoat("ban", "--force", "192.0.2.2", "2001:db8::2")

		// Refused sources: no packet gets through, no state is made.
		if _, err := nsRunner(e.topo.Server)(ctx, []byte(ctProbe), "nft", "-f", "-"); err != nil {
			t.Fatal(err)
		}
		before := conntrackCount(t, e.topo.Server)
		e.expect(false,
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout",
			"client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.5 tcp 192.0.2.1:80 timeout",
			"client/2001:db8::5 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.3 udp 192.0.2.1:53 timeout",
			"client/2001:db8::5 udp [2001:db8::1]:53 timeout",
		)
		if after := conntrackCount(t, e.topo.Server); after != before {
			t.Errorf("banned and blocklisted sources made %d conntrack entries", after-before)
		}
		if n := ctProbed(t, e.topo.Server, "refused"); n != 0 {
			t.Errorf("conntrack saw %d new packets from banned and blocklisted sources", n)
		}
		// The allowlist wins over the list, the admin's sessions over
		// their ban: their new connections pass (and make state, which
		// shows the count above could have moved).
		e.expect(false,
			"client/192.0.2.4 tcp 192.0.2.1:80 open",
			"client/2001:db8::4 tcp [2001:db8::1]:80 open",
			"client/192.0.2.2 tcp 192.0.2.1:80 open",
			"client/2001:db8::2 tcp [2001:db8::1]:80 open",
			"server tcp 192.0.2.1:80 open",
			"server tcp [2001:db8::1]:80 open",
		)
		if after := conntrackCount(t, e.topo.Server); after <= before {
			t.Errorf("allowed connections made no conntrack entries (%d, then %d): the count proves nothing", before, after)
		}
		if n := ctProbed(t, e.topo.Server, "allowed"); n < 2 {
			t.Errorf("the probe saw %d new packets from the allowlisted source: it proves nothing", n)
		}
		for _, s := range []*session{admin4, admin6} {
			if err := s.alive(5 * time.Second); err != nil {
				t.Errorf("the admin's session after its ban: %v", err)
			}
		}
		if !srv.canLogin(lab.ServerV4) || !srv.canLogin(lab.ServerV6) {
			t.Error("the admin cannot log in again")
		}

		// status counts the drops where they happen; explain names the
		// chain.
		seen, out := e.preroutingPackets()
		if seen["builtin:ban"] < 2 || seen["blocklist:bad"] < 2 {
			t.Errorf("status counts in the prerouting chain: %v\n%s", seen, out)
		}
		ex := e.mustMoat("explain", "in", "tcp", "from", "192.0.2.3", "to", "port", "80")
		if !strings.Contains(ex, "DROP") || !strings.Contains(ex, "prerouting") || !strings.Contains(ex, "blocklist bad file") {
			t.Errorf("explain of a listed source:\n%s", ex)
		}
		// explain asks the kernel for the bans.
		ex = e.mustMoat("explain", "in", "tcp", "from", "192.0.2.5", "to", "port", "80")
		if !strings.Contains(ex, "DROP") || !strings.Contains(ex, "192.0.2.5 is banned") || !strings.Contains(ex, "prerouting") {
			t.Errorf("explain of a banned source:\n%s", ex)
		}
		ex = e.mustMoat("explain", "in", "tcp", "from", "2001:db8::2", "to", "port", "80")
		if !strings.HasPrefix(ex, "ACCEPT") {
			t.Errorf("explain of the admin's banned but protected address:\n%s", ex)
		}
		if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") {
			t.Errorf("status sees drift (the sessions in the protected sets?):\n%s", st)
		}
	})
}

// A packet from outside that claims one of the server's own addresses as
// its source is not loopback traffic: when that address is listed, the
// drop before conntrack takes it on both backends (iptables spared every
// source of type LOCAL, whatever its interface, and IPv6 has no martian
// check after the raw table). A probe right after conntrack counts what
// passed.
func TestDropsBeforeConntrackSpoofedLocalSource(t *testing.T) {
	t.Parallel()
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			requireBackend(t, b)
			t.Parallel()
			e := newEnv(t, b, false)
			ctx := context.Background()
			// 192.0.2.9 and 2001:db8::9 are the server's; the client
			// claims them too.
			for _, ns := range []*lab.NS{e.topo.Server, e.topo.Client} {
				for _, a := range []string{"192.0.2.9/32", "2001:db8::9/128"} {
					if out, err := ns.Run(ctx, "ip", "addr", "add", a, "dev", "eth0", "nodad"); err != nil {
						t.Fatalf("ip addr add %s: %v\n%s", a, err, out)
					}
				}
			}
			list := e.newFile("bad.list", "192.0.2.9\n2001:db8::9\n")
			e.apply("default allow incoming\nblocklist bad file " + list + "\n")
			const probe = `table inet ctprobe {
	chain pre {
		type filter hook prerouting priority -150; policy accept;
		iifname "eth0" ip saddr 192.0.2.9 counter comment "spoofed"
		iifname "eth0" ip6 saddr 2001:db8::9 counter comment "spoofed"
	}
}
`
			if _, err := nsRunner(e.topo.Server)(ctx, []byte(probe), "nft", "-f", "-"); err != nil {
				t.Fatal(err)
			}
			// The neighbours are learnt from genuine sources first (a
			// solicitation from the server's own address gets no answer
			// the client sees).
			e.expect(true, "client/192.0.2.2 tcp 192.0.2.1:80 open", "client/2001:db8::2 tcp [2001:db8::1]:80 open")
			e.expect(false, "client/192.0.2.9 udp 192.0.2.1:53 timeout", "client/2001:db8::9 udp [2001:db8::1]:53 timeout",
				"client/192.0.2.9 tcp 192.0.2.1:80 timeout", "client/2001:db8::9 tcp [2001:db8::1]:80 timeout")
			if n := ctProbed(t, e.topo.Server, "spoofed"); n != 0 {
				t.Errorf("%d packets from outside with a listed source of the server's own got past the drops before conntrack", n)
			}
			// The server's own traffic to itself from those addresses is
			// loopback: exempt.
			e.expect(false, "server/192.0.2.9 tcp 192.0.2.1:80 open", "server/2001:db8::9 tcp [2001:db8::1]:80 open")
		})
	}
}
