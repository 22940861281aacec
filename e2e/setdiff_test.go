package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A blocklist refresh sends only the difference and the kernel filters
// as the new list says, with real packets, IPv4 and IPv6, both backends:
// a source newly listed is dropped, a delisted one gets through. moat
// records the kernel's fingerprint from what it loaded (nftables: no set
// read back), and that record stays true: a generation moved by another
// table is checked against the kernel and finds no drift, and an element
// added by hand to the list's set is reported and repaired.
func TestSetDiffRefresh(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		list := filepath.Join(e.dir, "big.netset")
		bigList(t, list, 2000, "192.0.2.3", "2001:db8::3")
		e.apply(fmt.Sprintf("default deny incoming\nallow 22/tcp\nblocklist big file %s\n", list))
		e.expect(false,
			"client/192.0.2.3 tcp 192.0.2.1:22 timeout", "client/2001:db8::3 tcp [2001:db8::1]:22 timeout",
			"client/192.0.2.4 tcp 192.0.2.1:22 open", "client/2001:db8::4 tcp [2001:db8::1]:22 open")

		setBefore := ""
		if backend == "iptables" {
			setBefore = e.ipsetHolding("192.0.2.3")
		}
		// Refreshed: .3 delisted, .4 listed, and 50 networks gone.
		bigList(t, list, 1950, "192.0.2.4", "2001:db8::4")
		out := e.mustMoat("--verbose", "reload")
		e.expect(false,
			"client/192.0.2.3 tcp 192.0.2.1:22 open", "client/2001:db8::3 tcp [2001:db8::1]:22 open",
			"client/192.0.2.4 tcp 192.0.2.1:22 timeout", "client/2001:db8::4 tcp [2001:db8::1]:22 timeout")
		if backend == "nftables" {
			if !strings.Contains(out, "taken from what moat loaded") {
				t.Errorf("the fingerprint after a set change was read back from the kernel:\n%s", out)
			}
			if _, err := os.Stat(filepath.Join(e.stateDir(), "nft-set.bl4_big")); err != nil {
				t.Errorf("no element record: %v", err)
			}
			// Another table moves the generation: status compares the
			// kernel with the recorded fingerprint, and they agree.
			e.run("server", "nft", "add", "table", "inet", "other")
			e.run("server", "nft", "delete", "table", "inet", "other")
		} else if after := e.ipsetHolding("192.0.2.4"); after != setBefore {
			// Changed in place, not loaded whole under another name.
			t.Errorf("the list's ipset changed from %s to %s", setBefore, after)
		}
		e.expectStatusClean("status sees drift after the refresh")
		// Without the record, the full comparison (rule by rule against
		// a scratch namespace loaded by nft or iptables-restore) agrees
		// too: what moat wrote over netlink is what nft writes.
		e.removeFingerprintIfAny()
		e.expectStatusClean("the full comparison sees drift after the refresh")
		// The same refresh twice changes nothing.
		e.mustMoat("reload")
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:22 open", "client/2001:db8::4 tcp [2001:db8::1]:22 timeout")

		// An address added by hand to the list's set is drift.
		if backend == "nftables" {
			e.run("server", "nft", "add", "element", "inet", "moat", "bl4_big", "{ 192.0.2.3 }")
		} else {
			e.run("server", "ipset", "add", e.ipsetHolding("192.0.2.4"), "192.0.2.3")
		}
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:22 timeout")
		if st := e.mustMoat("status"); !strings.Contains(st, "changed outside moat") {
			t.Errorf("status does not see an address added by hand:\n%s", st)
		}
		out = e.mustMoat("reload")
		if !strings.Contains(out, "rewrites moat's rules whole") {
			t.Errorf("reload did not repair the hand change:\n%s", out)
		}
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:22 open", "client/192.0.2.4 tcp 192.0.2.1:22 timeout")
		e.expectStatusClean("status sees drift after the repair")
	})
}

