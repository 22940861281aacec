package nft

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/ruleset"
)

// A whole apply (the first after an upgrade, a set redefined) lists the
// names of moat's chains and sets over netlink, without nft: `nft -j -t
// list table` fetched every element first (10 to 20 s with 200,000
// bans). The names are the ones nft lists, hand-made objects included.
func TestKernelObjectsOverNetlink(t *testing.T) {
	ctx := context.Background()
	r, ns := kernelNS(t)
	b := &Backend{Run: r.run}
	netlinkObjects := func() map[string][]string {
		t.Helper()
		var objs map[string][]string
		err := ns.Do(func() error {
			var err error
			objs, err = NetlinkReader{}.Objects()
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range objs {
			slices.Sort(v)
		}
		return objs
	}
	same := func(what string) {
		t.Helper()
		want, err := b.listObjects(ctx) // through nft's JSON
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range want {
			slices.Sort(v)
		}
		if got := netlinkObjects(); !maps.EqualFunc(got, want, slices.Equal) {
			t.Errorf("%s: netlink %v, nft %v", what, got, want)
		}
	}
	same("no table")
	rs := compile(t, "default deny incoming\nallow 22/tcp\nguard sshd\nguard portscan\n"+denyList(10, -1))
	if err := b.Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}
	if _, err := r.run(ctx, []byte("add set inet moat handset { type ipv4_addr; }\nadd map inet moat handmap { type ipv4_addr : verdict; }\nadd chain inet moat handchain\n"), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	same("moat's table with hand-made objects")
	if got := netlinkObjects(); !slices.Contains(got["map"], "handmap") || !slices.Contains(got["set"], "handset") || !slices.Contains(got["chain"], "handchain") {
		t.Errorf("hand-made objects missing: %v", got)
	}

	runs := 0
	counting := &Backend{Read: NetlinkReader{}, Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		runs++
		return r.run(ctx, stdin, name, args...)
	}}
	if err := ns.Do(func() error { _, err := counting.listObjects(ctx); return err }); err != nil {
		t.Fatal(err)
	}
	if runs != 0 {
		t.Errorf("listing the objects ran %d programs", runs)
	}
}

// The first apply after an upgrade (no record of the ban sets'
// definitions) keeps ban sets whose definition in the kernel is already
// the one wanted: it read every ban to put them back (seconds with
// 200,000) and re-created the sets. Ban sets of another definition (an
// older moat's, without the dynamic flag) are still migrated with their
// bans.
func TestKernelNoRecordKeepsBanSets(t *testing.T) {
	ctx := context.Background()
	r, ns := kernelNS(t)
	var scripts []string
	be := &Backend{Read: NetlinkReader{}, Netlink: true, Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		if stdin != nil {
			scripts = append(scripts, string(stdin))
		}
		return execrun.Exec(ctx, stdin, name, args...)
	}}
	apply := func(rs *ruleset.Ruleset) {
		t.Helper()
		if err := ns.Do(func() error { return be.Apply(ctx, rs) }); err != nil {
			t.Fatal(err)
		}
	}
	rs := compile(t, "default deny incoming\nallow 22/tcp\nguard portscan\n")
	apply(rs)
	if err := ns.Do(func() error {
		return be.Ban(ctx, []ruleset.Ban{{Addr: netip.MustParseAddr("203.0.113.9"), Timeout: time.Hour, Reason: "guard: test"}})
	}); err != nil {
		t.Fatal(err)
	}
	// The record lost, as after an upgrade from a moat without it.
	if _, err := r.run(ctx, []byte("flush chain inet moat moat_sync\n"), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	scripts = nil
	apply(rs)
	for _, s := range scripts {
		if strings.Contains(s, "delete set inet moat ban4") || strings.Contains(s, "203.0.113.9") {
			t.Errorf("the ban sets were re-created although their definition is the one wanted:\n%.1500s", s)
		}
	}
	var bans []ruleset.Ban
	if err := ns.Do(func() error { var err error; bans, err = be.Bans(ctx); return err }); err != nil || len(bans) != 1 || bans[0].Reason != "guard: test" {
		t.Errorf("bans after the apply: %+v %v", bans, err)
	}

	// An older moat's ban set (no dynamic flag): migrated, bans kept.
	if _, err := r.run(ctx, []byte("delete table inet moat\ntable inet moat {\n\tset ban4 { type ipv4_addr; flags timeout; comment \"bans\"; elements = { 203.0.113.7 timeout 1h comment \"guard: old\" } }\n\tset ban6 { type ipv6_addr; flags timeout; }\n}\n"), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	apply(rs)
	if err := ns.Do(func() error { var err error; bans, err = be.Bans(ctx); return err }); err != nil || len(bans) != 1 || bans[0].Addr.String() != "203.0.113.7" {
		t.Errorf("bans after migrating an old ban set: %+v %v", bans, err)
	}
	if table := listTable(t, r); !strings.Contains(table, "flags dynamic,timeout") {
		t.Errorf("the old ban set was not migrated:\n%.2000s", table)
	}

	// The same flags and size, another comment: not the definition
	// wanted (the kernel would keep the old comment), migrated too.
	if _, err := r.run(ctx, []byte("delete table inet moat\ntable inet moat {\n\tset ban4 { type ipv4_addr; flags dynamic,timeout; size 1048576; comment \"bans\"; elements = { 203.0.113.8 timeout 1h } }\n\tset ban6 { type ipv6_addr; flags dynamic,timeout; size 1048576; comment \"bans: 'moat bans' lists them\"; }\n}\n"), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	scripts = nil
	apply(rs)
	if all := strings.Join(scripts, "\n"); !strings.Contains(all, "delete set inet moat ban4") || strings.Contains(all, "delete set inet moat ban6") {
		t.Errorf("ban4 (another comment) must be re-created, ban6 (the same) kept:\n%.3000s", all)
	}
	if err := ns.Do(func() error { var err error; bans, err = be.Bans(ctx); return err }); err != nil || len(bans) != 1 || bans[0].Addr.String() != "203.0.113.8" {
		t.Errorf("bans after migrating a ban set with another comment: %+v %v", bans, err)
	}
}
