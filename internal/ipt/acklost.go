package ipt

import (
	"context"

	"github.com/moat-fw/moat/internal/policy"
)

// afterLostAck settles a rule transaction whose answer was lost (sent at
// generation sentAt; committed whole or not at all) while a drift check
// vouches for Apply's read (Checked). It used to drop the vouch and
// apply again from a new read through iptables-restore: a rule put by
// hand into moat's chains after the check, which made the kernel refuse
// the transaction, was in that read and written over without a word.
// Now the generation says what happened: unchanged, nothing was
// committed (nlNotSent: the restores go on under the vouch, which
// looks again before them); moved, the kernel's MOAT-GEN records say
// whether the transaction is in (nlCommitted; the generations vouch on
// only when it moved by that commit alone) or was refused because
// another program committed first (nlMoved: checked again, as a
// refusal).
func (b *Backend) afterLostAck(plan map[policy.Family]nlFamilyPlan, sentAt uint32, lost error) nlOutcome {
	log := b.log()
	g, err := nftGeneration()
	if err != nil {
		b.track.known = false
		b.lastRead = nil
		b.Checked.OK = false
		log.Debug("iptables rules over netlink: answer lost and the generation unread, reading the kernel again", "err", lost)
		return nlUnknown
	}
	if g == sentAt {
		log.Debug("iptables rules over netlink: answer lost, nothing committed", "err", lost)
		return nlNotSent
	}
	b.lastRead = nil
	now, rerr := b.readChains(context.Background())
	in := rerr == nil
	for f, p := range plan {
		want, rules := "", ""
		for _, l := range genRuleLines(p.script) {
			readGenRule(l, &want, &rules, contents{})
		}
		if rerr != nil || want == "" || now.gen[f] != want {
			in = false
		}
	}
	if !in {
		log.Debug("iptables rules over netlink: answer lost, not committed, the ruleset changed meanwhile", "err", lost, "generation", g)
		return nlMoved
	}
	b.track.commits++
	if g != sentAt+1 {
		// Committed, and something else too: no generation vouches.
		b.track.known = false
	}
	log.Debug("iptables rules over netlink: answer lost, committed", "err", lost, "generation", g)
	return nlCommitted
}
