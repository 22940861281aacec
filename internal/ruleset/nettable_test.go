package ruleset

import (
	"math/rand/v2"
	"testing"
)

// TestNetTable: the table answers as a map does, sized right or grown
// from too small, with keys that differ only in their tag and keys that
// crowd one part of the table.
func TestNetTable(t *testing.T) {
	type key struct {
		k   uint64
		tag uint8
	}
	for _, size := range []int{0, 1, 1000, 20000} {
		rng := rand.New(rand.NewPCG(uint64(size), 9))
		tab, want := newNetTable(size), map[key]int32{}
		for i := range 20000 {
			var k key
			switch i % 4 {
			case 0:
				k = key{rng.Uint64(), uint8(rng.IntN(66))}
			case 1:
				k = key{uint64(i) << 16, 0} // IPv4 networks in a row
			case 2:
				k = key{uint64(i/8) << 16, uint8(i % 3)} // one key, several tags
			default:
				k = key{uint64(rng.IntN(50)), 0} // the same keys again
			}
			v := int32(rng.IntN(1 << 30))
			tab.set(k.k, k.tag, v)
			want[k] = v
			probe := key{rng.Uint64() % 64 << 16, uint8(rng.IntN(3))}
			got, ok := tab.get(probe.k, probe.tag)
			if w, wok := want[probe]; ok != wok || got != w {
				t.Fatalf("size %d, step %d: get(%v) = %d %v, want %d %v", size, i, probe, got, ok, w, wok)
			}
		}
		if tab.n != len(want) {
			t.Fatalf("size %d: %d entries, want %d", size, tab.n, len(want))
		}
		for k, w := range want {
			if got, ok := tab.get(k.k, k.tag); !ok || got != w {
				t.Fatalf("size %d: get(%v) = %d %v, want %d", size, k, got, ok, w)
			}
		}
	}
}
