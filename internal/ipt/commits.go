package ipt

import (
	"bufio"
	"context"
	"strings"

	"github.com/moat-fw/moat/internal/nft"
)

// nftGeneration reads the nftables ruleset generation (a variable for the
// tests on a fake runner).
var nftGeneration = nft.Generation

// commitTrack is what the last Apply did to the nftables ruleset
// generation, where the iptables tools are the nf_tables kind: each
// table section (one COMMIT) of an iptables-restore is one nf_tables
// transaction, which moves the generation by one when it changes
// anything; ipset changes move it not at all.
type commitTrack struct {
	applied bool   // an Apply ran (and nothing else restored since)
	known   bool   // before and commits are known
	before  uint32 // the generation before Apply read moat's chains
	commits uint32 // the transactions its restores made
	// after is what the Apply left, for the fingerprint afterwards.
	after *afterApply
}

// LastApply says what the last Apply found and did: the nftables ruleset
// generation read before it read moat's chains (before), and how many
// nf_tables transactions its restores made (commits). applied is false
// when no Apply ran; known is false when the generation could not be
// read, the tools are not the nf_tables kind, a restore sent a section
// that may have changed nothing (it then moves the generation by one
// less), or another restore (Remove, a snapshot) ran since. When the
// generation is before+commits afterwards, nothing but Apply's own
// restores committed in between; a hand change (iptables -I) would have
// moved it one more.
func (b *Backend) LastApply() (before, commits uint32, applied, known bool) {
	t := b.track
	// Legacy tables made by the restores themselves (the tools are the
	// legacy kind) are out of the generation's sight.
	return t.before, t.commits, t.applied, t.known && (!t.applied || b.InNftables())
}

// startTrack reads the generation at the start of an Apply, before any
// of moat's chains is read.
func (b *Backend) startTrack() {
	b.track = commitTrack{applied: true}
	if !b.InNftables() {
		return
	}
	gen, err := nftGeneration()
	if err != nil {
		return
	}
	b.track.known, b.track.before = true, gen
}

// restoreRules runs iptables-restore (or ip6tables-restore) --noflush with
// script, counting its transactions for LastApply.
func (b *Backend) restoreRules(ctx context.Context, f family, script string) error {
	n, sure := commitsOf(script)
	if !sure {
		b.track.known = false
	}
	b.track.commits += n
	_, err := b.Run(ctx, []byte(script), f.restore, "-w", "5", "--noflush")
	if err != nil {
		// How much of it committed is unknown.
		b.track.known = false
	}
	return explainReplacedBuiltin(err, f)
}

// commitsOf counts the table sections of an iptables-restore script,
// each one nf_tables transaction. sure is false when a section may change
// nothing (iptables-nft then commits nothing): one with no rule added,
// inserted or deleted and no chain deleted only declares chains, which
// changes nothing when they exist empty already.
func commitsOf(script string) (n uint32, sure bool) {
	sure = true
	changes := false
	sc := bufio.NewScanner(strings.NewReader(script))
	// Room for a line of up to 1 MiB, grown as needed (a buffer of 1 MiB
	// made for each of the two scripts of a rule change was 2 MB of fresh
	// memory, page faults included).
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "*"):
			changes = false
		case line == "COMMIT":
			n++
			if !changes {
				sure = false
			}
		case strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, "-I ") ||
			strings.HasPrefix(line, "-D ") || strings.HasPrefix(line, "-X "):
			changes = true
		}
	}
	if sc.Err() != nil {
		sure = false
	}
	return n, sure
}