// ipsetHolding names the moat ipset that holds addr.
func (e *env) ipsetHolding(addr string) string {
	e.t.Helper()
	for _, name := range strings.Fields(e.run("server", "ipset", "list", "-n")) {
		if !strings.HasPrefix(name, "moat-") {
			continue
		}
		if _, err := e.ns("server").Run(context.Background(), "ipset", "test", name, addr); err == nil {
			return name
		}
	}
	e.t.Fatalf("no moat ipset holds %s", addr)
	return ""
}

// moat's own bans keep the recorded fingerprint current (nftables): the
// command after a ban knows from the generation alone that moat's table
// is as applied, instead of reading every policy set back; and the record
// still cannot hide a change made by hand after the ban.
func TestBanKeepsFingerprint(t *testing.T) {
	e := onBackend(t, "nftables")
	list := filepath.Join(e.dir, "big.netset")
	bigList(t, list, 2000, "192.0.2.3")
	e.apply(fmt.Sprintf("default deny incoming\nallow 22/tcp\nblocklist big file %s\n", list))
	e.mustMoat("ban", "192.0.2.4", "2001:db8::4", "--for", "1h")
	e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:22 timeout", "client/2001:db8::4 tcp [2001:db8::1]:22 timeout",
		"client tcp 192.0.2.1:22 open")
	out := e.mustMoat("--verbose", "allow", "80/tcp")
	if !strings.Contains(out, "unchanged since its fingerprint was taken") {
		t.Errorf("after a ban, the next command did not trust the generation:\n%s", out)
	}
	e.mustMoat("unban", "192.0.2.4")
	e.run("server", "nft", "add", "element", "inet", "moat", "bl4_big", "{ 192.0.2.2 }")
	e.mustMoat("ban", "2001:db8::5", "--for", "1h")
	if st := e.mustMoat("status"); !strings.Contains(st, "changed outside moat") {
		t.Errorf("a hand change between two bans went unseen:\n%s", st)
	}
	e.mustMoat("reload")
	e.expect(false, "client tcp 192.0.2.1:80 open", "client/192.0.2.4 tcp 192.0.2.1:80 open", "client/2001:db8::4 tcp [2001:db8::1]:22 timeout")
}

// A list that empties and fills again goes through the same differences
// (nftables: its interval set loses and regains the end element at the
// zero address that nft keeps before the first network), and the kernel
// filters as each version says, both backends, IPv4 and IPv6.
func TestSetDiffEmptyList(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		list := e.newFile("l.netset", "0.0.0.0/8\n192.0.2.3\n2001:db8::3\n")
		e.apply(fmt.Sprintf("default deny incoming\nallow 22/tcp\nblocklist l file %s\n", list))
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:22 timeout", "client/2001:db8::3 tcp [2001:db8::1]:22 timeout", "client tcp 192.0.2.1:22 open")
		for i, content := range []string{"# nothing listed today\n", "192.0.2.4\n2001:db8::4\n", "0.0.0.0/8\n192.0.2.3\n2001:db8::3\n"} {
			writeFile(t, list, content)
			e.mustMoat("reload")
			for _, a := range []string{"192.0.2.3", "192.0.2.4"} {
				want := "open"
				if strings.Contains(content, a+"\n") {
					want = "timeout"
				}
				e.expect(false, fmt.Sprintf("client/%s tcp 192.0.2.1:22 %s", a, want))
			}
			for _, a := range []string{"2001:db8::3", "2001:db8::4"} {
				want := "open"
				if strings.Contains(content, a+"\n") {
					want = "timeout"
				}
				e.expect(false, fmt.Sprintf("client/%s tcp [2001:db8::1]:22 %s", a, want))
			}
			if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") {
				t.Errorf("step %d: status sees drift:\n%s", i, st)
			}
		}
		if backend == "nftables" {
			// nft reads the set back as it wrote it (interval ends included).
			got := e.run("server", "nft", "list", "set", "inet", "moat", "bl4_l")
			if !strings.Contains(got, "elements = { 0.0.0.0/8, 192.0.2.3 }") {
				t.Errorf("set after the last refresh:\n%s", got)
			}
		}
	})
}
