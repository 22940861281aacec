package drift

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// The netlink reader gives the layout `nft -j list table` gives, for a
// policy with every kind of rule, and both see an empty table alike; bans
// and counters read over netlink match nft's.
func TestNetlinkLayoutMatchesNft(t *testing.T) {
	ns := labtest.NS(t, "moatdrift")
	ctx := context.Background()
	run := labtest.Runner(ns)
	read := func(r execrun.Runner) *Layout {
		t.Helper()
		var l *Layout
		if err := ns.Do(func() error {
			var err error
			l, err = Read(ctx, "nftables", r, newLayout())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return l
	}
	if got := read(nil); !got.Empty() {
		t.Fatalf("no table, yet %+v", got)
	}
	p, err := policy.NewDocument("moat.conf", []byte(`default deny incoming
default allow outgoing
allow 22/tcp
limit 2222/tcp
deny from 203.0.113.0/24
deny from 198.51.100.128/25
deny from 198.51.100.7
deny from 2001:db8:dead::/48
deny from 2001:db8:beef::1
reject proto udp from 198.51.100.7 to any port 53
allow log from 2001:db8:1::/48 to any port 80,443 proto tcp
deny out 25/tcp
route allow in on veth0 out on veth1
guard sshd
`)).Policy(policy.ParseServices([]byte("ssh 22/tcp\n")))
	if err != nil {
		t.Fatal(err)
	}
	b := &nft.Backend{Run: run}
	if err := b.Apply(ctx, ruleset.Compile(p)); err != nil {
		t.Fatal(err)
	}
	bans := []ruleset.Ban{{Addr: netip.MustParseAddr("192.0.2.77"), Timeout: time.Hour, Reason: "guard: test"},
		{Addr: netip.MustParseAddr("2001:db8::77"), Timeout: 2 * time.Hour, Reason: "manual: x"}}
	if err := b.Ban(ctx, bans); err != nil {
		t.Fatal(err)
	}
	want, got := read(run), read(nil)
	if want.Empty() {
		t.Fatal("nft read nothing")
	}
	// netlink reads also each rule's body (for comparing two kernels); nft
	// -j is compared on tags and verdicts. google/nftables decodes every
	// expression of moat's own rules (dynsets included): none is read raw.
	for name, c := range got.Chains {
		for _, r := range c.Rules {
			if strings.Contains(r.Body, "undecoded[") {
				t.Errorf("chain %s: moat's rule %s read with expressions google/nftables could not decode: %s", name, r, r.Body)
			}
		}
		c.Rules = withoutBodies(c.Rules)
	}
	if d := cmp.Diff(want.Chains, got.Chains); d != "" {
		t.Errorf("netlink layout differs from nft's (-nft +netlink):\n%s", d)
	}
	if len(want.Sets) == 0 || len(want.Sets) != len(got.Sets) {
		t.Errorf("policy sets: nft %d, netlink %d", len(want.Sets), len(got.Sets))
	}
	if d := Compare(want, got); d != nil {
		t.Errorf("netlink layout differs from nft's: %q", d)
	}
	// A set changed by hand shows.
	if err := ns.Do(func() error {
		for name := range want.Sets {
			if sessionSet(name) {
				continue // its addresses are the sessions at apply: not compared
			}
			_, err := execrun.Exec(ctx, nil, "nft", "add", "element", "inet", "moat", name, "{ "+map[bool]string{true: "2001:db8:cafe::/64", false: "192.0.2.128/26"}[strings.Contains(name, "6")]+" }")
			return err
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if d := Compare(want, read(nil)); d == nil {
		t.Error("an element added by hand went unseen over netlink")
	}
	var nlBans []ruleset.Ban
	var nlCounters map[string]ruleset.Counter
	if err := ns.Do(func() error {
		var err error
		if nlCounters, err = (nft.NetlinkReader{}).Counters(); err != nil {
			return err
		}
		for _, set := range []string{ruleset.BanSet4, ruleset.BanSet6} {
			bs, err := (nft.NetlinkReader{}).Bans(set)
			if err != nil {
				return err
			}
			nlBans = append(nlBans, bs...)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{"192.0.2.77": true, "2001:db8::77": true, "192.0.2.78": false, "2001:db8::78": false, "::ffff:192.0.2.77": true} {
		var got bool
		if err := ns.Do(func() error {
			var err error
			got, err = b.Banned(ctx, netip.MustParseAddr(addr)) // over nft: b has no netlink reader
			if err != nil || got != want {
				return err
			}
			set := ruleset.BanSetFor(netip.MustParseAddr(addr).Unmap())
			got, err = (nft.NetlinkReader{}).Banned(set, netip.MustParseAddr(addr).Unmap())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("Banned(%s) = %v, want %v", addr, got, want)
		}
	}
	nftBans, err := b.Bans(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nlBans) != 2 || len(nftBans) != 2 {
		t.Fatalf("bans: netlink %v, nft %v", nlBans, nftBans)
	}
	for i := range nlBans {
		n, w := nlBans[i], nftBans[i]
		if n.Addr != w.Addr || n.Reason != w.Reason || n.Timeout != w.Timeout || (n.Expires-w.Expires).Abs() > 2*time.Second {
			t.Errorf("ban %d: netlink %+v, nft %+v", i, n, w)
		}
	}
	nftCounters, err := b.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nlCounters) == 0 || len(nlCounters) != len(nftCounters) {
		t.Errorf("counters: netlink %d, nft %d", len(nlCounters), len(nftCounters))
	}
	for id := range nftCounters {
		if _, ok := nlCounters[id]; !ok {
			t.Errorf("netlink lacks the counter of %s", id)
		}
	}
}
