package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/drift"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/statedir"
)

// fingerprintFile records the fingerprint of moat's rules in the kernel
// taken right after moat applied them (or after a full comparison found
// them to be what moat applied), for the applied record it belongs to.
const fingerprintFile = "kernel-fingerprint.json"

type kernelRecord struct {
	Backend      string    `json:"backend"`
	PolicySHA256 string    `json:"policy_sha256"`
	Time         time.Time `json:"time"`
	Fingerprint  string    `json:"fingerprint"`
	// Generation is the nftables ruleset generation when the fingerprint
	// was taken (nftables only): while it stays, no table changed, and
	// the fingerprint need not be read again (that reads every policy set
	// element: 0.6 s with 100,000).
	Generation    uint32 `json:"nft_generation,omitempty"`
	HasGeneration bool   `json:"has_nft_generation,omitempty"`
	// Boot and NetNS: where Generation counts (nft.GenerationScope). It
	// counts from boot in each network namespace: a record kept across a
	// reboot, or read in another namespace, may find its number again
	// with other tables behind it (genHere).
	Boot  string `json:"boot_id,omitempty"`
	NetNS uint64 `json:"netns_cookie,omitempty"`
	// Sets: the fingerprint covers ipsets of the policy (iptables), whose
	// contents change without moving the generation: it alone cannot
	// vouch for them.
	Sets bool `json:"ipsets,omitempty"`
	// Protected (iptables): when the only sets the fingerprint covers
	// are the protected sets (no policy ipset), the hash of their
	// listings, read with it. An unchanged generation vouches for the
	// chains and this for the sets: two `ipset list` instead of
	// iptables-save, ip6tables-save and the same two.
	Protected string `json:"protected_ipsets,omitempty"`
}

// chainsKnown is what ReadNftLoadedReusing may take from the chains of
// the record verified (read at generation verified.gen) instead of the
// kernel: every chain but those nb's last commit wrote, when that commit
// was a netlink patch committed right at verified.gen and nothing since
// (or nothing was committed and the generation is still verified.gen).
// nil when the generations or the commit do not prove that: then every
// chain is read.
func (a *app) chainsKnown(nb *nft.Backend, verified verifiedGen, now uint32) func(chain, head string) ([]drift.Rule, bool) {
	if !verified.ok {
		return nil
	}
	before, after, committed := nb.LastCommit()
	var wrote []string
	switch {
	case committed && !nb.LastCommitWhole() && before == verified.gen && after == before+1 && now == after:
		w, ok := nb.LastCommitChains()
		if !ok {
			return nil
		}
		wrote = w
	case !committed && now == verified.gen:
	default:
		return nil
	}
	chains := a.readChains(verified.fp)
	if chains == nil {
		return nil
	}
	return func(chain, head string) ([]drift.Rule, bool) {
		if slices.Contains(wrote, chain) {
			return nil, false
		}
		c, ok := chains[chain]
		if !ok || c.Head != head {
			return nil, false
		}
		return c.Rules, true
	}
}

// verifiedGen is an nftables ruleset generation at which moat's table was
// found to be what moat applied (the recorded fingerprint).
type verifiedGen struct {
	gen uint32
	fp  string // the fingerprint found there
	ok  bool
}

// kernelFingerprint hashes moat's table (nftables, over netlink: chains,
// rule bodies, policy set elements) or chains (iptables: the backend's
// fingerprint of its chains, jumps and sets), without counters, bans or
// rate-limit state.
//
// sets says the fingerprint covers policy ipsets (see kernelRecord.Sets).
func (a *app) kernelFingerprint(ctx context.Context, b backend.Backend) (ipt.KernelPrint, error) {
	if b.Name() == "nftables" {
		l, err := drift.Read(ctx, "nftables", nil, nil)
		if err != nil {
			return ipt.KernelPrint{}, err
		}
		if l.Empty() {
			return ipt.KernelPrint{}, nil
		}
		fp, err := drift.Fingerprint(l)
		return ipt.KernelPrint{Fingerprint: fp}, err
	}
	if ib, ok := b.(*ipt.Backend); ok {
		return ib.FingerprintKernel(ctx)
	}
	f, ok := b.(backend.Fingerprinter)
	if !ok {
		return ipt.KernelPrint{}, errNoFingerprint
	}
	fp, err := f.Fingerprint(ctx)
	return ipt.KernelPrint{Fingerprint: fp, Sets: true}, err
}

