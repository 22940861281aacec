package drift

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/moat-fw/moat/internal/nft"
)

// Fingerprint is a hash of a layout read from a kernel: chain heads, every
// rule's tag, verdict and body (without counters), the jumps into moat's
// chains and the addresses of the policy sets. Bans and rate-limit state
// are not part of a layout, so they do not change it. Two reads of an
// unchanged kernel give the same fingerprint; a rule added, removed,
// reordered or changed in place, or a set element added or removed, gives
// another. A set in l.Loaded counts as holding what moat loaded.
func Fingerprint(l *Layout) (string, error) {
	h := sha256.New()
	if l.Dormant {
		// Only when set: the fingerprints of tables that are not dormant
		// stay what they were.
		fmt.Fprintf(h, "table dormant\n")
	}
	for _, name := range sortedKeys(l.Chains) {
		c := l.Chains[name]
		fmt.Fprintf(h, "chain %q %q\n", name, c.Head)
		for _, r := range c.Rules {
			fmt.Fprintf(h, "rule %q %q %q\n", r.Tag, r.Verdict, r.Body)
		}
	}
	for _, j := range sortedKeys(l.Jumps) {
		switch cond := l.JumpConds[j]; {
		case l.Jumps[j] && cond != "":
			fmt.Fprintf(h, "jump %q %q\n", j, cond)
		case l.Jumps[j]:
			fmt.Fprintf(h, "jump %q\n", j) // as before conditions: the same fingerprint
		}
		if n := l.JumpsMore[j]; n > 0 {
			fmt.Fprintf(h, "jumps more %q %d\n", j, n)
		}
	}
	sets := map[string]string{}
	for name, s := range l.Sets {
		set, err := s.b.IPSet()
		if err != nil {
			return "", fmt.Errorf("fingerprint set %s: %w", name, err)
		}
		sets[name] = nft.RangesHash(set.Ranges())
		for _, b := range s.bad {
			sets[name] += fmt.Sprintf(" other %q", b)
		}
	}
	for name, hash := range l.Loaded {
		if _, ok := sets[name]; !ok {
			sets[name] = hash
		}
	}
	// A set by the hash of its address ranges, so that the ranges of what
	// moat loaded stand for a set not read back (Loaded).
	for _, name := range sortedKeys(sets) {
		fmt.Fprintf(h, "set %q %s\n", name, sets[name])
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
