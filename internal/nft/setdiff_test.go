package nft

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go4.org/netipx"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/setstore"
)

// nlKernel is a backend as moat runs it (nft for whole loads, netlink for
// differences and bans, an element store in a directory of its own),
// acting inside a network namespace of the test's own.
type nlKernel struct {
	t     testing.TB
	ns    *lab.NS
	rec   *recorder
	be    *Backend
	store setstore.Dir
}

func newNLKernel(t testing.TB) *nlKernel {
	rec, ns := kernelNS(t)
	k := &nlKernel{t: t, ns: ns, rec: rec, store: setstore.Dir{Path: t.TempDir(), Prefix: "nft-set."}}
	run := func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		if stdin != nil {
			rec.mu.Lock()
			rec.inputs = append(rec.inputs, string(stdin))
			rec.mu.Unlock()
		}
		return execrun.Exec(ctx, stdin, name, args...)
	}
	k.be = &Backend{Run: run, Read: NetlinkReader{}, Netlink: true, Elements: k.store}
	return k
}

func (k *nlKernel) do(f func() error) error { return k.ns.Do(f) }

func (k *nlKernel) apply(rs *ruleset.Ruleset) {
	k.t.Helper()
	if err := k.do(func() error { return k.be.Apply(context.Background(), rs) }); err != nil {
		k.t.Fatal(err)
	}
}

func (k *nlKernel) nft(script string) error {
	_, err := k.rec.run(context.Background(), []byte(script), "nft", "-f", "-")
	return err
}

// table lists moat's table without the ban sets' elements.
func (k *nlKernel) table() string {
	k.t.Helper()
	out, err := k.rec.run(context.Background(), nil, "nft", "-s", "list", "table", "inet", TableName)
	if err != nil {
		k.t.Fatal(err)
	}
	return stripBans(string(out))
}

// edgeList is a policy whose sets hold what the interval encoding must get
// right: a network from the zero address, one to the top of the address
// space, adjacent networks that merging cannot join, single addresses.
func edgeList(extra string) string {
	return "default deny incoming\nallow 22/tcp\n" +
		"deny from 0.0.0.0/8\ndeny from 10.0.0.0/24\ndeny from 10.0.1.0/25\ndeny from 192.0.2.7\n" +
		"deny from 255.255.255.0/24\ndeny from 2001:db8::/64\ndeny from 2001:db8:0:1::/64\n" +
		"deny from ffff:ffff::/32\n" + extra
}