// protectedUnchanged says whether the protected ipsets are as the record
// rec found them, when they are the only sets it covers (iptables).
func (a *app) protectedUnchanged(ctx context.Context, b backend.Backend, rec kernelRecord) bool {
	ib, ok := b.(*ipt.Backend)
	return ok && rec.Protected != "" && ib.ProtectedFingerprint(ctx) == rec.Protected
}

// fingerprintHook, in tests, runs before recordFingerprint reads the
// fingerprint from the kernel, or from what moat loaded (so it may run
// twice in one record).
var fingerprintHook func()

var errNoFingerprint = errors.New("the backend cannot fingerprint its rules")

// generationTracks says whether every change to moat's rules of b moves
// the nftables ruleset generation: nftables, and iptables when its tools
// are the nf_tables kind (moat's chains are chains of the nftables tables
// ip filter and ip6 filter; legacy x_tables are not). Then an unchanged
// generation vouches for the recorded fingerprint, and iptables-save need
// not run (three processes per command before).
func generationTracks(b backend.Backend) bool {
	switch b := b.(type) {
	case *nft.Backend:
		return true
	case *ipt.Backend:
		return b.InNftables()
	}
	return b.Name() == "nftables"
}

// unchangedSinceApply says whether the kernel holds exactly what moat left
// there for the applied record st: the nftables generation has not moved
// since, or the fingerprint is the recorded one. False when that cannot be
// told (no record, another applied record, an unreadable kernel): the
// caller then compares in full. With refresh (under the state lock), a
// fingerprint found unchanged under a new generation (bans, other tables)
// is recorded with it, so the next command need not read it again.
func (a *app) unchangedSinceApply(ctx context.Context, b backend.Backend, st appliedState, refresh bool) bool {
	data, err := statedir.ReadFile(a.stateDir, fingerprintFile)
	if err != nil {
		return false
	}
	var rec kernelRecord
	if json.Unmarshal(data, &rec) != nil || rec.Fingerprint == "" || !rec.matches(st) || rec.Backend != b.Name() {
		return false
	}
	var gen uint32
	hasGen := false
	if generationTracks(b) {
		if gen, err = nft.Generation(); err == nil {
			hasGen = true
			if rec.genHere() && gen == rec.Generation && (!rec.Sets || a.protectedUnchanged(ctx, b, rec)) {
				a.log.Debug("moat's table unchanged since its fingerprint was taken", "generation", gen)
				a.verified = verifiedGen{gen: gen, fp: rec.Fingerprint, ok: true}
				return true
			}
		}
	}
	k, err := a.kernelFingerprint(ctx, b)
	fp := k.Fingerprint
	if err != nil || fp != rec.Fingerprint {
		return false
	}
	if hasGen {
		// Read before the fingerprint: a change in between moved the
		// generation past it, so it never vouches for more than was read.
		a.verified = verifiedGen{gen: gen, fp: fp, ok: true}
		if refresh {
			rec.Generation, rec.HasGeneration = gen, true
			rec.Sets, rec.Protected = k.Sets, k.Protected
			a.writeKernelRecord(rec)
		}
	}
	return true
}

// genHere says whether the record's generation counts here: it has one,
// taken in this boot and this network namespace.
func (r kernelRecord) genHere() bool {
	if !r.HasGeneration {
		return false
	}
	boot, netns, ok := nft.GenerationScope()
	return ok && r.Boot == boot && r.NetNS == netns
}

func (r kernelRecord) matches(st appliedState) bool {
	return st.Known && r.Backend == st.Backend && r.Time.Equal(st.Time) && r.PolicySHA256 == st.PolicySHA256
}

