package nft

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// fakeElemDumps answers set element dumps with made-up messages: the n-th
// dump (from 1) holds the one element 192.0.2.n, its part marked
// NLM_F_DUMP_INTR when intr(n).
func fakeElemDumps(intr func(n int) bool) (dial func() (*netlink.Conn, error), dumps *int) {
	return fakeElemDumpsWith(intr, false)
}

// fakeElemDumpsWith is fakeElemDumps; with shared every dump also holds
// 198.51.100.1 with n seconds left.
func fakeElemDumpsWith(intr func(n int) bool, shared bool) (dial func() (*netlink.Conn, error), dumps *int) {
	dumps = new(int)
	dial = func() (*netlink.Conn, error) {
		return nltest.Dial(func(reqs []netlink.Message) ([]netlink.Message, error) {
			var out []netlink.Message
			for _, req := range reqs {
				*dumps++
				flags := netlink.Multi
				if intr(*dumps) {
					flags |= netlink.DumpInterrupted
				}
				key := nltest.MustMarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: []byte{192, 0, 2, byte(*dumps)}}})
				el := nltest.MustMarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_KEY, Data: key}})
				elems := []netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: el}}
				if shared {
					key := nltest.MustMarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: []byte{198, 51, 100, 1}}})
					exp := binary.BigEndian.AppendUint64(nil, uint64(*dumps)*1000)
					el := nltest.MustMarshalAttributes([]netlink.Attribute{
						{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_KEY, Data: key},
						{Type: unix.NFTA_SET_ELEM_EXPIRATION, Data: exp},
					})
					elems = append(elems, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: el})
				}
				list := nltest.MustMarshalAttributes(elems)
				attrs := nltest.MustMarshalAttributes([]netlink.Attribute{
					{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(TableName + "\x00")},
					{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte("protect4\x00")},
					{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: list},
				})
				out = append(out,
					netlink.Message{
						Header: netlink.Header{Type: req.Header.Type, Flags: flags, Sequence: req.Header.Sequence, PID: nltest.PID},
						Data:   append([]byte{unix.NFPROTO_INET, 0, 0, 0}, attrs...),
					},
					netlink.Message{Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi, Sequence: req.Header.Sequence, PID: nltest.PID}, Data: make([]byte, 4)})
			}
			return out, nil
		}), nil
	}
	return dial, dumps
}

