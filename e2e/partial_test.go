package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// Partial sync, with real packets: after a whole apply, a one-rule change
// and a change of a deny set are sent as differences (nftables: only the
// changed chain and set; iptables: only the changed families' rules, the
// unchanged sets kept), and the kernel filters exactly as the policy says,
// bans included.
func TestPartialSync(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		var deny strings.Builder
		// 4,000 sources of the documentation ranges: 100 of them IPv4
		// (203.0.113.0/24, none adjacent), the rest IPv6.
		for i := 0; i < 2000; i++ {
			if i < 100 {
				fmt.Fprintf(&deny, "deny from 203.0.113.%d\n", 2*i)
			} else {
				fmt.Fprintf(&deny, "deny from 2001:db8:fe:%x::/64\n", i)
			}
			fmt.Fprintf(&deny, "deny from 2001:db8:ff:%x::/64\n", i)
		}
		base := "default deny incoming\n" + deny.String() + "allow 22/tcp\n"
		e.apply(base)
		e.mustMoat("ban", "192.0.2.3", "2001:db8::3", "--for", "1h", "--reason", "test")
		kernelBefore := e.moatKernel()

		// One rule more: only that reaches the kernel.
		e.mustMoat("allow", "80/tcp")
		e.expect(false,
			"client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open",
			"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open",
			"client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout",
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:22 timeout")
		if backend == "nftables" {
			// The deny sets were not sent again: their elements are
			// the same objects (same kernel handles).
			if a, b := setHandles(kernelBefore), setHandles(e.moatKernel()); a != b || a == "" {
				t.Errorf("sets were re-created by a one-rule change:\n%s\n%s", a, b)
			}
		}

		// The client's other address joins the deny list: the set
		// changes, the rules stay, the ban stays.
		writeFile(t, e.conf, "default deny incoming\ndeny from 192.0.2.4\ndeny from 2001:db8::4\n"+deny.String()+"allow 22/tcp\nallow 80/tcp\n")
		e.mustMoat("reload")
		e.expect(false,
			"client/192.0.2.4 tcp 192.0.2.1:22 timeout", "client/2001:db8::4 tcp [2001:db8::1]:22 timeout",
			"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:80 open",
			"client/192.0.2.3 tcp 192.0.2.1:22 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout")

		// And back: the address is reachable again.
		e.mustMoat("delete", "deny", "from", "192.0.2.4")
		e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:22 open", "client/2001:db8::4 tcp [2001:db8::1]:22 timeout")
		if out := e.mustMoat("bans"); !strings.Contains(out, "192.0.2.3") || !strings.Contains(out, "2001:db8::3") {
			t.Errorf("bans lost by partial applies:\n%s", out)
		}
	})
}

// setHandles lists the handles of moat's nftables sets, from `nft -t -a`
// output (empty for iptables).
func setHandles(listing string) string {
	var out []string
	for _, l := range strings.Split(listing, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "set ") && strings.Contains(l, "# handle") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// An iptables apply cut between the two families (here: the IPv6 rules
// left at an older generation by hand) shows in `moat status`, and the
// next reload rewrites only what differs and clears it.
func TestSplitFamiliesReported(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	if out := e.mustMoat("status"); strings.Contains(out, "interrupted between the two families") {
		t.Fatalf("split reported after a clean apply:\n%s", out)
	}
	// The IPv6 generation marker of an older apply.
	if _, err := nsRunner(e.topo.Server)(context.Background(),
		[]byte("*filter\n:MOAT-GEN - [0:0]\n-A MOAT-GEN -m comment --comment \"moat:gen 0123456789abcdef\" -j RETURN\nCOMMIT\n"),
		"ip6tables-restore", "--noflush"); err != nil {
		t.Fatal(err)
	}
	out, _ := e.moat("status")
	if !strings.Contains(out, "interrupted between the two families") || !strings.Contains(out, "0123456789abcdef") {
		t.Errorf("status does not report the split:\n%s", out)
	}
	e.mustMoat("reload")
	if out := e.mustMoat("status"); strings.Contains(out, "interrupted between the two families") {
		t.Errorf("split still reported after reload:\n%s", out)
	}
	e.expect(false, "client tcp [2001:db8::1]:22 open", "client tcp [2001:db8::1]:80 timeout", "client tcp 192.0.2.1:80 timeout")
}
