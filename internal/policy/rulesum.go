package policy

import (
	"crypto/sha256"
	"encoding/binary"
)

// RulesSum is a SHA-256 of the policy's first n rules as a search over
// them reads them: each rule's match, action and options (Key), its
// direction and its line, in order; not its text, nor the file's name
// (a caller that keeps a result computed from these rules rebuilds the
// rules themselves from the policy it has). Two policies whose first n
// rules have the same sum have the same first n rules, whatever the
// text around them. A rule held compact is summed from its compact
// entry (what the whole rule is built from); the same rule held whole
// sums differently, which only makes a kept result unused.
//
// n beyond NumRules is NumRules.
func (p *Policy) RulesSum(n int) [32]byte {
	n = min(max(n, 0), p.NumRules())
	h := sha256.New()
	buf := make([]byte, 0, 64<<10)
	var scratch Rule
	for i := range n {
		if e := p.compactEnt(i); e != nil {
			buf = append(buf, 'c')
			buf = append(buf, e.addr[:]...)
			buf = append(buf, e.bits, e.flags)
			buf = binary.LittleEndian.AppendUint32(buf, uint32(e.line))
			if len(buf) > 60<<10 {
				_, _ = h.Write(buf) // never fails (hash.Hash)
				buf = buf[:0]
			}
			continue
		}
		r := p.RulePtr(i, &scratch)
		k := r.Key()
		buf = append(buf, 'w')
		buf = binary.AppendUvarint(buf, uint64(len(k)))
		buf = append(buf, k...)
		buf = binary.AppendUvarint(buf, uint64(len(r.Direction)))
		buf = append(buf, r.Direction...)
		buf = binary.AppendVarint(buf, int64(r.Pos.Line))
		if len(buf) > 60<<10 {
			_, _ = h.Write(buf) // never fails (hash.Hash)
			buf = buf[:0]
		}
	}
	_, _ = h.Write(buf) // never fails (hash.Hash)
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// HasNets reports whether rule i matches a source or destination
// network, without building the rule when the policy holds it compact
// (a compact rule always has one).
func (p *Policy) HasNets(i int) bool {
	if p.compactEnt(i) != nil {
		return true
	}
	var scratch Rule
	r := p.RulePtr(i, &scratch)
	return r.From.IsValid() || r.To.IsValid()
}
