package ipt

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/setstore"
)

// A change of sets alone writes MOAT-GEN's "changing" mark and then both
// families' record over netlink, without iptables-restore. The rules
// written are, to the byte, those iptables-restore writes for the same
// record; iptables-save and iptables -S (both families) list them as
// moat's record, which a read with iptables-save finds; the mark is what
// Split reports when moat stops after it.
func TestKernelGenRecordNetlink(t *testing.T) {
	ns := labtest.NS(t, "moatgennl")
	ctx := context.Background()
	progs := map[string]int{}
	b := &Backend{Netlink: true, IpsetNetlink: true, Elements: setstore.Dir{Path: t.TempDir(), Prefix: "ipt-set."},
		Run: func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
			progs[name]++
			return execrun.Exec(ctx, stdin, name, args...)
		}}
	head := "default deny incoming\nallow 22/tcp\n"
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		if err := b.Apply(ctx, compile(t, head+denyList(50, -1))); err != nil {
			t.Fatal(err)
		}
		clear(progs)
		rs := compile(t, head+denyList(51, 3))
		if err := b.Apply(ctx, rs); err != nil {
			t.Fatal(err)
		}
		if progs["iptables-restore"]+progs["ip6tables-restore"] != 0 {
			t.Errorf("a change of sets ran %v, want no restore", progs)
		}
		g0, commits, _, known := b.LastApply()
		if now, err := nftGeneration(); err != nil || !known || commits != 2 || now != g0+2 {
			t.Errorf("generation %d, want %d+2 (the mark, the record): commits %d, known %v (%v)", now, g0, commits, known, err)
		}
		names := SetNames(rs)
		c := contentsOf(rs, names)
		gen, rh := generation(rs, names, c), rulesHash(rs, names)
		// What iptables-save and iptables -S say.
		for _, f := range families {
			save, err := execrun.Exec(ctx, nil, f.save)
			if err != nil {
				t.Fatal(err)
			}
			tool := strings.TrimSuffix(f.save, "-save")
			list, err := execrun.Exec(ctx, nil, tool, "-S", GenChain)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range genRuleLines("*filter\n" + genChainRules(gen, rh, c)) {
				if !strings.Contains(string(save), l+"\n") || !strings.Contains(string(list), l+"\n") {
					t.Errorf("%s: %q not listed:\n%s\n%s", f.fam, l, save, list)
				}
			}
			if sv := parseSave(save); sv.gen != gen || sv.rules != rh || !reflect.DeepEqual(sv.held, c) {
				t.Errorf("%s: iptables-save reads as generation %q rules %q held %v, want %q %q %v", f.fam, sv.gen, sv.rules, sv.held, gen, rh, c)
			}
		}
		// The same record written by iptables-restore: the same rules.
		dump := func() [][]nlRule {
			t.Helper()
			c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = c.Close() }()
			var out [][]nlRule
			for _, fam := range nlFamilies {
				rules, err := dumpRules(context.Background(), c, fam.proto, tableFilter)
				if err != nil {
					t.Fatal(err)
				}
				var gens []nlRule
				for _, r := range rules {
					if r.chain == GenChain {
						r.handle = 0 // new rules, new handles
						gens = append(gens, r)
					}
				}
				out = append(out, gens)
			}
			return out
		}
		ours := dump()
		if len(ours[0]) != len(genComments(gen, rh, c)) {
			t.Fatalf("MOAT-GEN holds %d rules, want %d", len(ours[0]), len(genComments(gen, rh, c)))
		}
		for _, f := range families {
			if out, err := execrun.Exec(ctx, []byte("*filter\n"+genChainRules(gen, rh, c)+"COMMIT\n"), f.restore, "--noflush"); err != nil {
				t.Fatal(err, string(out))
			}
		}
		if theirs := dump(); !reflect.DeepEqual(ours, theirs) {
			t.Errorf("MOAT-GEN written over netlink:\n%+v\nby iptables-restore:\n%+v", ours, theirs)
		}
		// The mark alone, as a moat stopped after it leaves it.
		st, err := (&Backend{Run: execrun.Exec}).readChains(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.markChanging(ctx, st, []string{names.of("input_deny_src4_3")}); err != nil {
			t.Fatal(err)
		}
		if split, err := (&Backend{Run: execrun.Exec}).Split(ctx); err != nil || !strings.Contains(split, "changing its ipsets") {
			t.Errorf("after the mark: Split %q (%v)", split, err)
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}
