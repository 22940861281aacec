package nft

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/setstore"
)

// A first apply (no table of moat's in the kernel) creates and fills the
// policy sets over netlink (the stage), then sends the rest through nft
// without their elements; the kernel then holds exactly what a load
// through nft alone gives: the same listing (set definitions, comments,
// order, interval encoding of the zero network and of the top of the
// address space), the same fingerprint. The two transactions moved the
// generation by two, and the apply vouches for the table after them.
func TestKernelStagedSameAsNft(t *testing.T) {
	k := newNLKernel(t)
	fresh, _ := kernelNS(t)
	rs := compile(t, edgeList(denyList(3000, -1)))
	gen := k.generation()
	k.apply(rs)
	script := k.rec.last()
	if strings.Contains(script, "elements") {
		t.Errorf("the first apply sent policy set elements through nft:\n%.1500s", script)
	}
	if !strings.Contains(script, "add set inet moat input_deny_src4_3 {") {
		t.Errorf("the nft transaction does not declare the staged set:\n%.3000s", script)
	}
	if now := k.generation(); now != gen+2 {
		t.Errorf("generation %d -> %d, want two transactions", gen, now)
	}
	if before, after, ok := k.be.LastCommit(); !ok || !k.be.LastCommitWhole() || before != gen+1 || after != gen+2 {
		t.Errorf("LastCommit %d -> %d (%v, whole %v), want %d -> %d whole", before, after, ok, k.be.LastCommitWhole(), gen+1, gen+2)
	}
	f := &Backend{Run: fresh.run}
	if err := f.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fresh.last(), "elements") {
		t.Fatal("the load through nft alone sent no elements: the test compares nothing")
	}
	if got, want := listTable(t, k.rec), listTable(t, fresh); got != want {
		t.Fatalf("the staged table is not nft's:\n--- staged\n%.4000s\n--- nft\n%.4000s", got, want)
	}
	kf := &Backend{Run: k.rec.run}
	a, err1 := kf.Fingerprint(context.Background())
	b, err2 := f.Fingerprint(context.Background())
	if err := errors.Join(err1, err2); err != nil || a != b {
		t.Errorf("fingerprints %q and %q (%v)", a, b, err)
	}
	// The same ruleset again is no change; another one is a difference.
	gen = k.generation()
	k.apply(rs)
	if k.generation() != gen {
		t.Error("the same ruleset again changed the kernel")
	}
}

// Between the stage and the nft transaction the table has the filled sets
// and no chain: nothing refers to them, no packet is filtered by moat. A
// hand change in that window moves the generation between the two, so
// the apply does not vouch for the table (LastCommit).
func TestKernelStageWindow(t *testing.T) {
	k := newNLKernel(t)
	rs := compile(t, edgeList(denyList(500, -1)))
	seen := false
	k.be.beforeCommit = func() {
		seen = true
		out, err := execrun.Exec(context.Background(), nil, "nft", "list", "table", "inet", TableName)
		if err != nil {
			t.Fatal(err)
		}
		table := string(out)
		if strings.Contains(table, "chain ") {
			t.Errorf("chains before the nft transaction:\n%.2000s", table)
		}
		if !strings.Contains(table, "198.18.3.230") || !strings.Contains(table, "ffff:ffff::/32") {
			t.Errorf("the staged sets are not filled:\n%.2000s", table)
		}
		if _, err := execrun.Exec(context.Background(), nil, "nft", "add", "element", "inet", TableName, "input_deny_src4_3", "{ 203.0.113.9 }"); err != nil {
			t.Fatal(err)
		}
	}
	k.apply(rs)
	if !seen {
		t.Fatal("no nft transaction after the stage")
	}
	if before, after, ok := k.be.LastCommit(); ok && k.be.LastCommitWhole() && after == before+1 {
		t.Errorf("the apply vouches for the table (%d -> %d) with an element added by hand after the stage", before, after)
	}
	if !strings.Contains(listTableRaw(t, k), "203.0.113.9") {
		t.Error("the element added by hand is gone: the test no longer shows the window")
	}
}

// A stage refused because the ruleset changed after the plan read the
// kernel (here another table made by hand) commits nothing; the apply then
// loads the whole table through nft, as without a stage.
func TestKernelStageRefused(t *testing.T) {
	k := newNLKernel(t)
	fresh, _ := kernelNS(t)
	rs := compile(t, edgeList(denyList(200, -1)))
	tried := false
	k.be.beforeSend = func() {
		tried = true
		if _, err := execrun.Exec(context.Background(), []byte("table inet other { }\n"), "nft", "-f", "-"); err != nil {
			t.Fatal(err)
		}
	}
	k.apply(rs)
	if !tried {
		t.Fatal("no stage was sent")
	}
	if !strings.Contains(k.rec.last(), "elements") {
		t.Errorf("after a refused stage the nft transaction has no elements:\n%.1500s", k.rec.last())
	}
	f := &Backend{Run: fresh.run}
	if err := f.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	if got, want := listTable(t, k.rec), listTable(t, fresh); got != want {
		t.Fatalf("after a refused stage the table is not nft's:\n--- got\n%.3000s\n--- nft\n%.3000s", got, want)
	}
}

// When the nft transaction after a stage fails, the table the stage made
// is deleted: the kernel holds no table of moat's, as before the apply.
func TestKernelStageUndone(t *testing.T) {
	k := newNLKernel(t)
	run := k.be.Run
	k.be.Run = func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		if len(args) > 0 && args[0] == "-f" {
			return nil, errors.New("refused by the test")
		}
		return run(ctx, stdin, name, args...)
	}
	err := k.do(func() error { return k.be.Apply(context.Background(), compile(t, edgeList(""))) })
	if err == nil || !errors.Is(err, errStaged) {
		t.Fatalf("Apply: %v", err)
	}
	var active bool
	if err := k.do(func() (err error) { active, err = k.be.Active(context.Background()); return err }); err != nil || active {
		t.Errorf("moat's table after a failed apply: active %v (%v)", active, err)
	}
}

// The element lists are written byte for byte as netlink.MarshalAttributes
// writes them from each element's attributes.
func TestElementsEncoding(t *testing.T) {
	var ps []netip.Prefix
	for _, s := range []string{"0.0.0.0/8", "10.0.0.0/24", "192.0.2.7/32", "255.255.255.0/24"} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	for i := range 3000 {
		ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(i>>15), byte(i >> 7), byte(2 * (i & 127))}), 32))
	}
	ps = setstore.Merge(ps)
	els := intervalElems(ps)
	els = append(els, elem{key: netip.MustParseAddr("2001:db8::1"), timeout: 5e9, comment: "x"})
	var got batch
	got.elements(createElems, "s", els)
	if got.err != nil {
		t.Fatal(got.err)
	}
	var list []byte
	for _, e := range els {
		data, err := e.attrs()
		if err != nil {
			t.Fatal(err)
		}
		one, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: data}})
		if err != nil {
			t.Fatal(err)
		}
		list = append(list, one...)
	}
	var all []byte
	for _, m := range got.msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			t.Fatal(err)
		}
		for ad.Next() {
			if ad.Type() == unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				all = append(all, ad.Bytes()...)
			}
		}
		if len(m.Data) > listBytes+64 {
			t.Errorf("a message of %d bytes", len(m.Data))
		}
	}
	if len(got.msgs) < 2 || !bytes.Equal(all, list) {
		t.Errorf("%d messages; the element lists differ from MarshalAttributes' (%d and %d bytes)", len(got.msgs), len(all), len(list))
	}
}
