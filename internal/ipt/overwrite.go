package ipt

import (
	"context"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/nft"
)

// An iptables-restore commits its sections at whatever generation the
// ruleset has then: a rule put by hand into one of moat's chains after
// Apply's last look at the generation and before the restore's commit
// was written over, and the full comparison afterwards found moat's
// chains as written. With iptables-nft, Apply watches the nf_tables
// commits (nft.CommitWatch) from the last look before its first restore
// (or before its ipsets' "changing" mark) until its restores have
// ended, and says which change of moat's chains by another program a
// restore of its own wrote after (LastOverwritten, Warn).

// startWatch starts watching the nf_tables commits, once per Apply,
// where the tools are the nf_tables kind.
func (b *Backend) startWatch() {
	if b.watch != nil || !b.InNftables() || !b.Netlink {
		return
	}
	w, err := watchCommits()
	if err != nil {
		b.log().Debug("iptables-restore unwatched", "err", err)
		return
	}
	b.watch = w
	b.watchMu.Lock()
	b.watchPIDs = []int{os.Getpid()}
	b.watchMu.Unlock()
}

// watchCommits starts a commit watch (a variable for the tests).
var watchCommits = nft.WatchCommits

// restoreStarted records the PID of a restore Apply started.
func (b *Backend) restoreStarted(pid int) {
	b.watchMu.Lock()
	b.watchPIDs = append(b.watchPIDs, pid)
	b.watchMu.Unlock()
}

// lookBeforeRestore is the last look at the generation before Apply's
// restores, the watch started first. With a drift check vouching for
// Apply's read (Checked), a generation that moved since (beyond Apply's
// own commits) is checked as a refused netlink transaction is: nothing
// committed yet, or moat's chains no longer as read, and nothing is
// restored (nft.ErrChangedSinceCheck).
func (b *Backend) lookBeforeRestore(ctx context.Context, orig *state) error {
	b.startWatch()
	if b.beforeLook != nil {
		b.beforeLook()
	}
	if !b.InNftables() {
		return nil
	}
	g, gerr := nftGeneration()
	t := b.track
	if b.Checked.OK && t.known && (gerr != nil || g != t.before+t.commits) {
		if t.commits == 0 || b.chainsChanged(ctx, orig) {
			b.closeWatch()
			return fmt.Errorf("iptables apply: %w", nft.ErrChangedSinceCheck)
		}
	}
	if gerr == nil {
		b.watch.From(g)
	}
	return nil
}

// endWatch reads the watched commits once Apply's restores have ended
// and tells what they may have written over.
func (b *Backend) endWatch() {
	w := b.watch
	if w == nil {
		return
	}
	b.watch = nil
	post, err := nftGeneration()
	if err != nil {
		w.Close()
		b.watchMu.Lock()
		ran := len(b.watchPIDs) > 1
		b.watchMu.Unlock()
		if ran {
			b.tell(nft.UnheardMessage("iptables-restore"))
		}
		return
	}
	commits, complete := w.Stop(post)
	b.watchMu.Lock()
	pids := append([]int(nil), b.watchPIDs...)
	b.watchMu.Unlock()
	ours := func(c nft.Commit) bool { return nft.CommittedBy(c, pids) }
	b.overwrote = nft.Overwritten(commits, ours, moatChainChange)
	if len(b.overwrote) > 0 {
		b.tell(nft.OverwrittenMessage("iptables-restore", b.overwrote))
	}
	if !complete && len(pids) > 1 {
		// A tool ran (its PID after moat's): silence would read as
		// nothing written over.
		b.log().Debug("the commits while iptables-restore ran are not all known")
		b.tell(nft.UnheardMessage("iptables-restore"))
	}
}

// tell says msg through Warn, else logs it.
func (b *Backend) tell(msg string) {
	if b.Warn != nil {
		b.Warn(msg)
		return
	}
	b.log().Warn(msg)
}

// closeWatch ends a watch Apply left (it returned early).
func (b *Backend) closeWatch() {
	if b.watch != nil {
		b.watch.Close()
		b.watch = nil
	}
}

// moatChainChange says whether a change is to one of moat's chains
// (MOAT-*) of iptables-nft's tables: the built-in chains hold others'
// rules beside moat's jumps, which a restore leaves as they are.
func moatChainChange(ch nft.Change) bool {
	if ch.Family != unix.NFPROTO_IPV4 && ch.Family != unix.NFPROTO_IPV6 {
		return false
	}
	if ch.Table != "filter" && ch.Table != "raw" {
		return false
	}
	return strings.HasPrefix(ch.Name, "MOAT-")
}

// LastOverwritten names the changes of moat's chains that other
// programs committed while the last Apply's restores ran, and that a
// restore may have written over (one line each); nil when none.
func (b *Backend) LastOverwritten() []string { return b.overwrote }
