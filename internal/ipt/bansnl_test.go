package ipt

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// The ban ipsets read over netlink are what `ipset save` lists (address,
// time left, comment; members without a comment), in a real kernel, for
// a set of thousands (a dump of many parts), IPv4 and IPv6; and with
// IpsetNetlink the backend's Bans reads them so.
func TestKernelBansNetlinkAsSave(t *testing.T) {
	b, ns := kernelBackendNS(t)
	ctx := context.Background()
	var in strings.Builder
	v4, v6 := IPSetName(ruleset.BanSet4), IPSetName(ruleset.BanSet6)
	fmt.Fprintf(&in, "create %s hash:ip family inet timeout 0 comment\ncreate %s hash:ip family inet6 timeout 0 comment maxelem 65536\n", v4, v6)
	for i := 0; i < 3000; i++ {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 8), byte(i)})
		switch i % 3 {
		case 0:
			fmt.Fprintf(&in, "add %s %s timeout %d comment \"guard: maxretry reached, user <bob> %d\"\n", v6, a, 3600+i, i)
		case 1:
			fmt.Fprintf(&in, "add %s %s timeout %d\n", v6, a, 60+i)
		default:
			fmt.Fprintf(&in, "add %s %s timeout %d comment \"manual:  two  spaces\"\n", v6, a, 100)
		}
	}
	fmt.Fprintf(&in, "add %s 192.0.2.7 timeout 500 comment \"manual: v4\"\nadd %s 198.51.100.9 timeout 9\n", v4, v4)
	if _, err := b.Run(ctx, []byte(in.String()), "ipset", "restore"); err != nil {
		t.Fatal(err)
	}
	save, err := b.Bans(ctx) // IpsetNetlink false: `ipset save`
	if err != nil {
		t.Fatal(err)
	}
	var nl []ruleset.Ban
	err = ns.Do(func() error {
		for _, set := range []string{v4, v6} {
			got, err := membersNetlink(ctx, set)
			if err != nil {
				return err
			}
			nl = append(nl, got...)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	byAddr := func(x, y ruleset.Ban) int { return x.Addr.Compare(y.Addr) }
	slices.SortFunc(save, byAddr)
	slices.SortFunc(nl, byAddr)
	if len(save) != 3002 || len(nl) != len(save) {
		t.Fatalf("%d members over netlink, %d from ipset save, want 3002", len(nl), len(save))
	}
	for i := range save {
		s, n := save[i], nl[i]
		if s.Addr != n.Addr || s.Reason != n.Reason || (s.Expires-n.Expires).Abs() > 2*time.Second || n.Expires <= 0 {
			t.Fatalf("member %d: netlink %+v, ipset save %+v", i, n, s)
		}
	}
	b.IpsetNetlink = true
	b.Run = func(context.Context, []byte, string, ...string) ([]byte, error) {
		return nil, errors.New("no program: the members are read over netlink")
	}
	var viaBackend []ruleset.Ban
	if err := ns.Do(func() error { viaBackend, err = b.Bans(ctx); return err }); err != nil {
		t.Fatal(err)
	}
	if len(viaBackend) != len(save) {
		t.Errorf("Bans with IpsetNetlink: %d, want %d", len(viaBackend), len(save))
	}
}

// FuzzParseBanMember: whatever a member's attributes hold (cut, odd-sized,
// a comment without its NUL, an address of the wrong length), reading a
// ban never panics and takes an address only as the kernel wrote it.
func FuzzParseBanMember(f *testing.F) {
	ip := attr(ipsetAttrIP|1<<15, attr(ipsetAttrIPAddrV6|1<<14, netip.MustParseAddr("2001:db8::7").AsSlice()))
	to := attr(ipsetAttrTimeout|1<<14, []byte{0, 0, 0x0e, 0x10})
	f.Add(slices.Concat(ip, to, attr(ipsetAttrComment, []byte("manual: x\x00"))))
	f.Add(slices.Concat(ip, to, attr(ipsetAttrComment, []byte("no nul"))))
	f.Add(slices.Concat(ip, attr(ipsetAttrTimeout|1<<14, []byte{1, 2})))
	f.Add(attr(ipsetAttrIP|1<<15, attr(ipsetAttrIPAddrV4|1<<14, []byte{192, 0, 2})))
	f.Add([]byte{8, 0, 1, 0, 1, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		ban, err := parseBanMember(data)
		if a := ban.Addr; a.IsValid() && !slices.Contains([]int{4, 16}, len(a.AsSlice())) {
			t.Fatalf("address %v from %x (%v)", a, data, err)
		}
	})
}

// Ban ipsets of another type than moat's (a hand-made hash:net, a
// hash:ip,port, a bitmap, a netmask) and members with odd comments
// (spaces at the ends, "timeout N" in the text, a tab, none, a permanent
// member) read over netlink as 'ipset save' lists them: a network or an
// address with a port is no banned address, and the words of a comment
// are no option. Both reads give each member its exact comment and time
// left.
func TestKernelBansNetlinkOddSetsAsSave(t *testing.T) {
	b, ns := kernelBackendNS(t)
	ctx := context.Background()
	v4, v6 := IPSetName(ruleset.BanSet4), IPSetName(ruleset.BanSet6)
	ban6 := fmt.Sprintf("create %s hash:ip family inet6 timeout 0 comment\nadd %s 2001:db8::1 timeout 300 comment \"manual: v6\"\n", v6, v6)
	for _, tc := range []struct {
		name, restore string
		want          []ruleset.Ban // of ban4
	}{
		{"hash:net", "create %[1]s hash:net family inet timeout 0 comment\nadd %[1]s 192.0.2.0/24 timeout 100 comment \"net\"\nadd %[1]s 198.51.100.7/32 timeout 50 comment \"host\"\n",
			[]ruleset.Ban{{Addr: netip.MustParseAddr("198.51.100.7"), Expires: 50 * time.Second, Reason: "host"}}},
		{"hash:ip,port", "create %[1]s hash:ip,port family inet timeout 0 comment\nadd %[1]s 192.0.2.1,tcp:80 timeout 100 comment \"port\"\n", nil},
		{"bitmap:ip", "create %[1]s bitmap:ip range 192.0.2.0/24 timeout 0 comment\nadd %[1]s 192.0.2.5 timeout 100 comment \"bitmap\"\n",
			[]ruleset.Ban{{Addr: netip.MustParseAddr("192.0.2.5"), Expires: 100 * time.Second, Reason: "bitmap"}}},
		{"hash:ip netmask", "create %[1]s hash:ip family inet netmask 24 timeout 0 comment\nadd %[1]s 192.0.2.77 timeout 100\n",
			[]ruleset.Ban{{Addr: netip.MustParseAddr("192.0.2.0"), Expires: 100 * time.Second}}},
		{"comments", "create %[1]s hash:ip family inet timeout 0 comment\nadd %[1]s 192.0.2.1 timeout 100 comment \" lead  trail \"\nadd %[1]s 192.0.2.2 timeout 0 comment \"x timeout 5 y\"\nadd %[1]s 192.0.2.3 timeout 100 comment \"tab\tx timeout\"\nadd %[1]s 192.0.2.4 timeout 7\n",
			[]ruleset.Ban{{Addr: netip.MustParseAddr("192.0.2.1"), Expires: 100 * time.Second, Reason: " lead  trail "},
				{Addr: netip.MustParseAddr("192.0.2.2"), Reason: "x timeout 5 y"},
				{Addr: netip.MustParseAddr("192.0.2.3"), Expires: 100 * time.Second, Reason: "tab\tx timeout"},
				{Addr: netip.MustParseAddr("192.0.2.4"), Expires: 7 * time.Second}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out, err := b.Run(ctx, nil, "ipset", "destroy"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if out, err := b.Run(ctx, []byte(fmt.Sprintf(tc.restore, v4)+ban6), "ipset", "restore"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			want := append(slices.Clone(tc.want), ruleset.Ban{Addr: netip.MustParseAddr("2001:db8::1"), Expires: 300 * time.Second, Reason: "manual: v6"})
			for _, nl := range []bool{false, true} {
				b.IpsetNetlink = nl
				var got []ruleset.Ban
				var err error
				if err := ns.Do(func() error { got, err = b.Bans(ctx); return nil }); err != nil {
					t.Fatal(err)
				}
				if err != nil {
					t.Fatalf("netlink %v: %v", nl, err)
				}
				slices.SortFunc(got, func(x, y ruleset.Ban) int { return x.Addr.Compare(y.Addr) })
				ok := len(got) == len(want)
				for i := 0; ok && i < len(got); i++ {
					g, w := got[i], want[i]
					ok = g.Addr == w.Addr && g.Reason == w.Reason && g.Expires <= w.Expires && g.Expires >= w.Expires-2*time.Second
				}
				if !ok {
					t.Errorf("netlink %v: %+v, want %+v", nl, got, want)
				}
			}
		})
	}
}

// BansUpTo lists n bans at most, and says whether there are more: over
// netlink (a dump of many parts that stops at n) as `ipset save` lists
// them, across both ban ipsets, in a real kernel; the count 'moat status'
// shows of the port scan trap's bans, which the ban history lacks.
func TestKernelBansUpTo(t *testing.T) {
	b, ns := kernelBackendNS(t)
	ctx := context.Background()
	var in strings.Builder
	v4, v6 := IPSetName(ruleset.BanSet4), IPSetName(ruleset.BanSet6)
	fmt.Fprintf(&in, "create %s hash:ip family inet timeout 0 comment\ncreate %s hash:ip family inet6 timeout 0 comment maxelem 65536\n", v4, v6)
	fmt.Fprintf(&in, "add %s 192.0.2.7 timeout 500 comment \"portscan\"\nadd %s 198.51.100.9 timeout 9\n", v4, v4)
	for i := 0; i < 3000; i++ {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 8), byte(i)})
		fmt.Fprintf(&in, "add %s %s timeout %d comment \"guard: maxretry reached %d\"\n", v6, a, 3600+i, i)
	}
	if _, err := b.Run(ctx, []byte(in.String()), "ipset", "restore"); err != nil {
		t.Fatal(err)
	}
	save, err := b.Bans(ctx) // IpsetNetlink false: `ipset save`
	if err != nil {
		t.Fatal(err)
	}
	has := map[netip.Addr]bool{}
	for _, ban := range save {
		has[ban.Addr] = true
	}
	nl := &Backend{Run: b.Run, IpsetNetlink: true}
	for _, tc := range []struct {
		n, want int
		more    bool
	}{{1000, 1000, true}, {1, 1, true}, {2, 2, true}, {3001, 3001, true}, {3002, 3002, false}, {5000, 3002, false}, {0, 0, true}} {
		for _, bk := range []*Backend{b, nl} {
			var got []ruleset.Ban
			var more bool
			err := ns.Do(func() error { var err error; got, more, err = bk.BansUpTo(ctx, tc.n); return err })
			if err != nil {
				t.Fatalf("netlink %v, %d: %v", bk.IpsetNetlink, tc.n, err)
			}
			if len(got) != tc.want || more != tc.more {
				t.Errorf("netlink %v, up to %d: %d bans, more %v; want %d, %v", bk.IpsetNetlink, tc.n, len(got), more, tc.want, tc.more)
			}
			seen := map[netip.Addr]bool{}
			for _, ban := range got {
				if !has[ban.Addr] || seen[ban.Addr] {
					t.Errorf("netlink %v, up to %d: %v not a ban of ipset save's, or twice", bk.IpsetNetlink, tc.n, ban.Addr)
				}
				seen[ban.Addr] = true
			}
		}
	}
	// Without the ban ipsets (moat not enabled): an error, which leaves
	// status the history's count.
	if _, err := b.Run(ctx, nil, "ipset", "destroy", v6); err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(func() error { _, _, err := nl.BansUpTo(ctx, 1000); return err }); err == nil {
		t.Error("BansUpTo without the IPv6 ban ipset: no error")
	}
}

// Without netlink, BansUpTo cuts `ipset save`'s list at n.
func TestBansUpToSave(t *testing.T) {
	b := &Backend{Run: func(_ context.Context, _ []byte, name string, a ...string) ([]byte, error) {
		if name != "ipset" || len(a) != 2 || a[0] != "save" {
			return nil, fmt.Errorf("ran %s %v", name, a)
		}
		if a[1] == IPSetName(ruleset.BanSet4) {
			return []byte("create " + a[1] + " hash:ip family inet timeout 0\nadd " + a[1] + " 192.0.2.7 timeout 500\nadd " + a[1] + " 192.0.2.8 timeout 5\n"), nil
		}
		return []byte("add " + a[1] + " 2001:db8::7 timeout 50\n"), nil
	}}
	ctx := context.Background()
	for _, tc := range []struct {
		n, want int
		more    bool
	}{{1, 1, true}, {3, 3, false}, {1000, 3, false}} {
		got, more, err := b.BansUpTo(ctx, tc.n)
		if err != nil || len(got) != tc.want || more != tc.more {
			t.Errorf("up to %d: %d bans, more %v, %v; want %d, %v", tc.n, len(got), more, err, tc.want, tc.more)
		}
	}
}
