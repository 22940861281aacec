package ipt

import (
	"context"
	"net/netip"
)

// LoadedSet returns the networks moat loaded into the policy ipset name,
// as Elements recorded them for the contents MOAT-GEN names (false when
// that is not known). Drift compares the protected sets with it: their
// addresses are the SSH sessions of the apply, which a script rendered
// now cannot know.
func (b *Backend) LoadedSet(ctx context.Context, name string) ([]netip.Prefix, bool) {
	st, err := b.readRules(ctx)
	if err != nil {
		return nil, false
	}
	s, ok := b.stored(name, st.heldBy(name))
	return s.Prefixes, ok
}
