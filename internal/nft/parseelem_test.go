package nft

import (
	"encoding/binary"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// parseElemListRef is parseElemList as it was written with the netlink
// package's decoder: what the walk in place must answer.
func parseElemListRef(data []byte) ([]Elem, error) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	var out []Elem
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				if list.Type() != unix.NFTA_LIST_ELEM {
					continue
				}
				var e Elem
				list.Nested(func(el *netlink.AttributeDecoder) error {
					el.ByteOrder = binary.BigEndian
					for el.Next() {
						switch el.Type() {
						case unix.NFTA_SET_ELEM_KEY:
							el.Nested(func(k *netlink.AttributeDecoder) error {
								for k.Next() {
									if k.Type() == unix.NFTA_DATA_VALUE {
										e.Key = k.Bytes()
									}
								}
								return nil
							})
						case unix.NFTA_SET_ELEM_FLAGS:
							e.End = el.Uint32()&unix.NFT_SET_ELEM_INTERVAL_END != 0
						case unix.NFTA_SET_ELEM_TIMEOUT:
							e.Timeout = time.Duration(el.Uint64()) * time.Millisecond
						case unix.NFTA_SET_ELEM_EXPIRATION:
							e.Expires = time.Duration(el.Uint64()) * time.Millisecond
						case unix.NFTA_SET_ELEM_USERDATA:
							e.Comment = RuleComment(el.Bytes()) // comment: type 0, as a rule's
						}
					}
					return nil
				})
				if e.Key != nil {
					out = append(out, e)
				}
			}
			return nil
		})
	}
	return out, ad.Err()
}

// elemListMsg is an NFT_MSG_NEWSETELEM message's attributes with
// elements of every kind the kernel sends.
func elemListMsg() []byte {
	be64 := func(v uint64) []byte { b := make([]byte, 8); binary.BigEndian.PutUint64(b, v); return b }
	be32 := func(v uint32) []byte { b := make([]byte, 4); binary.BigEndian.PutUint32(b, v); return b }
	e := netlink.NewAttributeEncoder()
	e.String(unix.NFTA_SET_ELEM_LIST_TABLE, "moat")
	e.String(unix.NFTA_SET_ELEM_LIST_SET, "ban6")
	e.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(l *netlink.AttributeEncoder) error {
		for i, c := range []string{"guard: x", "", "user \x1b[2J<bob>\n", "\x00"} {
			l.Nested(unix.NFTA_LIST_ELEM, func(el *netlink.AttributeEncoder) error {
				el.Nested(unix.NFTA_SET_ELEM_KEY, func(k *netlink.AttributeEncoder) error {
					k.Bytes(unix.NFTA_DATA_VALUE, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}).AsSlice())
					return nil
				})
				if i == 1 {
					el.Bytes(unix.NFTA_SET_ELEM_FLAGS, be32(unix.NFT_SET_ELEM_INTERVAL_END))
				}
				el.Bytes(unix.NFTA_SET_ELEM_TIMEOUT, be64(3600000))
				el.Bytes(unix.NFTA_SET_ELEM_EXPIRATION, be64(uint64(1000*i)))
				if c != "" {
					el.Bytes(unix.NFTA_SET_ELEM_USERDATA, append([]byte{0, byte(len(c) + 1)}, c+"\x00"...))
				}
				return nil
			})
		}
		l.Nested(unix.NFTA_LIST_ELEM, func(el *netlink.AttributeEncoder) error { // no key: left out
			el.Bytes(unix.NFTA_SET_ELEM_TIMEOUT, be64(1))
			return nil
		})
		return nil
	})
	b, _ := e.Encode()
	return b
}

// The walk in place answers as the decoder did: the same elements for
// every input the decoder reads, an error where it gives one, and never
// a panic (the kernel's messages, damaged or cut anywhere).
func FuzzParseElemList(f *testing.F) {
	msg := elemListMsg()
	f.Add(msg)
	for _, n := range []int{3, 17, 40, len(msg) - 9, len(msg) - 1} {
		f.Add(msg[:n])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, werr := parseElemListRef(data)
		got, err := parseElemList(data)
		if (werr == nil) != (err == nil) {
			t.Fatalf("error %v, the decoder's %v", err, werr)
		}
		if werr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, the decoder's %+v", got, want)
		}
	})
}

func TestParseElemListAsTheDecoder(t *testing.T) {
	msg := elemListMsg()
	got, err := parseElemList(msg)
	if err != nil || len(got) != 4 || !got[1].End || got[2].Comment != "user \x1b[2J<bob>\n" || got[3].Expires != 3*time.Second {
		t.Fatalf("%+v %v", got, err)
	}
}
