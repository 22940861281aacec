package drift

import (
	"strconv"
	"testing"
)

func TestShort(t *testing.T) {
	for _, tc := range []struct {
		items []string
		want  string
	}{
		{nil, ""},
		{[]string{"L1"}, "L1"},
		{[]string{"L1", "L1", "L2"}, "L1, L2"},
		{[]string{"L1", "L2", "L3", "L4"}, "L1, L2, L3, L4"},
		{[]string{"L1", "L2", "L1", "L3", "L4", "L2", "L5"}, "L1, L2, L3, L4 and 1 more"},
		{[]string{"L5", "L4", "L3", "L2", "L1", "L0", "L5"}, "L5, L4, L3, L2 and 2 more"},
	} {
		if got := short(tc.items); got != tc.want {
			t.Errorf("short(%q) = %q, want %q", tc.items, got, tc.want)
		}
	}
}

// BenchmarkShortDistinct is short over the tags of a chain of 100,000
// rules flushed by hand: linear (it searched the distinct ones kept for
// each item, n²/2 compares: 19 s at 100,000, 17 ms now, load 9.5;
// 'moat status' over a policy of 80,000 rules the kernel lacks: 16 s
// before, 1.3 s now).
func BenchmarkShortDistinct(b *testing.B) {
	items := make([]string, 100000)
	for i := range items {
		items[i] = "L" + strconv.Itoa(i+1) + " (accept)"
	}
	for b.Loop() {
		if s := short(items); s == "" {
			b.Fatal("empty")
		}
	}
}
