package ipt

import (
	"encoding/binary"
	"net/netip"
	"slices"
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
// odd-sized attributes), reading and hashing members never panics; the
// allocation-free read of a plain member (plainMember) takes only what
// parseMember reads as a network with nothing else, the same network, so
// the member hashes the same whichever read it.
func FuzzIpsetMembers(f *testing.F) {
	v4 := attr(ipsetAttrIP|1<<15, attr(ipsetAttrIPAddrV4|1<<14, []byte{192, 0, 2, 9}))
	f.Add(append(append([]byte{}, v4...), attr(ipsetAttrCIDR, []byte{24})...))
	f.Add(attr(ipsetAttrIP|1<<15, attr(ipsetAttrIPAddrV6|1<<14, make([]byte, 16))))
	f.Add(append(append([]byte{}, v4...), attr(4, []byte{0, 80})...))                // a port
	f.Add(append(append([]byte{}, v4...), attr(ipsetAttrCIDR, []byte{200})...))      // a prefix too long
	f.Add(attr(ipsetAttrIP|1<<15, attr(ipsetAttrIPAddrV4|1<<14, []byte{192, 0, 2}))) // cut address
	f.Add(attr(ipsetAttrIP|1<<15, attr(ipsetAttrIPAddrV4|1<<14, make([]byte, 16))))  // 16 bytes under V4
	f.Add(append(attr(ipsetAttrCIDR, []byte{64}), attr(ipsetAttrIP|1<<15, attr(ipsetAttrIPAddrV6|1<<14, make([]byte, 16)))...))
	f.Add(append(append([]byte{}, v4...), v4...)) // the address twice
	f.Add([]byte{8, 0, 1, 0, 1, 2})
	mh := newMemberHasher([]byte("0123456789abcdef"))
	f.Fuzz(func(t *testing.T, data []byte) {
		mb, _ := parseMember(data)
		slow := func() [2]uint64 { lo, hi := mh.member(mb); return [2]uint64{lo, hi} }()
		if slow != func() [2]uint64 { lo, hi := mh.member(mb); return [2]uint64{lo, hi} }() {
			t.Fatal("the same member hashes twice differently")
		}
		if p, ok := plainMember(data); ok {
			if mb.extra != "" || !mb.p.IsValid() {
				t.Fatalf("plainMember took a member parseMember reads with %q (%v)", mb.extra, mb.p)
			}
			lo, hi := mh.plain(p.a, p.bits, p.is4)
			if [2]uint64{lo, hi} != slow {
				t.Fatalf("plainMember's %v/%d and parseMember's %v hash differently", p.a, p.bits, mb.p)
			}
		}
		_ = walkAttrs(data, func(uint16, []byte) {})
	})
}

// A part of a dump of plain members is summed without an allocation a
// member (there were two: the members kept, and the cipher's block).
func TestSumMessageAllocs(t *testing.T) {
	var adt []byte
	for i := 0; i < 1000; i++ {
		m := append(attr(ipsetAttrIP|1<<15, attr(ipsetAttrIPAddrV4|1<<14, []byte{198, 51, byte(i >> 8), byte(i)})), attr(ipsetAttrCIDR, []byte{32})...)
		adt = append(adt, attr(ipsetAttrData|1<<15, m)...)
	}
	msg := append(attr(ipsetAttrSetname, []byte("moat-bl4_x\x00")), attr(ipsetAttrADT|1<<15, adt)...)
	mh := newMemberHasher(make([]byte, 16))
	var head []string
	var sum memberSum
	allocs := testing.AllocsPerRun(10, func() {
		sum = memberSum{}
		if err := sumMessage(mh, msg, &head, &sum); err != nil {
			t.Fatal(err)
		}
	})
	if sum.n != 1000 {
		t.Fatalf("%d members summed, want 1000", sum.n)
	}
	if allocs > 10 {
		t.Errorf("%v allocations for a part of 1000 members", allocs)
	}
	// Their sum is the sum of the networks' hashes, as loaded.
	var want memberSum
	for i := 0; i < 1000; i++ {
		want.add(mh.prefix(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), 32)))
	}
	if want != sum {
		t.Errorf("sum of the part %+v, of the networks %+v", sum, want)
	}
}

// nlmsg is one netlink message of type typ, flags and seq with payload p
// (padded to 4 bytes).
func nlmsg(typ, flags uint16, seq uint32, p []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(16+len(p)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = append(b, p...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// A part of a dump: the set's messages go to fn, another request's are
// passed over, NLMSG_DONE ends it, ENOENT says the set is missing, any
// other error, an interrupted dump and a message cut short are errors.
func TestDumpPart(t *testing.T) {
	errno := func(e int32) []byte { return binary.NativeEndian.AppendUint32(nil, uint32(-e)) }
	set := nlmsg(6<<8|7, 2, 1, append([]byte{2, 0, 0, 0}, attr(ipsetAttrSetname, []byte("s\x00"))...))
	other := nlmsg(6<<8|7, 2, 9, []byte{2, 0, 0, 0, 0xff, 0xff})
	done := nlmsg(3, 2, 1, []byte{0, 0, 0, 0})
	for _, c := range []struct {
		name          string
		part          []byte
		parts         int
		done, missing bool
		err           bool
	}{
		{"two parts of the set, then done", slices.Concat(set, other, set, done), 2, true, false, false},
		{"more to come", slices.Concat(set, set), 2, false, false, false},
		{"missing", nlmsg(2, 0, 1, errno(2)), 0, true, true, false},
		{"another error", slices.Concat(set, nlmsg(2, 0, 1, errno(1))), 1, false, false, true},
		{"an acknowledgement", nlmsg(2, 0, 1, errno(0)), 0, false, false, false},
		{"another request's error", nlmsg(2, 0, 7, errno(2)), 0, false, false, false},
		{"interrupted", nlmsg(6<<8|7, 2|16, 1, []byte{2, 0, 0, 0}), 0, false, false, true},
		{"cut short", set[:len(set)-8], 0, false, false, true},
		{"a header cut short", set[:10], 0, false, false, true},
		{"an error cut short", nlmsg(2, 0, 1, nil), 0, false, false, true},
	} {
		parts := 0
		d, m, err := dumpPart(c.part, 1, func(attrs []byte) error {
			parts++
			return nil
		})
		if d != c.done || m != c.missing || (err != nil) != c.err || parts != c.parts {
			t.Errorf("%s: done %v missing %v err %v, %d parts; want %v %v %v, %d", c.name, d, m, err, parts, c.done, c.missing, c.err, c.parts)
		}
	}
}

// FuzzDumpPart: any bytes as a part of a dump's answer are read without a
// panic, and fn sees only slices of them.
func FuzzDumpPart(f *testing.F) {
	f.Add(nlmsg(6<<8|7, 2, 1, append([]byte{2, 0, 0, 0}, attr(ipsetAttrSetname, []byte("s\x00"))...)))
	f.Add(nlmsg(3, 2, 1, []byte{0, 0, 0, 0}))
	f.Add(nlmsg(2, 0, 1, []byte{0xfe, 0xff, 0xff, 0xff}))
	f.Add([]byte{16, 0, 0, 0, 7, 6, 2, 0, 1, 0, 0, 0})
	mh := newMemberHasher(make([]byte, 16))
	f.Fuzz(func(t *testing.T, data []byte) {
		var head []string
		var sum memberSum
		_, _, _ = dumpPart(data, 1, func(attrs []byte) error {
			return sumMessage(mh, attrs, &head, &sum)
		})
	})
}
