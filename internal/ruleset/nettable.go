package ruleset

import "math/bits"

// netTable maps a network, as one integer and a tag (0 for IPv4, 1 + the
// length for IPv6 networks of up to 64 bits), to a rule index: open
// addressing with linear probing, at most half full. The covered-rule
// search adds every network of the policy once; in Go maps these inserts
// were most of its time at 100,000 networks (TestNetTable checks it
// against a map).
type netTable struct {
	slots []netSlot
	n     int
	shift uint
}

type netSlot struct {
	key uint64
	val int32 // the rule index + 1; 0 is an empty slot
	tag uint8
}

// newNetTable makes a table for n networks.
func newNetTable(n int) *netTable {
	size := 8
	for size < 2*n {
		size <<= 1
	}
	return &netTable{slots: make([]netSlot, size), shift: uint(64 - bits.Len(uint(size-1)))}
}

func (t *netTable) home(key uint64, tag uint8) uint64 {
	return ((key ^ uint64(tag)<<56 ^ uint64(tag)) * 0x9E3779B97F4A7C15) >> t.shift
}

// get returns the index recorded for (key, tag).
func (t *netTable) get(key uint64, tag uint8) (int32, bool) {
	mask := uint64(len(t.slots) - 1)
	for i := t.home(key, tag); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.val == 0 {
			return 0, false
		}
		if s.key == key && s.tag == tag {
			return s.val - 1, true
		}
	}
}

// set records v for (key, tag).
func (t *netTable) set(key uint64, tag uint8, v int32) {
	if 2*(t.n+1) > len(t.slots) {
		old := t.slots
		*t = *newNetTable(2 * (t.n + 1))
		for _, s := range old {
			if s.val != 0 {
				t.set(s.key, s.tag, s.val-1)
			}
		}
	}
	mask := uint64(len(t.slots) - 1)
	for i := t.home(key, tag); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.val == 0 {
			*s = netSlot{key: key, val: v + 1, tag: tag}
			t.n++
			return
		}
		if s.key == key && s.tag == tag {
			s.val = v + 1
			return
		}
	}
}
