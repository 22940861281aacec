package ipt

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// fakeChains answers the chain and rule dumps of hashChainsNetlink with
// made-up messages: MOAT-INPUT in ip filter holding one rule (its rule
// ruleBody as its user data), nothing else. intr(kind, n) says whether
// the n-th dump (from 1) of a kind ("chains" or "rules", of family ip) is
// marked NLM_F_DUMP_INTR.
func fakeChains(ruleBody string, intr func(kind string, n int) bool) (dial func() (*netlink.Conn, error), dumps *int) {
	dumps = new(int)
	kinds := map[string]int{}
	dial = func() (*netlink.Conn, error) {
		return nltest.Dial(func(reqs []netlink.Message) ([]netlink.Message, error) {
			var out []netlink.Message
			for _, req := range reqs {
				*dumps++
				fam := req.Data[0]
				kind := "chains"
				if req.Header.Type&0xff == unix.NFT_MSG_GETRULE {
					kind = "rules"
				}
				flags := netlink.Multi
				if fam == unix.NFPROTO_IPV4 && (kind == "chains" || cString(req.Data[8:]) == "filter") {
					kinds[kind]++
					if intr(kind, kinds[kind]) {
						flags |= netlink.DumpInterrupted
					}
				}
				var attrs []netlink.Attribute
				switch req.Header.Type & 0xff {
				case unix.NFT_MSG_GETCHAIN:
					attrs = []netlink.Attribute{{Type: nftaChainTable, Data: []byte("filter\x00")}, {Type: nftaChainName, Data: []byte("MOAT-INPUT\x00")}}
				case unix.NFT_MSG_GETRULE:
					attrs = []netlink.Attribute{{Type: nftaRuleTable, Data: []byte("filter\x00")}, {Type: nftaRuleChain, Data: []byte("MOAT-INPUT\x00")},
						{Type: nftaRuleUserdata, Data: []byte(ruleBody)}}
					if cString(req.Data[8:]) != "filter" {
						attrs = nil
					}
				}
				if fam == unix.NFPROTO_IPV4 && attrs != nil {
					out = append(out, netlink.Message{
						Header: netlink.Header{Type: req.Header.Type, Flags: flags, Sequence: req.Header.Sequence, PID: nltest.PID},
						Data:   append([]byte{fam, 0, 0, 0}, nltest.MustMarshalAttributes(attrs)...),
					})
				}
				out = append(out, netlink.Message{Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi, Sequence: req.Header.Sequence, PID: nltest.PID}, Data: make([]byte, 4)})
			}
			return out, nil
		}), nil
	}
	return dial, dumps
}

// A dump the kernel marks interrupted (NLM_F_DUMP_INTR: a commit landed
// between its parts, rules may be skipped or read twice) is read again,
// never taken as it is; one interrupted every time is an error. So is a
// read during which the ruleset generation moved.
func TestNlChainsDumpInterrupted(t *testing.T) {
	defer func(d func() (*netlink.Conn, error), g func() (uint32, error)) {
		dialNetfilter, nftGeneration = d, g
	}(dialNetfilter, nftGeneration)
	gens := []uint32{}
	nftGeneration = func() (uint32, error) {
		if len(gens) == 0 {
			return 7, nil
		}
		g := gens[0]
		gens = gens[1:]
		return g, nil
	}
	print := func(body string, intr func(string, int) bool) (string, int, error) {
		t.Helper()
		var dumps *int
		dialNetfilter, dumps = fakeChains(body, intr)
		h := sha256.New()
		rd, err := hashChainsNetlink(context.Background(), h)
		if err == nil && !rd.any {
			t.Fatalf("no moat chain read")
		}
		return string(h.Sum(nil)), *dumps, err
	}
	never := func(string, int) bool { return false }
	clean, n, err := print("rule", never)
	if err != nil {
		t.Fatal(err)
	}
	perRead := n // 2 families, each a chain listing and a rule dump per table
	if other, _, _ := print("another rule", never); other == clean {
		t.Fatal("the fake's rule is not in the fingerprint")
	}

	// The rule dump of ip filter interrupted once: read again.
	fp, n, err := print("rule", func(kind string, n int) bool { return kind == "rules" && n == 1 })
	// (ip's chains, raw rules, filter rules; then a whole read)
	if err != nil || fp != clean || n != 3+perRead {
		t.Errorf("a dump interrupted once: %x (%v) after %d dumps, want %x after %d", fp, err, n, clean, 3+perRead)
	}
	// Every read interrupted: an error, after nlReadTries reads, and
	// nothing of them in the fingerprint.
	for _, kind := range []string{"chains", "rules"} {
		h := sha256.New()
		var dumps *int
		dialNetfilter, dumps = fakeChains("rule", func(k string, _ int) bool { return k == kind })
		want := nlReadTries
		if kind == "rules" {
			want *= 3 // ip's chains, raw rules, then filter rules
		}
		if _, err := hashChainsNetlink(context.Background(), h); !errors.Is(err, errDumpInterrupted) || *dumps != want {
			t.Errorf("the %s interrupted every time: %v after %d dumps, want %v after %d", kind, err, *dumps, errDumpInterrupted, want)
		}
		if string(h.Sum(nil)) != string(sha256.New().Sum(nil)) {
			t.Errorf("the %s interrupted every time: something was written into the fingerprint", kind)
		}
	}

	// The generation moved during the first read: read again.
	gens = []uint32{7, 8, 8, 8}
	if fp, n, err := print("rule", never); err != nil || fp != clean || n != 2*perRead {
		t.Errorf("the generation moved once: %x (%v) after %d dumps, want %x after %d", fp, err, n, clean, 2*perRead)
	}
	// It moves during every read: an error.
	gens = []uint32{1, 2, 3, 4, 5, 6}
	if _, _, err := print("rule", never); !errors.Is(err, errDumpInterrupted) {
		t.Errorf("the generation moved every time: %v, want %v", err, errDumpInterrupted)
	}
}

// ipset's listing takes no dump the kernel marks interrupted either.
func TestIpsetListDumpInterrupted(t *testing.T) {
	c := &ipsetConn{c: nltest.Dial(func(reqs []netlink.Message) ([]netlink.Message, error) {
		req := reqs[0]
		return []netlink.Message{
			{Header: netlink.Header{Type: req.Header.Type, Flags: netlink.Multi | netlink.DumpInterrupted, Sequence: req.Header.Sequence, PID: nltest.PID},
				Data: append([]byte{unix.AF_INET, 0, 0, 0}, nltest.MustMarshalAttributes([]netlink.Attribute{{Type: ipsetAttrSetname, Data: []byte("moat-x\x00")}})...)},
			{Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi, Sequence: req.Header.Sequence, PID: nltest.PID}, Data: make([]byte, 4)},
		}, nil
	})}
	if names, err := c.names(context.Background()); !errors.Is(err, errDumpInterrupted) || !errors.Is(err, errIpsetNetlink) {
		t.Errorf("an interrupted listing: %q, %v; want %v", names, err, errDumpInterrupted)
	}
}
