package ipt

import (
	"context"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/setstore"
)

// saveOf is `ipset save` in ns without what differs between two loads
// of the same members (the hash seed, the hash size), members sorted.
func saveOf(t *testing.T, ns *lab.NS) string {
	t.Helper()
	out, err := ns.Run(context.Background(), "ipset", "save")
	if err != nil {
		t.Fatalf("ipset save: %v\n%s", err, out)
	}
	lines := strings.Split(regexpInitval.ReplaceAllString(string(out), ""), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// netlinkBackend is a backend that loads its policy sets' members over
// netlink, as New's does; its calls must run inside ns.Do.
func netlinkBackend() *Backend {
	return &Backend{Run: execrun.Exec, RunFrom: execrun.ExecFrom, IpsetNetlink: true}
}

// A policy set's members loaded over netlink (many messages of them),
// then swapped in on a refill, leave ipset holding exactly what the
// `ipset restore` text leaves: the same sets, headers and members, and
// no temporary set, also over the temporary sets a killed load left.
func TestIpsetNetlinkLoadSameAsRestore(t *testing.T) {
	ctx := context.Background()
	text, nsText := kernelBackendNS(t)
	_, nsNl := kernelBackendNS(t)
	nl := netlinkBackend()
	// The members go over netlink, not in the restore's input.
	var inputs []string
	nl.RunFrom = func(ctx context.Context, write func(io.Writer) error, name string, args ...string) ([]byte, error) {
		return execrun.ExecFrom(ctx, func(w io.Writer) error {
			var b strings.Builder
			if err := write(&b); err != nil {
				return err
			}
			inputs = append(inputs, b.String())
			_, err := io.WriteString(w, b.String())
			return err
		}, name, args...)
	}
	// 5,999 networks of each family: three or four messages each.
	rs := compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(6000, 17))
	apply := func(full bool) {
		t.Helper()
		text.Full, nl.Full = full, full
		if err := text.Apply(ctx, rs); err != nil {
			t.Fatal(err)
		}
		if err := nsNl.Do(func() error { return nl.Apply(ctx, rs) }); err != nil {
			t.Fatal(err)
		}
		got, want := saveOf(t, nsNl), saveOf(t, nsText)
		if got != want {
			t.Fatalf("over netlink ipset holds:\n%.2000s\nthe restore text leaves:\n%.2000s", got, want)
		}
		for _, in := range inputs {
			if strings.Contains(in, "add moatnew-") || !strings.Contains(in, "create moatnew-") {
				t.Fatalf("the members went through ipset restore:\n%.500s", in)
			}
		}
		inputs = nil
		if strings.Contains(got, "moatnew-") {
			t.Fatalf("a temporary set is left:\n%.2000s", got)
		}
		if n := strings.Count(got, "\nadd "); n < 11998 {
			t.Fatalf("%d members loaded, want 11,998 and more", n)
		}
	}
	apply(false) // created and renamed
	apply(true)  // refilled and swapped in
	// A load killed half way left the temporary sets, partly filled.
	for _, s := range rs.Sets {
		if s.Bans || s.ScanWindow > 0 {
			continue
		}
		tmp := tmpSetName(SetNames(rs).of(s.Name))
		fam := "inet"
		if s.Family == policy.FamilyV6 {
			fam = "inet6"
		}
		if out, err := nsNl.Run(ctx, "ipset", "create", tmp, "hash:net", "family", fam); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		// A member the policy does not hold: it must not survive.
		stray := "203.0.113.77"
		if s.Family == policy.FamilyV6 {
			stray = "2001:db8:ffff::77"
		}
		if out, err := nsNl.Run(ctx, "ipset", "add", tmp, stray); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	apply(true)
}

// Networks at the ends of the prefix lengths go over netlink as the
// restore text loads them: a list that merges into the whole address
// space (hash:net holds no /0: its two halves), single addresses (/32,
// /128), /31 and /1.
func TestIpsetNetlinkLoadOddPrefixes(t *testing.T) {
	ctx := context.Background()
	for _, list := range []string{
		"deny from 0.0.0.0/1\ndeny from 128.0.0.0/1\ndeny from ::/1\ndeny from 8000::/1\n",
		"deny from 192.0.2.1\ndeny from 192.0.2.3/32\ndeny from 128.0.0.0/1\ndeny from 2001:db8::1\ndeny from 2001:db8::3/128\n" +
			"deny from 8000::/1\ndeny from 198.51.100.0/31\n",
	} {
		text, nsText := kernelBackendNS(t)
		_, nsNl := kernelBackendNS(t)
		nl := netlinkBackend()
		rs := compile(t, "default allow incoming\nallow 22/tcp\n"+list)
		if err := text.Apply(ctx, rs); err != nil {
			t.Fatal(err)
		}
		if err := nsNl.Do(func() error { return nl.Apply(ctx, rs) }); err != nil {
			t.Fatalf("%q over netlink: %v", list, err)
		}
		got, want := saveOf(t, nsNl), saveOf(t, nsText)
		if got != want {
			t.Fatalf("%q over netlink ipset holds:\n%s\nthe restore text leaves:\n%s", list, got, want)
		}
	}
}

// A member the kernel refuses (an IPv6 network in an IPv4 set) fails
// the load with the set's name, and a set that is missing too.
func TestIpsetNetlinkLoadErrors(t *testing.T) {
	_, ns := kernelBackendNS(t)
	if out, err := ns.Run(context.Background(), "ipset", "create", "t4", "hash:net", "family", "inet"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	err := ns.Do(func() error {
		c, err := dialIpsetWriter()
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		ok := fill{tmp: "t4", name: "n4", nets: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
		if err := c.fillSet(context.Background(), ok); err != nil {
			t.Errorf("a good load: %v", err)
		}
		// A whole message of them: the kernel's answer to a message
		// the size of the buffer is read too.
		var v6 []netip.Prefix
		for i := 0; i < 3000; i++ {
			v6 = append(v6, netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 7: byte(i), 6: byte(i >> 8)}), 64))
		}
		bad := fill{tmp: "n4", name: "t4", nets: v6}
		err = c.fillSet(context.Background(), bad)
		t.Logf("IPv6 into IPv4: %v", err)
		if err == nil || !strings.Contains(err.Error(), "ipset t4 to n4") {
			t.Errorf("an IPv6 network into an IPv4 set: %v", err)
		}
		missing := fill{tmp: "nosuch", name: "t4", nets: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
		if err := c.fillSet(context.Background(), missing); err == nil || !strings.Contains(err.Error(), "nosuch") {
			t.Errorf("a missing set: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := ns.Run(context.Background(), "ipset", "list", "n4")
	if err != nil || !strings.Contains(string(out), "192.0.2.0/24") {
		t.Errorf("the good load is not in n4: %v\n%s", err, out)
	}
}

// A change of the policy sets' networks alone goes over netlink (no
// ipset program), each set's adds then its deletes, and leaves ipset as
// the `ipset -exist restore` text of the same differences does: also
// where a network to add is there already and one to delete is gone
// (both made by hand), which -exist takes without an error.
func TestIpsetNetlinkDiffSameAsRestore(t *testing.T) {
	ctx := context.Background()
	text, nsText := kernelBackendNS(t)
	_, nsNl := kernelBackendNS(t)
	text.Elements = setstore.Dir{Path: t.TempDir(), Prefix: "ipset."}
	nl := netlinkBackend()
	nl.Elements = setstore.Dir{Path: t.TempDir(), Prefix: "ipset."}
	var programs []string
	nl.Run = func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		programs = append(programs, name+" "+strings.Join(args, " "))
		return execrun.Exec(ctx, stdin, name, args...)
	}
	nl.RunFrom = func(ctx context.Context, write func(io.Writer) error, name string, args ...string) ([]byte, error) {
		programs = append(programs, name+" "+strings.Join(args, " "))
		return execrun.ExecFrom(ctx, write, name, args...)
	}
	apply := func(rs *ruleset.Ruleset) {
		t.Helper()
		if err := text.Apply(ctx, rs); err != nil {
			t.Fatal(err)
		}
		if err := nsNl.Do(func() error { return nl.Apply(ctx, rs) }); err != nil {
			t.Fatal(err)
		}
		if got, want := saveOf(t, nsNl), saveOf(t, nsText); got != want {
			t.Fatalf("over netlink ipset holds:\n%.2000s\nthe restore text leaves:\n%.2000s", got, want)
		}
	}
	head := "default deny incoming\nallow 22/tcp\n"
	apply(compile(t, head+denyList(3000, -1)))
	// denyList(3000, 5) lacks the fifth pair; the added line is new.
	next := compile(t, head+denyList(3000, 5)+"deny from 192.0.2.9\ndeny from 2001:db8:ff::/48\n")
	v4 := ""
	for _, s := range next.Sets {
		if !s.Bans && s.ScanWindow == 0 && s.Family == policy.FamilyV4 && len(s.Entries) > 100 {
			v4 = SetNames(next).of(s.Name)
		}
	}
	if v4 == "" {
		t.Fatal("no IPv4 policy set")
	}
	for _, ns := range []*lab.NS{nsText, nsNl} {
		for _, args := range [][]string{{"add", v4, "192.0.2.9"}, {"del", v4, "198.18.0.10"}} {
			if out, err := ns.Run(ctx, "ipset", args...); err != nil {
				t.Fatalf("ipset %v: %v\n%s", args, err, out)
			}
		}
	}
	programs = nil
	apply(next)
	for _, p := range programs {
		if strings.HasPrefix(p, "ipset") {
			t.Errorf("a change of networks alone started %q", p)
		}
	}
	if got := saveOf(t, nsNl); !strings.Contains(got, "add "+v4+" 192.0.2.9\n") || strings.Contains(got, " 198.18.0.10\n") {
		t.Errorf("the change is not in the set:\n%.1000s", got)
	}
}
