package ipt

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"
)

// attr is one netlink attribute (native byte order, padded to 4).
func attr(typ uint16, v []byte) []byte {
	b := make([]byte, 4, 4+len(v)+3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(4+len(v)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// FuzzIpsetMembers: whatever a member's attributes hold (a set of another
// type made by hand under moat's name: ports, protocols, marks; cut or
// odd-sized attributes), parsing, sorting and hashing members never
// panic, and two parses of the same bytes give the same digest.
func FuzzIpsetMembers(f *testing.F) {
	v4 := attr(ipsetAttrIP|1<<15, attr(ipsetAttrIPAddrV4|1<<14, []byte{192, 0, 2, 9}))
	f.Add(append(append([]byte{}, v4...), attr(ipsetAttrCIDR, []byte{24})...))
	f.Add(attr(ipsetAttrIP|1<<15, attr(ipsetAttrIPAddrV6|1<<14, make([]byte, 16))))
	f.Add(append(append([]byte{}, v4...), attr(4, []byte{0, 80})...))                // a port
	f.Add(append(append([]byte{}, v4...), attr(ipsetAttrCIDR, []byte{200})...))      // a prefix too long
	f.Add(attr(ipsetAttrIP|1<<15, attr(ipsetAttrIPAddrV4|1<<14, []byte{192, 0, 2}))) // cut address
	f.Add([]byte{8, 0, 1, 0, 1, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		var members []ipsetMember
		// One member, and the same bytes split into several.
		mb, _ := parseMember(data)
		members = append(members, mb)
		for i := 0; i+8 <= len(data); i += 8 {
			mb, _ := parseMember(data[i:])
			members = append(members, mb)
		}
		digest := func() []byte {
			ms := append([]ipsetMember(nil), members...)
			sortMembers(ms)
			h := sha256.New()
			hashMembers(h, ms)
			return h.Sum(nil)
		}
		if first, second := digest(), digest(); string(first) != string(second) {
			t.Fatal("the same members hash twice differently")
		}
		_ = walkAttrs(data, func(uint16, []byte) {})
	})
}