// A set dump the kernel marks interrupted (NLM_F_DUMP_INTR: a commit
// landed between its parts, elements may be skipped or sent twice) is
// dumped again, never taken as it is; one interrupted every time is an
// error. So is a dump during which the ruleset generation moved. (The
// protected sets' comparison took an interrupted dump as the set.)
func TestDumpElementsInterrupted(t *testing.T) {
	defer func(d func() (*netlink.Conn, error), g func() (uint32, error), b func(int)) {
		dialDump, dumpGeneration, dumpBackoff = d, g, b
	}(dialDump, dumpGeneration, dumpBackoff)
	dumpBackoff = func(int) {}
	never := func(int) bool { return false }
	for _, tc := range []struct {
		name  string
		intr  func(n int) bool
		gens  []uint32 // the generations read, in turn (then 7)
		dumps int
		want  string // the element taken; "": an error
	}{
		{name: "clean", intr: never, dumps: 1, want: "192.0.2.1"},
		{name: "interrupted once", intr: func(n int) bool { return n == 1 }, dumps: 2, want: "192.0.2.2"},
		{name: "interrupted twice", intr: func(n int) bool { return n <= 2 }, dumps: 3, want: "192.0.2.3"},
		{name: "always interrupted", intr: func(int) bool { return true }, dumps: dumpTries},
		{name: "generation moved once", intr: never, gens: []uint32{5, 6}, dumps: 2, want: "192.0.2.2"},
		{name: "generation always moves", intr: never, gens: []uint32{1, 2, 3, 4, 5, 6}, dumps: dumpTries},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gens := tc.gens
			dumpGeneration = func() (uint32, error) {
				if len(gens) == 0 {
					return 7, nil
				}
				g := gens[0]
				gens = gens[1:]
				return g, nil
			}
			var dumps *int
			dialDump, dumps = fakeElemDumps(tc.intr)
			els, err := DumpElements("protect4")
			if *dumps != tc.dumps {
				t.Errorf("%d dumps, want %d", *dumps, tc.dumps)
			}
			if tc.want == "" {
				if !errors.Is(err, ErrDumpInterrupted) {
					t.Errorf("got %v, %v; want an error saying the ruleset changed", els, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(els) != 1 || netip.AddrFrom4([4]byte(els[0].Key)).String() != tc.want {
				t.Errorf("got %v, want the one element %s", els, tc.want)
			}
		})
	}
}

// While bans keep being added (a storm: a commit per ban, and a dump of
// 200,000 bans takes seconds) every dump of a ban set sees the generation
// move. The ban listings, an apply's carry of the bans across a ban set's
// new definition and the guard's restore then take the union of the
// dumps, one element per address (the last read wins), said to be read
// while the set changed: they failed after 3 dumps. A dump at one
// generation is taken as it is; DumpElements (the protected sets' drift
// comparison) still refuses a mixed read.
func TestDumpElementsChangingMerges(t *testing.T) {
	defer func(d func() (*netlink.Conn, error), g func() (uint32, error), b func(int)) {
		dialDump, dumpGeneration, dumpBackoff = d, g, b
	}(dialDump, dumpGeneration, dumpBackoff)
	waits := 0
	dumpBackoff = func(int) { waits++ }
	gen := uint32(0)
	moving := func() (uint32, error) { gen++; return gen, nil } // a commit between every two reads
	for _, tc := range []struct {
		name    string
		gen     func() (uint32, error)
		intr    func(int) bool
		changed bool
		want    []string
	}{
		{name: "generation always moves", gen: moving, intr: func(int) bool { return false }, changed: true,
			want: []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.1 3s"}},
		{name: "always flagged", gen: func() (uint32, error) { return 7, nil }, intr: func(int) bool { return true }, changed: true,
			want: []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.1 3s"}},
		{name: "second dump clean", gen: func() (uint32, error) { return 7, nil }, intr: func(n int) bool { return n == 1 },
			want: []string{"192.0.2.2", "198.51.100.1 2s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			waits = 0
			dumpGeneration = tc.gen
			var dumps *int
			dialDump, dumps = fakeElemDumpsWith(tc.intr, true)
			bans, changed, err := NetlinkReader{}.BansChanging("ban4")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, b := range bans {
				s := b.Addr.String()
				if b.Expires > 0 {
					s += " " + b.Expires.String()
				}
				got = append(got, s)
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) || changed != tc.changed {
				t.Errorf("got %v changed %v, want %v changed %v", got, changed, tc.want, tc.changed)
			}
			if tc.changed && (*dumps != dumpTries || waits != dumpTries-1) {
				t.Errorf("%d dumps, %d waits; want %d dumps with a wait between each", *dumps, waits, dumpTries)
			}
			// The strict read still refuses a set read while it changed.
			dialDump, _ = fakeElemDumpsWith(tc.intr, true)
			if _, err := DumpElements("ban4"); tc.changed && !errors.Is(err, ErrDumpInterrupted) {
				t.Errorf("DumpElements: %v, want an error saying the ruleset changed", err)
			}
		})
	}
}

// The Backend's list of bans (what `moat bans`, an apply's carry of the
// bans and the guard's restore read) comes back during a storm, and says
// it was read while the sets changed; `moat bans` prints that.
func TestBackendBansDuringStorm(t *testing.T) {
	defer func(d func() (*netlink.Conn, error), g func() (uint32, error), b func(int)) {
		dialDump, dumpGeneration, dumpBackoff = d, g, b
	}(dialDump, dumpGeneration, dumpBackoff)
	dumpBackoff = func(int) {}
	gen := uint32(0)
	dumpGeneration = func() (uint32, error) { gen++; return gen, nil }
	dialDump, _ = fakeElemDumpsWith(func(int) bool { return false }, false)
	b := &Backend{Read: NetlinkReader{}}
	if b.BansChanged() {
		t.Fatal("changed before any read")
	}
	bans, err := b.Bans(t.Context())
	if err != nil {
		t.Fatalf("a ban storm stops the list of bans: %v", err)
	}
	if len(bans) == 0 || !b.BansChanged() {
		t.Errorf("got %v, changed %v; want the merged bans, said to be read while they changed", bans, b.BansChanged())
	}
}
