package nft

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"strings"

	"go4.org/netipx"

	"github.com/moat-fw/moat/internal/setstore"
)

// ElementStore keeps what moat loaded into each policy set (see
// setstore): a change of a set is then sent as element deletes and adds.
// An entry is used only when its Data is the entries hash that moat's
// record in the kernel (SyncChain) holds for the set.
type ElementStore = setstore.Store

// StoredSet is one entry of an ElementStore.
type StoredSet = setstore.Set

// RangesHash hashes the address ranges that networks cover (sorted and
// not overlapping, adjacent ones joined), so the same addresses give the
// same hash however they are cut into networks.
func RangesHash(ranges []netipx.IPRange) string {
	h := sha256.New()
	for _, r := range ranges {
		f, t := r.From().As16(), r.To().As16()
		h.Write(f[:])
		h.Write(t[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// prefixesHash is RangesHash of the ranges that sorted, non-overlapping
// networks cover, without building them.
func prefixesHash(ps []netip.Prefix) string {
	h := sha256.New()
	var buf [32]byte
	for i := 0; i < len(ps); {
		from, to := ps[i].Masked().Addr(), setstore.LastAddr(ps[i])
		for i++; i < len(ps); i++ {
			next := to.Next()
			if !next.IsValid() || ps[i].Masked().Addr() != next {
				break
			}
			to = setstore.LastAddr(ps[i])
		}
		f, t := from.As16(), to.As16()
		copy(buf[:16], f[:])
		copy(buf[16:], t[:])
		h.Write(buf[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// LoadedRanges returns, for drift.ReadNftLoaded, the hash of the address
// ranges moat loaded into each policy set, as the element store recorded
// them for the entries hash that moat's record in the kernel names (a set
// without such an entry is read from the kernel). It trusts the kernel to
// hold what moat loaded: call it only when nothing but moat's own
// transaction was committed since the kernel was last compared.
func (b *Backend) LoadedRanges(ctx context.Context) func(set string) (string, bool) {
	if b.Elements == nil {
		return nil
	}
	old, ok := b.readRecord(ctx)
	if !ok {
		return nil
	}
	return func(set string) (string, bool) {
		v, ok := old["set "+set]
		_, data, cut := strings.Cut(v, " ")
		if !ok || !cut {
			return "", false
		}
		got, ranges, err := b.Elements.Head(set)
		if err != nil || got != data || ranges == "" {
			return "", false
		}
		return ranges, true
	}
}
