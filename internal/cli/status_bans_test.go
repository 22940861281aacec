package cli

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/moat-fw/moat/internal/ruleset"
)

type fakeBansUpTo struct {
	n   int
	err error
}

func (f fakeBansUpTo) BansUpTo(_ context.Context, n int) ([]ruleset.Ban, bool, error) {
	if f.err != nil {
		return nil, false, f.err
	}
	var out []ruleset.Ban
	for i := 0; i < min(n, f.n); i++ {
		out = append(out, ruleset.Ban{Addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})})
	}
	return out, f.n > n, nil
}

// A ban the history does not record (the port scan trap's, made by the
// kernel) is counted: status verbose said "0 active bans" while 'moat
// bans' listed one. Above the bound, and when the kernel cannot be read
// or listed up to a bound, the history's count stands.
func TestKernelBansAtLeast(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		b        any
		recorded int
		want     int
	}{
		{fakeBansUpTo{n: 1}, 0, 1},
		{fakeBansUpTo{n: 3}, 5, 5},
		{fakeBansUpTo{n: 5000}, 2, kernelBanBound},
		{fakeBansUpTo{n: 5000}, 3000, 3000},
		{fakeBansUpTo{err: errors.New("no table")}, 2, 2},
		{struct{}{}, 4, 4},
	} {
		if got := kernelBansAtLeast(ctx, tc.b, tc.recorded); got != tc.want {
			t.Errorf("%+v, %d recorded: %d, want %d", tc.b, tc.recorded, got, tc.want)
		}
	}
}