// recordFingerprint stores the kernel's fingerprint for the applied record
// st. Call it only when the kernel is known to hold what moat applied.
// compared is the nftables generation, read before it, at which the
// caller's full comparison found the kernel to hold it (ok false: none
// made), so it is not made a second time.
func (a *app) recordFingerprint(ctx context.Context, b backend.Backend, st appliedState, compared verifiedGen) {
	if !st.Known || b.Name() != st.Backend {
		return
	}
	rec := kernelRecord{Backend: st.Backend, PolicySHA256: st.PolicySHA256, Time: st.Time}
	if fp, gen, chains, ok := a.loadedFingerprint(ctx, b); ok {
		a.log.Debug("fingerprint of moat's rules taken from what moat loaded", "generation", gen)
		rec.Fingerprint, rec.Generation, rec.HasGeneration = fp, gen, true
		a.verified = verifiedGen{gen: gen, fp: fp, ok: true}
		a.writeChains(fp, chains)
		a.writeKernelRecord(rec)
		return
	}
	nb, isNft := b.(*nft.Backend)
	ib, isIpt := b.(*ipt.Backend)
	// tracked: every change to moat's rules moves the generation, and
	// this command knows which of those moves are its own. With legacy
	// x_tables (no generation) the fingerprint is recorded as read.
	tracked := isNft && nb.Netlink || isIpt && ib.InNftables()
	// proven: the generation at which the table is known to be what moat
	// applied (by the generations, or by a full comparison made from it).
	proven, provenOK := uint32(0), false
	switch {
	case tracked && isNft:
		proven, provenOK = a.ownChangesOnly(nb, a.verified)
	case tracked:
		proven, provenOK = a.ownRestoresOnly(ib, a.verified)
	}
	a.verified = verifiedGen{}
	if tracked && !provenOK && compared.ok {
		proven, provenOK = compared.gen, true // checked again below: nothing committed since
	}
	if tracked && !provenOK {
		// Another program committed since this command found the table
		// to be what moat applied, or after its own commit: a rule or
		// element added by hand where this command's partial update did
		// not write is in the kernel, and a fingerprint read now would
		// vouch for it. Compare in full first.
		a.log.Debug("the generations do not prove moat's rules unchanged: comparing them in full before the fingerprint")
		g0, err := nft.Generation()
		if why := a.driftReason(ctx, b, st); why != "" {
			if !sameDrift(why, a.driftSaid) {
				fmt.Fprintf(a.errOut, "moat: warning: %s (while this command ran): the next apply rewrites moat's rules whole\n", why)
			}
			_ = statedir.Remove(a.stateDir, fingerprintFile)
			return
		}
		proven, provenOK = g0, err == nil
	}
	if fingerprintHook != nil {
		fingerprintHook()
	}
	if generationTracks(b) {
		// Before the fingerprint: a change in between moves the
		// generation, so the next command reads the fingerprint anew.
		if gen, err := nft.Generation(); err == nil {
			rec.Generation, rec.HasGeneration = gen, true
		}
	}
	k, err := a.kernelFingerprint(ctx, b)
	fp := k.Fingerprint
	rec.Sets, rec.Protected = k.Sets, k.Protected
	if err != nil || fp == "" {
		a.log.Debug("fingerprint moat's rules", "err", err)
		_ = statedir.Remove(a.stateDir, fingerprintFile)
		return
	}
	if tracked {
		// The fingerprint stands for what was proven only if nothing was
		// committed from the proof until it was read whole: a rule added
		// by hand in between is in it, and the next command, finding
		// that generation or that fingerprint, would take it for moat's.
		// Nothing is recorded then: the next command compares in full.
		after, err := nft.Generation()
		if !provenOK || !rec.HasGeneration || rec.Generation != proven || err != nil || after != proven {
			a.log.Debug("the ruleset changed while moat's fingerprint was read: not recorded", "proven", proven, "now", after)
			_ = statedir.Remove(a.stateDir, fingerprintFile)
			return
		}
	}
	rec.Fingerprint = fp
	if rec.HasGeneration {
		a.verified = verifiedGen{gen: rec.Generation, fp: fp, ok: true}
	}
	a.writeKernelRecord(rec)
}

// loadedFingerprint is the fingerprint of moat's table taken without
// reading its policy sets back (with 100,000 networks the dump costs 0.3
// to 0.6 s): chains and rules are read over netlink, each policy set
// counts as the element store's record of what moat loaded into it. It
// is taken only when the generations prove that nothing but this
// command's own transaction touched any table since the kernel was found
// to be what moat applied: this command verified the table at generation
// V, and its one commit went from V to V+1, which is the generation now;
// or it committed nothing and the generation is still V; or its one
// commit rewrote the table whole (a first enable, a repair: every policy
// set deleted and created again with its elements) from what it read at
// generation V, went from V to V+1, and V+1 is the generation now.
// Otherwise ok is false and the caller reads the kernel whole, so a set
// changed by hand (`nft add element`, which moves the generation) is
// always seen.
func (a *app) loadedFingerprint(ctx context.Context, b backend.Backend) (fp string, gen uint32, chains map[string]drift.Chain, ok bool) {
	nb, isNft := b.(*nft.Backend)
	if !isNft {
		return "", 0, nil, false
	}
	if ah := a.takeAhead(nb); ah != nil && ah.ok {
		// Taken right after the commit, at generation ah.gen: it stands
		// if nothing was committed since (a change in between moved the
		// generation, and the fingerprint is taken anew below, where the
		// generations no longer prove the table moat's).
		if now, err := nft.Generation(); err == nil && now == ah.gen {
			return ah.fp, ah.gen, ah.chains, true
		}
	}
	return a.loadedFingerprintAt(ctx, nb, a.verified)
}

