package nft

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

func TestRuleComment(t *testing.T) {
	for _, c := range []struct {
		ud   []byte
		want string
	}{
		{append([]byte{0, 6}, "moat:\x00"...), "moat:"},
		{append([]byte{1, 2, 9, 9, 0, 3}, "ab\x00"...), "ab"}, // another TLV first
		{[]byte{0, 40, 'x'}, ""},                              // length past the end
		{[]byte{0}, ""},
		{nil, ""},
	} {
		if got := RuleComment(c.ud); got != c.want {
			t.Errorf("RuleComment(%q) = %q, want %q", c.ud, got, c.want)
		}
	}
}

// One NFT_MSG_NEWSETELEM message as the kernel sends it, decoded into
// bans; damaged input is an error, never a panic.
func TestParseElemList(t *testing.T) {
	be := func(v uint64) []byte { b := make([]byte, 8); binary.BigEndian.PutUint64(b, v); return b }
	elem := func(addr string, timeoutMS, expiresMS uint64, comment string) []byte {
		e := netlink.NewAttributeEncoder()
		e.Nested(unix.NFTA_SET_ELEM_KEY, func(k *netlink.AttributeEncoder) error {
			k.Bytes(unix.NFTA_DATA_VALUE, netip.MustParseAddr(addr).AsSlice())
			return nil
		})
		e.Bytes(unix.NFTA_SET_ELEM_TIMEOUT, be(timeoutMS))
		e.Bytes(unix.NFTA_SET_ELEM_EXPIRATION, be(expiresMS))
		e.Bytes(unix.NFTA_SET_ELEM_USERDATA, append([]byte{0, byte(len(comment) + 1)}, comment+"\x00"...))
		b, _ := e.Encode()
		return b
	}
	e := netlink.NewAttributeEncoder()
	e.String(unix.NFTA_SET_ELEM_LIST_TABLE, "moat")
	e.String(unix.NFTA_SET_ELEM_LIST_SET, "ban6")
	e.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(l *netlink.AttributeEncoder) error {
		l.Bytes(unix.NFTA_LIST_ELEM, elem("2001:db8::7", 3600000, 1800000, "guard: x"))
		l.Bytes(unix.NFTA_LIST_ELEM, elem("192.0.2.9", 60000, 1000, ""))
		return nil
	})
	data, err := e.Encode()
	if err != nil {
		t.Fatal(err)
	}
	els, err := parseElemList(data)
	if err != nil || len(els) != 2 {
		t.Fatalf("%v %v", els, err)
	}
	if e := els[0]; string(e.Key) != string(netip.MustParseAddr("2001:db8::7").AsSlice()) || e.Timeout != time.Hour || e.Expires != 30*time.Minute || e.Comment != "guard: x" || e.End {
		t.Errorf("first %+v", e)
	}
	if e := els[1]; string(e.Key) != string(netip.MustParseAddr("192.0.2.9").AsSlice()) || e.Timeout != time.Minute {
		t.Errorf("second %+v", e)
	}
	for i := range data {
		_, _ = parseElemList(data[:i]) // must not panic
	}
}
