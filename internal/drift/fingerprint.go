package drift

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
)

// Fingerprint is a hash of a layout read from a kernel: chain heads, every
// rule's tag, verdict and body (without counters), the jumps into moat's
// chains and the addresses of the policy sets. Bans and rate-limit state
// are not part of a layout, so they do not change it. Two reads of an
// unchanged kernel give the same fingerprint; a rule added, removed,
// reordered or changed in place, or a set element added or removed, gives
// another.
func Fingerprint(l *Layout) (string, error) {
	h := sha256.New()
	for _, name := range sortedKeys(l.Chains) {
		c := l.Chains[name]
		fmt.Fprintf(h, "chain %q %q\n", name, c.Head)
		for _, r := range c.Rules {
			fmt.Fprintf(h, "rule %q %q %q\n", r.Tag, r.Verdict, r.Body)
		}
	}
	for _, j := range sortedKeys(l.Jumps) {
		if l.Jumps[j] {
			fmt.Fprintf(h, "jump %q\n", j)
		}
	}
	for _, name := range sortedKeys(l.Sets) {
		s := l.Sets[name]
		set, err := s.b.IPSet()
		if err != nil {
			return "", fmt.Errorf("fingerprint set %s: %w", name, err)
		}
		fmt.Fprintf(h, "set %q\n", name)
		for _, r := range set.Ranges() {
			_, _ = io.WriteString(h, r.String())
			_, _ = h.Write([]byte{'\n'})
		}
		for _, b := range s.bad {
			fmt.Fprintf(h, "other %q\n", b)
		}
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