// aheadPrint is loadedFingerprint taken right after an nftables commit
// (nft.Backend.AfterCommit), inside the apply: the engine's records are
// then being written and synced (prepared on a goroutine of their own
// while the kernel took the change), and the fingerprint's reads overlap
// those disk flushes instead of following them. afterChange takes it
// when nothing was committed since.
type aheadPrint struct {
	nb               *nft.Backend
	before, after    uint32
	committed, whole bool
	fp               string
	gen              uint32
	chains           map[string]drift.Chain
	ok               bool
}

// startAhead reads the fingerprint of what nb just committed, on the
// command's goroutine (a goroutine of its own, locked to a thread in the
// command's namespace, parked at every netlink read: its thread handoffs
// cost more CPU than the overlap saved).
func (a *app) startAhead(ctx context.Context, nb *nft.Backend) {
	ah := &aheadPrint{nb: nb, whole: nb.LastCommitWhole()}
	ah.before, ah.after, ah.committed = nb.LastCommit()
	ah.fp, ah.gen, ah.chains, ah.ok = a.loadedFingerprintAt(ctx, nb, a.verified)
	a.ahead = ah
}

// takeAhead returns the fingerprint startAhead read for nb, when it was
// taken for nb's last commit (nil otherwise), and forgets it.
func (a *app) takeAhead(nb *nft.Backend) *aheadPrint {
	ah := a.ahead
	if ah == nil {
		return nil
	}
	a.ahead = nil
	before, after, committed := nb.LastCommit()
	if ah.nb != nb || ah.before != before || ah.after != after || ah.committed != committed || ah.whole != nb.LastCommitWhole() {
		return nil
	}
	return ah
}

// loadedFingerprintAt is loadedFingerprint for a command that verified
// the table at verified.
func (a *app) loadedFingerprintAt(ctx context.Context, nb *nft.Backend, verified verifiedGen) (fp string, gen uint32, chains map[string]drift.Chain, ok bool) {
	now, err := nft.Generation()
	if err != nil {
		return "", 0, nil, false
	}
	before, after, committed := nb.LastCommit()
	switch {
	case committed && nb.LastCommitWhole() && after == before+1 && now == after:
		// The table is what the commit wrote, whatever it held before:
		// the objects it did not delete were read at before, with
		// nothing committed between that read and the commit.
	case !verified.ok:
		return "", 0, nil, false
	case committed && (before == verified.gen || a.recordVouches(verified, before)) && after == before+1 && now == after:
	case !committed && now == verified.gen:
	default:
		return "", 0, nil, false
	}
	if fingerprintHook != nil {
		fingerprintHook()
	}
	known, reused := a.chainsKnown(nb, verified, now), 0
	if known != nil {
		inner := known
		known = func(chain, head string) ([]drift.Rule, bool) {
			rules, ok := inner(chain, head)
			if ok {
				reused++
			}
			return rules, ok
		}
	}
	l, err := drift.ReadNftLoadedReusing(nb.LoadedRanges(ctx), known)
	if err != nil || l.Empty() {
		return "", 0, nil, false
	}
	a.log.Debug("fingerprint: chains read back", "read", len(l.Chains)-reused, "from the record", reused)
	if fp, err = drift.Fingerprint(l); err != nil {
		return "", 0, nil, false
	}
	if again, err := nft.Generation(); err != nil || again != now {
		return "", 0, nil, false // something was committed while the chains were read
	}
	return fp, now, recordableChains(l), true
}

