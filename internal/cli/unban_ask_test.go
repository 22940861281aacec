package cli

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/moat-fw/moat/internal/ruleset"
)

type banAsker struct {
	banned         map[netip.Addr]bool
	asked, listed  int
	askErr, listEr error
}

func (f *banAsker) Bans(context.Context) ([]ruleset.Ban, error) {
	f.listed++
	var out []ruleset.Ban
	for a := range f.banned {
		out = append(out, ruleset.Ban{Addr: a})
	}
	return out, f.listEr
}

func (f *banAsker) Banned(_ context.Context, a netip.Addr) (bool, error) {
	f.asked++
	return f.banned[a], f.askErr
}

// TestUnbanAsksOnceForMany: unban of a list (xargs of thousands of
// addresses) learns which were banned from one listing of the bans, not
// one lookup each (on iptables an 'ipset test' process each: 5,000
// addresses took 6.7 s); a few are asked one by one; what cannot be told
// counts as banned.
func TestUnbanAsksOnceForMany(t *testing.T) {
	var addrs []netip.Addr
	f := &banAsker{banned: map[netip.Addr]bool{}}
	for i := range 1000 {
		a := netip.MustParseAddr(fmt.Sprintf("198.51.%d.%d", 100+i/250, i%250+1))
		addrs = append(addrs, a)
		if i%3 == 0 {
			f.banned[a] = true
		}
	}
	was := bannedBefore(context.Background(), f, addrs, askEachMax)
	if f.asked != 0 || f.listed != 1 {
		t.Errorf("1000 addresses: %d lookups and %d listings, want one listing", f.asked, f.listed)
	}
	for i, a := range addrs {
		if was[a] != (i%3 == 0) {
			t.Fatalf("%s: banned %v, want %v", a, was[a], i%3 == 0)
		}
	}
	f.asked, f.listed = 0, 0
	if was := bannedBefore(context.Background(), f, addrs[:3], askEachMax); f.asked != 3 || f.listed != 0 || !was[addrs[0]] || was[addrs[1]] {
		t.Errorf("3 addresses: %d lookups, %d listings, %v", f.asked, f.listed, was)
	}
	f.asked, f.listed = 0, 0
	if bannedBefore(context.Background(), f, addrs, len(addrs)); f.asked != 1000 || f.listed != 0 {
		t.Errorf("asked each (nftables): %d lookups, %d listings", f.asked, f.listed)
	}
	f.listEr, f.askErr = errors.New("no"), errors.New("no")
	for _, n := range []int{3, 1000} {
		for a, in := range bannedBefore(context.Background(), f, addrs[:n], askEachMax) {
			if !in {
				t.Errorf("%d addresses, lookups failing: %s said not banned", n, a)
			}
		}
	}
}
