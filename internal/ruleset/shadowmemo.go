package ruleset

import (
	"github.com/moat-fw/moat/internal/policy"
)

// CoveredMemo is the covered-rule search's result (Shadowed) for a
// policy's first N rules, kept between commands so that a change after
// them (a port rule added or deleted at the end of a policy of 100,000
// address rules) does not search those 100,000 again. Sum is their
// policy.RulesSum; Pairs are the covered rules among them and the rule
// covering each ([rule, by], rule indexes, in policy order).
//
// N is where the policy's rules without networks begin for good: every
// rule from N on matches no source or destination network. Such a rule
// can only be covered by an earlier rule without networks (Shadowed
// tries no other: one with a network takes only part of the addresses),
// and no rule covers one before it; so the search over the first N rules
// is the whole search's for them, and the rest is found by trying the
// few rules without networks, as Shadowed does.
type CoveredMemo struct {
	N     int
	Sum   [32]byte
	Pairs [][2]int
}

// ShadowedMemo is Shadowed(p), using m (nil: none) where it holds for p:
// its N rules have the sum of p's first N and p has no rule with a
// network after them. Every pair m gives is checked against the rules
// (in range, in order, the earlier rule covering the later); a memo that
// fails a check is not used. next is the memo to keep for p, nil when m
// is it already.
func ShadowedMemo(p *policy.Policy, m *CoveredMemo) (out []Covered, next *CoveredMemo) {
	tail := p.NumRules()
	for tail > 0 && !p.HasNets(tail-1) {
		tail--
	}
	if m != nil && m.N == tail && memoHolds(p, m) {
		return coveredOf(p, append(m.Pairs[:len(m.Pairs):len(m.Pairs)], shadowedTail(p, tail)...)), nil
	}
	pairs := shadowedPairs(p)
	next = &CoveredMemo{N: tail, Sum: p.RulesSum(tail)}
	for _, pr := range pairs {
		if pr[0] < tail {
			next.Pairs = append(next.Pairs, pr)
		}
	}
	return coveredOf(p, pairs), next
}

// memoHolds checks m's pairs and sum against p.
func memoHolds(p *policy.Policy, m *CoveredMemo) bool {
	if m.N < 0 || m.N > p.NumRules() {
		return false
	}
	last := -1
	var a, b policy.Rule
	for _, pr := range m.Pairs {
		rule, by := pr[0], pr[1]
		if rule <= last || by < 0 || by >= rule || rule >= m.N {
			return false
		}
		last = rule
		rb, ra := p.RulePtr(rule, &b), p.RulePtr(by, &a)
		if (rb.Pos.Line > 0 && ra.Pos.Line == rb.Pos.Line) || !covers(ra, rb) {
			return false
		}
	}
	return p.RulesSum(m.N) == m.Sum
}

// shadowedTail is Shadowed's search for the rules from tail on, all
// without networks: each is tried against every earlier rule without
// networks, in order, and the first that covers it is the one.
func shadowedTail(p *policy.Policy, tail int) [][2]int {
	var rest []int
	for i := range tail {
		if !p.HasNets(i) {
			rest = append(rest, i)
		}
	}
	var out [][2]int
	s := search{p: p}
	for i := tail; i < p.NumRules(); i++ {
		s.bi, s.best, s.b = i, -1, nil
		for _, j := range rest {
			if s.best >= 0 {
				break
			}
			s.try(j)
		}
		if s.best >= 0 {
			out = append(out, [2]int{i, s.best})
		}
		rest = append(rest, i)
	}
	return out
}
