package ipt

import (
	"io"
	"maps"
	"slices"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// The one exchange of setNamesByIndex (exchangeNames) against answers
// made up: in any order, each name goes to the index its request asked
// (by sequence); an error answered for one, an answer to no request, a
// second answer to one, one missing, one naming no set: no names (the
// caller asks them one by one). It fails when names are taken in the
// order of the answers or an exchange short of a name is taken whole.
func TestExchangeNamesFake(t *testing.T) {
	idxs := []uint16{3, 5, 8, 13}
	names := map[uint16]string{3: "moat-a", 5: "moat-b", 8: "moat-c", 13: "moat-d"}
	answer := func(req netlink.Message, name string) netlink.Message {
		var idx uint16
		_ = walkAttrs(nfPayload(req), func(typ uint16, v []byte) {
			if typ == ipsetAttrIndex && len(v) == 2 {
				idx = uint16(v[0])<<8 | uint16(v[1])
			}
		})
		if name == "" {
			name = names[idx]
		}
		return netlink.Message{
			Header: netlink.Header{Type: req.Header.Type, Sequence: req.Header.Sequence, PID: nltest.PID},
			Data: append([]byte{unix.AF_INET, 0, 0, 0}, nltest.MustMarshalAttributes([]netlink.Attribute{
				{Type: ipsetAttrProtocol, Data: []byte{ipsetProtocol}},
				{Type: ipsetAttrSetname, Data: []byte(name + "\x00")},
			})...),
		}
	}
	errorOf := func(req netlink.Message) netlink.Message {
		m, _ := nltest.Error(int(unix.ENOENT), []netlink.Message{req})
		m[0].Header.Sequence = req.Header.Sequence
		return m[0]
	}
	for name, tc := range map[string]struct {
		answers func(reqs []netlink.Message) []netlink.Message
		ok      bool
	}{
		"in order": {func(reqs []netlink.Message) (out []netlink.Message) {
			for _, r := range reqs {
				out = append(out, answer(r, ""))
			}
			return out
		}, true},
		"reversed": {func(reqs []netlink.Message) (out []netlink.Message) {
			for _, r := range slices.Backward(reqs) {
				out = append(out, answer(r, ""))
			}
			return out
		}, true},
		"an error": {func(reqs []netlink.Message) (out []netlink.Message) {
			for i, r := range reqs {
				if i == 2 {
					out = append(out, errorOf(r))
					continue
				}
				out = append(out, answer(r, ""))
			}
			return out
		}, false},
		"to no request": {func(reqs []netlink.Message) (out []netlink.Message) {
			for _, r := range reqs {
				out = append(out, answer(r, ""))
			}
			out[1].Header.Sequence += 1000
			return out
		}, false},
		"twice": {func(reqs []netlink.Message) (out []netlink.Message) {
			for _, r := range reqs {
				out = append(out, answer(r, ""))
			}
			out[3] = answer(reqs[0], "")
			return out
		}, false},
		"missing": {func(reqs []netlink.Message) (out []netlink.Message) {
			for _, r := range reqs[1:] {
				out = append(out, answer(r, ""))
			}
			return out
		}, false},
		"no name": {func(reqs []netlink.Message) (out []netlink.Message) {
			for _, r := range reqs {
				out = append(out, answer(r, ""))
			}
			out[0].Data = out[0].Data[:4]
			return out
		}, false},
	} {
		sent := false
		c := nltest.Dial(func(reqs []netlink.Message) ([]netlink.Message, error) {
			if sent || len(reqs) == 0 {
				return nil, io.EOF // nothing more: the read ends
			}
			sent = true
			if len(reqs) != len(idxs) {
				t.Fatalf("%s: %d requests", name, len(reqs))
			}
			return tc.answers(reqs), nil
		})
		reqs := make([]netlink.Message, len(idxs))
		for i, idx := range idxs {
			req, err := nameByIndexRequest(idx)
			if err != nil {
				t.Fatal(err)
			}
			reqs[i] = req
		}
		got := exchangeNames(c, reqs, idxs)
		switch {
		case tc.ok && !maps.Equal(got, names):
			t.Errorf("%s: %v, want %v", name, got, names)
		case !tc.ok && got != nil:
			t.Errorf("%s: %v, want none", name, got)
		}
		_ = c.Close()
	}
}