// A change of policy set elements alone goes to the kernel as element
// deletes and adds over netlink, with moat's record, in one transaction,
// and no nft process; the kernel then holds exactly what a fresh load of
// the new policy gives, interval encoding included.
func TestKernelNetlinkSetDiff(t *testing.T) {
	k := newNLKernel(t)
	fresh, _ := kernelNS(t)
	steps := []string{
		edgeList(denyList(2000, -1)),
		edgeList(denyList(2000, 5) + "deny from 203.0.113.0/24\ndeny from 2001:db8:ffff::/48\n"),
		// A network cut shorter keeps its start address; the zero
		// network goes (the kernel then needs an end at 0.0.0.0).
		strings.Replace(edgeList(denyList(2000, 5)+"deny from 203.0.113.0/25\n"), "deny from 0.0.0.0/8\n", "", 1),
		strings.Replace(edgeList(denyList(1990, -1)+"deny from 203.0.113.0/25\n"), "deny from 255.255.255.0/24\n", "deny from 255.255.255.128/25\n", 1),
		edgeList(denyList(2000, -1)),
	}
	k.apply(compile(t, steps[0]))
	for i, text := range steps[1:] {
		n := len(k.rec.inputs)
		rs := compile(t, text)
		k.apply(rs)
		if len(k.rec.inputs) != n {
			t.Errorf("step %d: a change of set elements ran nft:\n%.1500s", i+1, k.rec.last())
		}
		f := &Backend{Run: fresh.run}
		if err := f.Remove(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := f.Apply(context.Background(), rs); err != nil {
			t.Fatal(err)
		}
		if got, want := k.table(), stripBans(listTable(t, fresh)); got != want {
			t.Fatalf("step %d: the table after the difference is not a fresh load's:\n--- diff\n%.3000s\n--- fresh\n%.3000s", i+1, got, want)
		}
		// The same change again sends nothing.
		n = len(k.rec.inputs)
		gen := k.generation()
		k.apply(rs)
		if len(k.rec.inputs) != n || k.generation() != gen {
			t.Errorf("step %d: the same change twice changed the kernel again", i+1)
		}
	}
}

func (k *nlKernel) generation() uint32 {
	k.t.Helper()
	var g uint32
	if err := k.do(func() (err error) { g, err = Generation(); return err }); err != nil {
		k.t.Fatal(err)
	}
	return g
}

// What the element store says is used only when it is what the kernel's
// record names: a missing, corrupted or stale entry (moat killed between
// the kernel's commit and the store's write), or a set changed by hand
// behind the store's back, make the change refill the set through nft, and
// the kernel still ends up exactly as a fresh load.
func TestKernelSetDiffFallsBack(t *testing.T) {
	head := "default deny incoming\nallow 22/tcp\n"
	a, b, c := compile(t, head+denyList(500, -1)), compile(t, head+denyList(500, 3)), compile(t, head+denyList(500, 9))
	set4 := "input_deny_src4_3"
	for _, tc := range []struct {
		name   string
		break_ func(k *nlKernel, saved []byte)
	}{
		{"missing", func(k *nlKernel, _ []byte) { _ = os.Remove(k.store.File(set4)) }},
		{"corrupted", func(k *nlKernel, _ []byte) {
			data, err := os.ReadFile(k.store.File(set4))
			if err != nil {
				t.Fatal(err)
			}
			data[len(data)/2] ^= 1
			if err := os.WriteFile(k.store.File(set4), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"cut-short", func(k *nlKernel, _ []byte) {
			data, _ := os.ReadFile(k.store.File(set4))
			_ = os.WriteFile(k.store.File(set4), data[:len(data)-40], 0o600)
		}},
		{"stale (killed before the store was written)", func(k *nlKernel, saved []byte) {
			if err := os.WriteFile(k.store.File(set4), saved, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"element deleted by hand", func(k *nlKernel, _ []byte) {
			// c drops denyList's 10th network: its delete finds nothing.
			if err := k.nft("delete element inet moat " + set4 + " { 198.18.0.18 }\n"); err != nil {
				t.Fatal(err)
			}
		}},
		{"element added by hand where moat adds", func(k *nlKernel, _ []byte) {
			// c brings back the network b dropped (denyList's 4th).
			if err := k.nft("add element inet moat " + set4 + " { 198.18.0.6 }\n"); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(strings.Fields(tc.name)[0], func(t *testing.T) {
			k := newNLKernel(t)
			k.apply(a)
			saved, err := os.ReadFile(k.store.File(set4))
			if err != nil {
				t.Fatal(err)
			}
			k.apply(b)
			tc.break_(k, saved)
			n := len(k.rec.inputs)
			k.apply(c)
			if len(k.rec.inputs) != n+1 || !strings.Contains(k.rec.last(), "flush set inet moat "+set4) {
				t.Errorf("%s: want the set refilled through nft, got %d runs:\n%.800s", tc.name, len(k.rec.inputs)-n, k.rec.last())
			}
			fresh := newNLKernel(t)
			fresh.apply(c)
			if got, want := k.table(), fresh.table(); got != want {
				t.Errorf("%s: table differs from a fresh load", tc.name)
			}
			// The store is right again: the next change is a difference.
			n = len(k.rec.inputs)
			k.apply(a)
			if len(k.rec.inputs) != n {
				t.Errorf("%s: the change after the refill ran nft again", tc.name)
			}
		})
	}
}

// A netlink transaction planned for one ruleset generation commits
// nothing once another change came in between.
func TestKernelBatchGeneration(t *testing.T) {
	k := newNLKernel(t)
	k.apply(compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(3, -1)))
	gen := k.generation()
	if err := k.nft("add table inet other\n"); err != nil {
		t.Fatal(err)
	}
	var tx batch
	tx.elements(addElems, "input_deny_src4_3", intervalElems([]netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}))
	err := k.do(func() error { return tx.send(gen) })
	if !errors.Is(err, errGenerationMoved) {
		t.Fatalf("stale generation: %v, want errGenerationMoved", err)
	}
	if strings.Contains(k.table(), "198.51.100.0/24") {
		t.Error("a batch of a stale generation was committed")
	}
	if err := k.do(func() error { return tx.send(k.generation()) }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(k.table(), "198.51.100.0/24") {
		t.Errorf("the batch at the current generation was not committed:\n%s", k.table())
	}
}

// Bans, unbans and login exemptions go over netlink (nft would fetch
// every policy set element first) and read back as nft wrote them.
func TestKernelNetlinkBans(t *testing.T) {
	k := newNLKernel(t)
	ctx := context.Background()
	err := k.do(func() error {
		return k.be.Ban(ctx, []ruleset.Ban{{Addr: mustAddr("192.0.2.9"), Timeout: time.Hour}})
	})
	if err == nil || !strings.Contains(err.Error(), "not loaded") {
		t.Errorf("ban without moat's table: %v", err)
	}
	k.apply(compile(t, "default deny incoming\nallow 22/tcp\nguard portscan\n"+denyList(100, -1)))
	n := len(k.rec.inputs)
	var bans []ruleset.Ban
	err = k.do(func() error {
		if err := k.be.Ban(ctx, []ruleset.Ban{
			{Addr: mustAddr("192.0.2.9"), Timeout: 90 * time.Minute, Reason: "guard: sshd"},
			{Addr: mustAddr("2001:db8::9"), Timeout: 1500 * time.Millisecond, Reason: "manual: x"},
		}); err != nil {
			return err
		}
		if err := k.be.Ban(ctx, []ruleset.Ban{{Addr: mustAddr("192.0.2.9"), Timeout: 2 * time.Hour, Reason: "manual: again", Replace: true}}); err != nil {
			return err
		}
		if err := k.be.Protect(ctx, []netip.Addr{mustAddr("198.51.100.1"), mustAddr("2001:db8::1")}, time.Hour); err != nil {
			return err
		}
		var err error
		bans, err = k.be.Bans(ctx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(k.rec.inputs) != n {
		t.Errorf("bans ran nft: %q", k.rec.last())
	}
	got := map[string]ruleset.Ban{}
	for _, b := range bans {
		got[b.Addr.String()] = b
	}
	if b := got["192.0.2.9"]; b.Reason != "manual: again" || b.Timeout != 2*time.Hour || b.Expires < 119*time.Minute {
		t.Errorf("replaced ban: %+v", b)
	}
	if b := got["2001:db8::9"]; b.Reason != "manual: x" || b.Timeout != 2*time.Second {
		t.Errorf("IPv6 ban: %+v", b)
	}
	if table := listTableRaw(t, k); !strings.Contains(table, "198.51.100.1 timeout 1h") {
		t.Errorf("login exemption missing:\n%.2000s", table)
	}
	err = k.do(func() error {
		if err := k.be.Unban(ctx, []netip.Addr{mustAddr("192.0.2.9"), mustAddr("203.0.113.1")}); err != nil {
			return err
		}
		var err error
		bans, err = k.be.Bans(ctx)
		return err
	})
	if err != nil || len(bans) != 1 || bans[0].Addr.String() != "2001:db8::9" {
		t.Errorf("after unban: %+v %v", bans, err)
	}
}

func listTableRaw(t *testing.T, k *nlKernel) string {
	t.Helper()
	out, err := k.rec.run(context.Background(), nil, "nft", "list", "table", "inet", TableName)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// The interval encoding nft uses, checked without a kernel.
func TestIntervalElems(t *testing.T) {
	p := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	str := func(els []elem) string {
		var parts []string
		for _, e := range els {
			s := e.key.String()
			if e.end {
				s += "]"
			}
			if e.open {
				s += "..."
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, " ")
	}
	for _, tc := range []struct {
		in   []netip.Prefix
		want string
	}{
		{p("10.0.0.0/24", "10.0.1.0/25", "192.0.2.7/32", "255.255.255.0/24"), "0.0.0.0] 10.0.0.0 10.0.1.0] 10.0.1.0 10.0.1.128] 192.0.2.7 192.0.2.8] 255.255.255.0..."},
		{p("0.0.0.0/8", "10.0.0.0/8"), "0.0.0.0 1.0.0.0] 10.0.0.0 11.0.0.0]"},
		{p("2001:db8::/64", "ffff::/16"), "::] 2001:db8:: 2001:db8:0:1::] ffff::..."},
		{nil, ""},
	} {
		if got := str(intervalElems(tc.in)); got != tc.want {
			t.Errorf("%v: got %s, want %s", tc.in, got, tc.want)
		}
	}
	del, add := diffElems(intervalElems(p("10.0.0.0/24", "255.255.255.0/24")), intervalElems(p("10.0.0.0/25", "255.255.255.0/25")))
	if str(del) != "10.0.1.0] 255.255.255.0..." || str(add) != "10.0.0.128] 255.255.255.0 255.255.255.128]" {
		t.Errorf("diff: del %s, add %s", str(del), str(add))
	}
}

// The walk of two network lists gives the same difference as comparing
// every element of the two sets, for random lists of both families.
func TestDiffIntervalsMatchesElements(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for round := range 400 {
		v6 := round%2 == 1
		gen := func() []netip.Prefix {
			var b netipx.IPSetBuilder
			for range rnd.IntN(12) {
				var a netip.Addr
				bits := 0
				if v6 {
					var x [16]byte
					x[0] = byte(rnd.IntN(4)) * 0x55
					x[1] = byte(rnd.IntN(8))
					a, bits = netip.AddrFrom16(x), 4+rnd.IntN(13)
				} else {
					a, bits = netip.AddrFrom4([4]byte{byte(rnd.IntN(4)) * 0x55, byte(rnd.IntN(8)), 0, 0}), 1+rnd.IntN(16)
				}
				if rnd.IntN(8) == 0 {
					bits = 1 // from zero or to the top
				}
				b.AddPrefix(netip.PrefixFrom(a, bits).Masked())
			}
			s, _ := b.IPSet()
			return s.Prefixes()
		}
		old, new := gen(), gen()
		d1, a1 := diffIntervals(old, new)
		d2, a2 := diffElems(intervalElems(old), intervalElems(new))
		key := func(els []elem) string {
			var out []string
			for _, e := range els {
				out = append(out, fmt.Sprintf("%s/%v/%v", e.key, e.end, e.open))
			}
			slices.Sort(out)
			return strings.Join(out, " ")
		}
		if key(d1) != key(d2) || key(a1) != key(a2) {
			t.Fatalf("%v -> %v:\nwalk: del %s add %s\nelems: del %s add %s", old, new, key(d1), key(a1), key(d2), key(a2))
		}
	}
}

// mergePrefixes and prefixesHash agree with netipx on random lists.
func TestMergePrefixesMatchesNetipx(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	for round := range 2000 {
		var in []netip.Prefix
		var b netipx.IPSetBuilder
		for range rnd.IntN(30) {
			var p netip.Prefix
			if round%2 == 0 {
				p = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(rnd.IntN(3)) * 0x7f, byte(rnd.IntN(4)), byte(rnd.IntN(4)), byte(rnd.IntN(4))}), rnd.IntN(33))
			} else {
				var x [16]byte
				x[0], x[15] = byte(rnd.IntN(3))*0x7f, byte(rnd.IntN(8))
				p = netip.PrefixFrom(netip.AddrFrom16(x), []int{0, 1, 8, 64, 125, 126, 127, 128}[rnd.IntN(8)])
			}
			in = append(in, p)
			b.AddPrefix(p.Masked())
		}
		s, _ := b.IPSet()
		want := s.Prefixes()
		got := setstore.Merge(in)
		if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("%v:\ngot  %v\nwant %v", in, got, want)
		}
		if prefixesHash(got) != RangesHash(s.Ranges()) {
			t.Fatalf("%v: ranges hash differs", in)
		}
	}
}

// A change committed by someone else between moat's plan and its netlink
// transaction (a ban from the guard) makes the kernel refuse the
// transaction whole; moat plans again at the new generation and still
// sends only the difference (no nft, no refill), and the kernel ends up
// exactly as a fresh load.
func TestKernelSetDiffRetriesAfterOtherCommit(t *testing.T) {
	k := newNLKernel(t)
	head := "default deny incoming\nallow 22/tcp\n"
	k.apply(compile(t, head+denyList(300, -1)))
	other := 0
	k.be.beforeSend = func() {
		if other < 2 {
			other++
			// In the namespace already (called within k.do).
			if _, err := execrun.Exec(context.Background(), []byte(fmt.Sprintf("add table inet other%d\n", other)), "nft", "-f", "-"); err != nil {
				t.Error(err)
			}
		}
	}
	n := len(k.rec.inputs)
	after := compile(t, head+denyList(300, 7))
	k.apply(after)
	if other != 2 || len(k.rec.inputs) != n {
		t.Errorf("%d other commits, %d nft runs (want 2 and none):\n%.500s", other, len(k.rec.inputs)-n, k.rec.last())
	}
	if before, after, ok := k.be.LastCommit(); !ok || after != before+1 {
		t.Errorf("last commit %d -> %d (%v)", before, after, ok)
	}
	fresh := newNLKernel(t)
	fresh.apply(after)
	if got, want := k.table(), fresh.table(); got != want {
		t.Errorf("table differs from a fresh load:\n%.2000s\n---\n%.2000s", got, want)
	}
}

// A set a change does not touch gets its element record back when it has
// none for its entries (moat upgraded, the record lost), also when the
// apply changes nothing; else every later fingerprint would read it back
// from the kernel and its next change would refill it.
func TestKernelRecordsUntouchedSets(t *testing.T) {
	k := newNLKernel(t)
	head := "default deny incoming\nallow 22/tcp\n"
	a := compile(t, head+denyList(300, -1))
	k.apply(a)
	set6 := "input_deny_src6_4"
	for _, rs := range []*ruleset.Ruleset{compile(t, head+denyList(300, -1)+"deny from 192.0.2.77\n"), a, a} {
		if err := os.Remove(k.store.File(set6)); err != nil {
			t.Fatal(err)
		}
		k.apply(rs)
		st, err := k.store.Load(set6)
		if err != nil || len(st.Prefixes) != 300 {
			t.Fatalf("record of the untouched set: %d networks, %v", len(st.Prefixes), err)
		}
	}
	var ranges func(string) (string, bool)
	if err := k.do(func() error { ranges = k.be.LoadedRanges(context.Background()); return nil }); err != nil {
		t.Fatal(err)
	}
	if _, ok := ranges(set6); !ok {
		t.Error("the restored record does not stand for the set")
	}
}

// One transaction of many bans with long reasons is cut into messages
// whose element lists fit netlink's 16-bit attribute length (one list of
// 2,000 bans with comments would have passed 300 KB, and its length
// wrapped around).
func TestKernelManyBansWithReasons(t *testing.T) {
	k := newNLKernel(t)
	k.apply(compile(t, "default deny incoming\nallow 22/tcp\n"))
	reason := "guard: " + strings.Repeat("x", 120)
	var bans []ruleset.Ban
	for i := range 2000 {
		bans = append(bans, ruleset.Ban{Addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), Timeout: time.Hour, Reason: reason})
	}
	var got []ruleset.Ban
	err := k.do(func() error {
		if err := k.be.Ban(context.Background(), bans); err != nil {
			return err
		}
		var err error
		got, err = k.be.Bans(context.Background())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2000 || got[0].Reason != ruleset.CleanReason(reason) {
		t.Errorf("%d bans back (want 2000), first %+v", len(got), got[0])
	}
}

// A whole rewrite vouches for the table after it (LastCommitWhole) only
// when nothing was committed between the plan's read of the table and the
// commit: a chain added by hand in between is not among the objects the
// plan deletes, survives the rewrite, and must not count as moat's.
func TestKernelWholeCommitAfterHandChange(t *testing.T) {
	k := newNLKernel(t)
	rs := compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(20, -1))
	k.apply(rs)
	k.be.Full = true
	k.be.beforeCommit = func() {
		// In the namespace already (called within k.do).
		if _, err := execrun.Exec(context.Background(), []byte("add chain inet moat hand { type filter hook input priority -5; policy drop; }\n"), "nft", "-f", "-"); err != nil {
			t.Error(err)
		}
	}
	k.apply(rs)
	if !strings.Contains(listTableRaw(t, k), "chain hand") {
		t.Fatal("the hand-made chain is gone: the test no longer shows the window")
	}
	if before, after, ok := k.be.LastCommit(); ok && k.be.LastCommitWhole() && after == before+1 {
		t.Errorf("the rewrite claims the table alone (%d -> %d) with a hand-made chain in it", before, after)
	}
}

// A transaction of as many messages as a patch may send (maxNetlinkElems
// elements, about 450 messages of 32 KB) has every ack read back: the
// kernel queues one per message, and a receive buffer of the default size
// overflowed at about 290, so a committed transaction was reported
// refused (ENOBUFS).
func TestKernelBatchManyMessages(t *testing.T) {
	k := newNLKernel(t)
	k.apply(compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(3, -1)))
	var ps []netip.Prefix
	for i := range maxNetlinkElems / 2 {
		ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 15), byte(i >> 7), byte(i << 1)}), 32))
	}
	var tx batch
	tx.elements(createElems, "input_deny_src4_3", intervalElems(ps))
	gen := k.generation()
	if err := k.do(func() error { return tx.send(gen) }); err != nil {
		t.Fatalf("%d messages: %v", len(tx.msgs), err)
	}
	if now := k.generation(); now != gen+1 {
		t.Errorf("generation %d -> %d", gen, now)
	}
}

// A transaction with nothing in it commits nothing, and AfterBan does not
// hear of a generation step: the record moved to G+1 would vouch for the
// next commit, whoever makes it.
func TestEmptyBanBatchMovesNoRecord(t *testing.T) {
	b := &Backend{Netlink: true, AfterBan: func(before, after uint32) { t.Errorf("AfterBan(%d, %d) for an empty transaction", before, after) }}
	k := newNLKernel(t)
	if err := k.do(func() error { return b.sendBans(&batch{}) }); err != nil {
		t.Fatal(err)
	}
}
