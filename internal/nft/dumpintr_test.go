package nft

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// fakeElemDumps answers set element dumps with made-up messages: the n-th
// dump (from 1) holds the one element 192.0.2.n, its part marked
// NLM_F_DUMP_INTR when intr(n).
func fakeElemDumps(intr func(n int) bool) (dial func() (*netlink.Conn, error), dumps *int) {
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
				list := nltest.MustMarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: el}})
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
	defer func(d func() (*netlink.Conn, error), g func() (uint32, error)) {
		dialDump, dumpGeneration = d, g
	}(dialDump, dumpGeneration)
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