// ownChangesOnly says whether the generations prove that nothing but
// this command's own commit (and moat's bans, which move the record)
// touched any table since it verified moat's table (verified), or since
// the table was read for its commit that rewrote it whole: then what the
// kernel holds at generation now, which it returns, is what moat applied.
func (a *app) ownChangesOnly(nb *nft.Backend, verified verifiedGen) (now uint32, ok bool) {
	now, err := nft.Generation()
	if err != nil {
		return 0, false
	}
	before, after, committed := nb.LastCommit()
	switch {
	case committed && nb.LastCommitWhole() && after == before+1 && now == after:
		return now, true
	case !verified.ok:
		return 0, false
	case !committed:
		return now, now == verified.gen
	}
	return now, (before == verified.gen || a.recordVouches(verified, before)) && after == before+1 && now == after
}

// ownRestoresOnly is ownChangesOnly for iptables-nft: the generations
// prove that nothing but this command's own restores committed since it
// verified moat's chains (verified): its Apply found the generation it
// verified, and the generation moved since by exactly the transactions
// its restores made. A rule inserted by hand (iptables -I) between two of
// them moves it once more. ipset changes do not move it: the fingerprint
// reads the policy sets' members.
//
// Without a verified table, an Apply that found none of moat's chains
// and wrote them whole (ipt.Backend.LastApplyFresh: a first enable)
// proves them the same way, as a whole commit does on nftables: nothing
// of moat's was there to survive its restores, and the generation moved
// by those restores alone. A first enable then skips the full comparison
// (at 100,000 networks: every set read back, and the policy loaded again
// into a scratch namespace to compare the rules in place).
func (a *app) ownRestoresOnly(ib *ipt.Backend, verified verifiedGen) (now uint32, ok bool) {
	now, err := nft.Generation()
	if err != nil {
		return 0, false
	}
	before, commits, applied, known := ib.LastApply()
	if applied && known && now == before+commits && ib.LastApplyFresh() {
		return now, true
	}
	if !verified.ok {
		return 0, false
	}
	if !applied {
		return now, now == verified.gen
	}
	return now, known && before == verified.gen && now == before+commits
}

// banCommitted keeps the recorded fingerprint current across moat's own
// bans (the guard's, 'moat ban'): a transaction that changed only ban or
// login set elements, which the fingerprint leaves out, and that went
// from generation before to after with nothing else committed, leaves the
// table as the record says it was at before. Without this, every ban would
// make the next command read every policy set back from the kernel. The
// guard runs without the state lock: a record rewritten meanwhile by a
// command is at another generation and is left alone (a stale write is
// still a true statement, at worst for an older applied record, which
// the next command does not trust).
func (a *app) banCommitted(before, after uint32) {
	data, err := statedir.ReadFile(a.stateDir, fingerprintFile)
	if err != nil {
		return
	}
	var rec kernelRecord
	if json.Unmarshal(data, &rec) != nil || rec.Backend != "nftables" || !rec.genHere() || rec.Generation != before || rec.Fingerprint == "" {
		return
	}
	rec.Generation = after
	a.writeKernelRecord(rec)
}

// recordVouches says whether the recorded fingerprint, moved on by the
// guard's bans since this command verified the table (verified;
// banCommitted), says that the table was still what this command verified
// at generation gen.
// Every record states what the table was at its generation, so one at gen
// with the verified fingerprint vouches for gen.
func (a *app) recordVouches(verified verifiedGen, gen uint32) bool {
	if !verified.ok || verified.fp == "" {
		return false
	}
	data, err := statedir.ReadFile(a.stateDir, fingerprintFile)
	if err != nil {
		return false
	}
	var rec kernelRecord
	return json.Unmarshal(data, &rec) == nil && rec.Backend == "nftables" && !rec.Sets &&
		rec.genHere() && rec.Generation == gen && rec.Fingerprint == verified.fp
}

func (a *app) writeKernelRecord(rec kernelRecord) {
	rec.Boot, rec.NetNS = "", 0
	if rec.HasGeneration {
		if boot, netns, ok := nft.GenerationScope(); ok {
			rec.Boot, rec.NetNS = boot, netns
		} else {
			rec.Generation, rec.HasGeneration = 0, false
		}
	}
	data, err := json.Marshal(rec)
	if err == nil {
		err = statedir.WriteCache(a.stateDir, fingerprintFile, data) // a cache: checked on reading
	}
	if err != nil {
		a.log.Debug("record the fingerprint of moat's rules", "err", err)
	}
}
