package nft

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/ruleset"
)

// Backend programs moat's nftables table.
//
// It reaches the kernel through one of two seams: NFT, a
// knftables.Interface (tests pass knftables.NewFake), or, when NFT is nil,
// the nft program run through Run with the whole transaction as one input
// file. The program path is the real one: it costs one nft process per
// apply, and sends each set as one element list, which knftables cannot.
type Backend struct {
	NFT knftables.Interface
	Run execrun.Runner
	// Full makes every Apply rewrite the whole table instead of sending
	// only what changed since the last apply.
	Full bool
	// Read, when set, reads the table over netlink instead of through
	// `nft list`, whose cost grows with the number of bans (see Reader).
	Read Reader
	// Netlink writes over netlink, in the calling thread's network
	// namespace, what nft is slow at: bans, and a change of policy set
	// elements alone (with Elements), as element deletes and adds in one
	// transaction with moat's record.
	Netlink bool
	// Elements keeps what moat loaded into each policy set, so that a
	// change of a set is sent as its difference (nil: sets are refilled).
	Elements ElementStore
	// AfterBan, when set, is told of each transaction of bans, unbans or
	// login exemptions (Netlink only) that took the ruleset generation
	// from before to after with nothing else committed in between: the
	// rest of the table is then what it was at before.
	AfterBan func(before, after uint32)
	// changed: a set was read while it kept changing (BansChanged).
	changed atomic.Bool
	// AfterCommit, when set, is called by Apply when it returns with its
	// change committed (or nothing to commit), on the calling thread: a
	// caller may start reading back what it loaded while it writes its
	// records (LastCommit is what Apply left).
	AfterCommit func(ctx context.Context)
	// Checked, when OK, is the generation the command's drift check
	// vouched for: Apply commits only there (ErrChangedSinceCheck), and
	// moves it on by its own commit.
	Checked CheckedGen
	// Warn, when set, is told of changes of moat's table that another
	// program committed while moat's nft ran, which nft's commit may
	// have written over (LastOverwritten); else they are logged.
	Warn func(msg string)
	// Log, when set, gets the debug messages (--verbose).
	Log *slog.Logger

	// noEncode, in tests, sends changed chains through nft (as before the
	// encoder), to compare.
	noEncode bool
	// beforeSend, in tests, runs before each netlink transaction is sent;
	// beforeCommit before a plan is committed through nft; afterLastLook
	// after the last look at the generation before nft runs.
	beforeSend, beforeCommit, afterLastLook func()
	// overwrote: LastOverwritten.
	overwrote []string

	// The last transaction this backend committed: the ruleset generation
	// before it and right after it (see LastCommit).
	committed       bool
	committedWhole  bool
	genPre, genPost uint32
	// wrote: the chains the last transaction flushed and refilled, when
	// it was a netlink patch (nil otherwise: unknown).
	wrote []string
	// available: Available succeeded once (a command asked four times,
	// each a netlink round trip).
	available bool
}

// LastCommit says what the last transaction this backend committed found
// and left: the ruleset generation just before it and just after it. When
// after is before+1, nothing else was committed in between, so the kernel
// holds what it held at generation before plus this change. ok is false
// when nothing was committed or the generations are unknown.
func (b *Backend) LastCommit() (before, after uint32, ok bool) {
	return b.genPre, b.genPost, b.committed
}

// LastCommitWhole says whether the last transaction (see LastCommit)
// rewrote moat's table whole: then the table held what it committed, at
// its generation after, whatever it held before.
func (b *Backend) LastCommitWhole() bool { return b.committedWhole }

// LastCommitChains names the chains the last transaction (see LastCommit)
// flushed and refilled or whose policy it set, when it was a netlink
// patch: it touched no other chain (set elements aside: the policy sets
// it changed are in the element store, the others as they were). ok is
// false when that is not known (a transaction through nft, a whole
// rewrite, nothing committed).
func (b *Backend) LastCommitChains() (chains []string, ok bool) {
	if !b.committed || b.committedWhole || b.wrote == nil {
		return nil, false
	}
	return b.wrote, true
}

// New returns the nftables backend driving the nft program, reading over
// netlink.
func New() *Backend { return &Backend{Run: execrun.Exec, Read: NetlinkReader{}, Netlink: true} }

// NewWith returns a backend on an injected knftables.Interface (for
// example knftables.NewFake(knftables.InetFamily, nft.TableName)); run
// is used for the few reads knftables cannot do (nil: none available).
func NewWith(nft knftables.Interface, run execrun.Runner) *Backend {
	return &Backend{NFT: nft, Run: run}
}

// Name is the backend's name.
func (b *Backend) Name() string { return "nftables" }

// Available reports whether nft can be used here: the program exists and
// the kernel answers (checked over netlink, no process).
func (b *Backend) Available() error {
	if b.NFT != nil {
		return nil
	}
	if b.available {
		return nil
	}
	if _, err := execrun.LookPath("nft"); err != nil {
		return fmt.Errorf("nftables: nft not found: %w", err)
	}
	if err := kernelAvailable(); err != nil {
		return err
	}
	b.available = true
	return nil
}

// Script is the nft script that loads rs into an empty table, as `moat
// show` prints it. It needs neither root nor nft.
func (b *Backend) Script(rs *ruleset.Ruleset) (string, error) {
	fake := knftables.NewFake(knftables.InetFamily, TableName)
	return fullPlan(newPlan(fake.NewTransaction, true), want(rs), nil).Script(), nil
}

func (b *Backend) newPlan() *Plan {
	if b.NFT != nil {
		return newPlan(b.NFT.NewTransaction, false)
	}
	return newPlan(knftables.NewFake(knftables.InetFamily, TableName).NewTransaction, true)
}

// commit runs a plan as one transaction.
func (b *Backend) commit(ctx context.Context, p *Plan, check bool) error {
	if b.NFT != nil {
		tx := p.single()
		if check {
			return b.NFT.Check(ctx, tx)
		}
		return b.NFT.Run(ctx, tx)
	}
	args := []string{"-f", "-"}
	if check {
		args = []string{"--check", "-f", "-"}
	}
	_, err := b.Run(ctx, []byte(p.Script()), "nft", args...)
	return err
}

// isNotFound says whether an nft error means "no such table or object".
func isNotFound(err error) bool {
	return err != nil && (knftables.IsNotFound(err) || strings.Contains(err.Error(), "No such file or directory"))
}

// listObjects returns the names of the objects in moat's table by type;
// an absent table has none.
func (b *Backend) listObjects(ctx context.Context) (map[string][]string, error) {
	if b.NFT != nil {
		all, err := b.NFT.ListAll(ctx)
		if isNotFound(err) {
			return map[string][]string{}, nil
		}
		return all, err
	}
	if r, ok := b.Read.(interface {
		Objects() (map[string][]string, error)
	}); ok {
		return r.Objects()
	}
	out, err := b.Run(ctx, nil, "nft", "-j", "-t", "list", "table", "inet", TableName)
	if isNotFound(err) {
		return map[string][]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	var doc struct {
		Nftables []map[string]struct {
			Name string `json:"name"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("parse nft output: %w", err)
	}
	res := map[string][]string{}
	for _, obj := range doc.Nftables {
		for typ, o := range obj {
			if typ == "chain" || typ == "set" || typ == "map" {
				res[typ] = append(res[typ], o.Name)
			}
		}
	}
	return res, nil
}

// readRecord reads the sync chain; ok is false when there is none to
// trust.
func (b *Backend) readRecord(ctx context.Context) (record, bool) {
	var comments []string
	if b.NFT != nil {
		rules, err := b.NFT.ListRules(ctx, SyncChain)
		if err != nil {
			return nil, false
		}
		for _, r := range rules {
			if r.Comment != nil {
				comments = append(comments, *r.Comment)
			}
		}
	} else if r, ok := b.Read.(interface{ SyncComments() ([]string, error) }); ok {
		var err error
		if comments, err = r.SyncComments(); err != nil {
			return nil, false
		}
	} else {
		out, err := b.Run(ctx, nil, "nft", "-j", "list", "chain", "inet", TableName, SyncChain)
		if err != nil {
			return nil, false
		}
		if comments, err = ruleComments(out); err != nil {
			return nil, false
		}
	}
	return parseRecord(comments)
}

// ruleComments reads the rules' comments of `nft -j list chain` output.
func ruleComments(data []byte) ([]string, error) {
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Comment string `json:"comment"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	var out []string
	for _, o := range doc.Nftables {
		if o.Rule != nil {
			out = append(out, o.Rule.Comment)
		}
	}
	return out, nil
}

// setPrefixes reads a policy set's elements from the kernel.
func (b *Backend) setPrefixes(ctx context.Context, name string) ([]netip.Prefix, error) {
	var vals []string
	if b.NFT != nil {
		els, err := b.NFT.ListElements(ctx, "set", name)
		if err != nil {
			return nil, err
		}
		for _, e := range els {
			vals = append(vals, strings.Join(e.Key, " "))
		}
	} else {
		out, err := b.Run(ctx, nil, "nft", "-j", "list", "set", "inet", TableName, name)
		if err != nil {
			return nil, err
		}
		els, err := parseSetJSON(out)
		if err != nil {
			return nil, err
		}
		for _, e := range els {
			vals = append(vals, e.Val)
		}
	}
	out := make([]netip.Prefix, 0, len(vals))
	for _, v := range vals {
		p, err := parsePrefix(v)
		if err != nil {
			return nil, fmt.Errorf("set %s holds %q: %w", name, v, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func parsePrefix(v string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(v); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// plan computes the transaction that makes moat's table hold rs: only the
// difference when the sync chain says what the table holds, else the whole
// table. With netlink, a change of policy set elements alone is a netlink
// batch of element deletes and adds (see netlinkPatch).
//
// stageAt, when not 0, is the ruleset generation read before the plan
// reads the table: a whole plan into a table that is not there then
// stages its filled policy sets (stage.go), to be committed at stageAt.
func (b *Backend) plan(ctx context.Context, rs *ruleset.Ruleset, full, netlink bool, stageAt uint32) (*Plan, error) {
	d := want(rs)
	p, err := b.planFor(ctx, d, full, netlink, stageAt)
	if p != nil {
		p.want = d
	}
	return p, err
}

func (b *Backend) planFor(ctx context.Context, d *desired, full, netlink bool, stageAt uint32) (*Plan, error) {
	if !full {
		var gen uint32
		if netlink {
			// Before the record is read: the batch is committed only if
			// nothing changed since.
			gen, _ = Generation()
		}
		if old, ok := b.readRecord(ctx); ok && canPatch(d, old) {
			if p := b.netlinkPatch(d, old, gen); p != nil {
				return p, nil
			}
			// Reading a set back through nft's JSON costs about as much
			// as loading it, so only a reader that is cheap (knftables'
			// Fake, in tests) is asked; otherwise changed sets are
			// replaced whole within the transaction.
			current := map[string][]netip.Prefix{}
			if b.NFT != nil {
				for _, s := range changedSets(d, old) {
					ps, err := b.setPrefixes(ctx, s.set.Name)
					if err != nil {
						current = nil
						break
					}
					current[s.set.Name] = ps
				}
			}
			if current != nil {
				return patchPlan(b.newPlan(), d, old, current), nil
			}
		}
	}
	existing, err := b.listObjects(ctx)
	if err != nil {
		return nil, fmt.Errorf("list table inet %s: %w", TableName, err)
	}
	migrate, err := b.banSetsToMigrate(ctx, d, existing)
	if err != nil {
		return nil, err
	}
	p := b.newPlan()
	if stageAt != 0 && b.Netlink && b.NFT == nil && len(existing) == 0 {
		// No object listed: no table (or an empty one, and then the
		// stage, which creates the table, is refused and nft does it all).
		if p.pre, p.staged = stage(d); p.pre != nil {
			p.gen = stageAt
		}
	}
	if b.Netlink && b.NFT == nil {
		existing = splitOdd(p, existing)
	}
	return fullPlanMigrating(p, d, existing, migrate), nil
}

// splitOdd moves the chains and sets of existing whose names cannot be
// written into an nft script (scriptName) to p.oddChains and p.oddSets,
// and returns the rest. Every name moat gives is a script name, so these
// are never among the objects the plan keeps.
func splitOdd(p *Plan, existing map[string][]string) map[string][]string {
	out := make(map[string][]string, len(existing))
	for typ, names := range existing {
		for _, n := range names {
			switch {
			case scriptName(n):
				out[typ] = append(out[typ], n)
			case typ == "chain":
				p.oddChains = append(p.oddChains, n)
			case typ == "set":
				p.oddSets = append(p.oddSets, n)
			}
		}
	}
	return out
}

// scriptName says whether a name read from the kernel can be written as
// it is into an nft script: a letter or '_', then letters, digits and
// '_' (nft's identifiers allow a few more characters, which no name of
// moat's has). Any other name (a newline, a quote, a control character,
// a space, a leading digit) would break the script's syntax or write its
// text into it as commands.
func scriptName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// removeOdd removes the plan's odd objects over netlink around the
// script's commit (commit): before it their chains are flushed (a rule of
// theirs may use a set the script deletes), after it the chains and sets
// are deleted (a rule of moat's chains, which the script flushes, may
// jump to them). Two commits of their own: the objects are no part of
// moat's rules, and the table's record is the script's.
func (b *Backend) removeOdd(p *Plan, commit func() error) error {
	if len(p.oddChains) == 0 && len(p.oddSets) == 0 {
		return commit()
	}
	flush := &batch{}
	for _, c := range p.oddChains {
		flush.flushChain(c)
	}
	if err := flush.send(0); err != nil {
		return fmt.Errorf("flush the chains moat's table holds under names nft cannot write (%s): %w", oddNames(p), err)
	}
	if err := commit(); err != nil {
		return err
	}
	del := &batch{}
	for _, c := range p.oddChains {
		del.deleteChain(c)
	}
	for _, s := range p.oddSets {
		del.deleteSet(s)
	}
	if err := del.send(0); err != nil {
		return fmt.Errorf("delete the objects moat's table holds under names nft cannot write (%s): %w", oddNames(p), err)
	}
	return nil
}

// oddNames names the plan's odd objects for an error, quoted.
func oddNames(p *Plan) string {
	var names []string
	for _, c := range p.oddChains {
		names = append(names, "chain "+strconv.Quote(c))
	}
	for _, s := range p.oddSets {
		names = append(names, "set "+strconv.Quote(s))
	}
	return strings.Join(names, ", ")
}

// maxNetlinkElems bounds the element deletes and adds of one netlink
// patch (about 36 bytes each in the transaction); a larger change refills
// the sets through nft.
const maxNetlinkElems = 400000

// netlinkPatch is the difference as one netlink transaction, sent only
// if the ruleset generation is still gen, as patchPlan would send it
// through nft: the chains whose rules changed flushed and refilled (their
// rules written by ruleEncoder, as nft writes them), the element deletes
// and adds of each changed policy set when the element store holds what
// it was loaded with (its entries hash is the one in the kernel's record),
// and the new record. nil when that cannot be done, and then all of it
// goes through nft: a rule the encoder does not know, a changed set with
// no store entry or one of other contents, too many elements.
func (b *Backend) netlinkPatch(d *desired, old record, gen uint32) *Plan {
	if !b.Netlink || gen == 0 || b.NFT != nil {
		return nil
	}
	var changed []*wantChain
	for _, c := range d.chains {
		if old["chain "+c.chain.Name] != c.hash {
			changed = append(changed, c)
		}
	}
	sets := changedSets(d, old)
	removed, added := removedSets(d, old), addedSets(d, old)
	if len(changed) == 0 && len(sets) == 0 && len(removed) == 0 && len(added) == 0 ||
		len(sets) > 0 && b.Elements == nil || (len(changed) > 0 || len(removed) > 0 || len(added) > 0) && b.noEncode {
		return nil
	}
	p := b.newPlan()
	p.nl, p.gen, p.save = &batch{}, gen, map[string]StoredSet{}
	// In patchPlan's order: the chains (a base chain's policy, as nft's
	// `add chain` sets it) and their flushes, the sets, the record, the
	// rules.
	p.wrote = []string{SyncChain}
	for _, c := range changed {
		if c.chain.Policy != nil {
			p.nl.chainPolicy(c.chain.Name, *c.chain.Policy)
		}
		p.nl.flushChain(c.chain.Name)
		p.wrote = append(p.wrote, c.chain.Name)
	}
	var id uint32 // the transaction's set IDs: new sets, then anonymous ones
	for _, name := range removed {
		p.nl.deleteSet(name)
		p.dropped = true
	}
	for _, s := range added {
		id++
		if !p.nl.newSet(s.set, id) {
			return nil
		}
		if s.kind == policySet {
			w := p.nl.elementWriter(createElems, s.set.Name)
			eachIntervalElem(s.elems(), w.add)
			w.flush()
			ps := s.elems()
			p.save[s.set.Name] = StoredSet{Data: s.data, Prefixes: ps, Ranges: prefixesHash(ps)}
		}
	}
	n := 0
	for _, s := range sets {
		_, oldData, _ := strings.Cut(old["set "+s.set.Name], " ")
		st, err := b.Elements.Load(s.set.Name)
		if err != nil || st.Data != oldData {
			return nil
		}
		now := s.elems()
		del, add := diffIntervals(st.Prefixes, now)
		if n += len(del) + len(add); n > maxNetlinkElems {
			return nil
		}
		// Deletes first: a network that changed its length keeps its start
		// address, whose element goes and comes back in one transaction.
		p.nl.elements(deleteElems, s.set.Name, del)
		p.nl.elements(createElems, s.set.Name, add)
		p.save[s.set.Name] = StoredSet{Data: s.data, Prefixes: now, Ranges: prefixesHash(now)}
	}
	p.nl.flushChain(SyncChain)
	for _, r := range d.record().rules() {
		p.nl.returnRule(SyncChain, *r.Comment)
	}
	enc := &ruleEncoder{b: p.nl, setID: id}
	for _, c := range changed {
		for _, r := range c.rules {
			if err := enc.rule(c.chain.Name, r.Rule, *r.Comment); err != nil {
				return nil
			}
		}
	}
	return p
}

// banSetsToMigrate finds the ban sets whose definition changed since moat
// loaded them (a table of an earlier moat: ban sets without the dynamic
// flag the port scan trap needs), with their bans to put back. Without a
// record of the old definitions, ban sets are re-created all the same.
func (b *Backend) banSetsToMigrate(ctx context.Context, d *desired, existing map[string][]string) (map[string][]string, error) {
	if b.Run == nil || len(existing["set"]) == 0 {
		return nil, nil
	}
	old, haveRecord := b.readRecord(ctx)
	var names []string
	for _, s := range d.sets {
		if s.kind != banSet || !slices.Contains(existing["set"], s.set.Name) {
			continue
		}
		if v, ok := old["set "+s.set.Name]; haveRecord && ok {
			if def, _, _ := strings.Cut(v, " "); def == s.def {
				continue
			}
		} else if r, ok := b.Read.(interface {
			SetIs(*knftables.Set) (bool, error)
		}); ok {
			// No record of it (the first apply after an upgrade, a
			// record lost): the kernel's definition says. Reading the
			// bans to put them back cost seconds at 200,000.
			if same, err := r.SetIs(s.set); err == nil && same {
				continue
			}
		}
		names = append(names, s.set.Name)
	}
	if len(names) == 0 {
		return nil, nil
	}
	bans, err := b.Bans(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the bans to keep across a ban set's new definition: %w", err)
	}
	migrate := map[string][]string{}
	for _, n := range names {
		migrate[n] = []string{}
	}
	for _, ban := range bans {
		set := ruleset.BanSetFor(ban.Addr)
		if _, ok := migrate[set]; !ok || ban.Expires <= 0 {
			continue
		}
		el := fmt.Sprintf("%s timeout %s", ban.Addr, timeout(ban.Expires))
		if r := ruleset.CleanReason(ban.Reason); r != "" {
			el += fmt.Sprintf(" comment %q", r)
		}
		migrate[set] = append(migrate[set], el)
	}
	return migrate, nil
}

// Check asks the kernel whether rs would load (nft --check), changing
// nothing. It checks the whole table, not only a difference.
func (b *Backend) Check(ctx context.Context, rs *ruleset.Ruleset) error {
	p, err := b.plan(ctx, rs, true, false, 0)
	if err != nil {
		return fmt.Errorf("nftables check: %w", err)
	}
	if err := b.commit(ctx, p, true); err != nil {
		return fmt.Errorf("nftables check: %w", err)
	}
	return nil
}

// Apply makes moat's table hold rs in one transaction: either all of it
// takes effect or none does. Only what changed since the last apply is
// sent (chains whose rules changed, set elements added and deleted),
// unless b.Full is set or moat's record of the table is missing.
func (b *Backend) Apply(ctx context.Context, rs *ruleset.Ruleset) error {
	if err := b.apply(ctx, rs); err != nil {
		return err
	}
	if b.AfterCommit != nil {
		b.AfterCommit(ctx)
	}
	return nil
}

func (b *Backend) apply(ctx context.Context, rs *ruleset.Ruleset) error {
	// The generation before the plan reads the table: a commit through nft
	// vouches for what it did not write (LastCommit, LastCommitWhole) only
	// if nothing else was committed since the table was read (a chain
	// added by hand after the read is not among those a rewrite deletes).
	b.overwrote = nil
	// Unchecked (a first enable, a repair: no drift check vouches for
	// the read), the commits are watched from before the plan's read;
	// checked, from the last look before nft (below): the checked
	// generation covers the time before it.
	var w *CommitWatch
	if !b.Checked.OK {
		w = b.watchCommits()
	}
	defer func() { w.Close() }()
	covered := w != nil
	pids := &toolPIDs{pids: []int{os.Getpid()}}
	pre, preErr := b.generation()
	if preErr == nil {
		w.From(pre)
	} else {
		covered = false
	}
	if b.Checked.OK {
		if preErr != nil {
			pre, preErr = Generation()
		}
		if !b.Checked.Still(pre, preErr) {
			// A change since the check (a rule put by hand into moat's
			// table?) is in what the plan would read and overwrite.
			return fmt.Errorf("nftables apply: %w", ErrChangedSinceCheck)
		}
	}
	p, err := b.plan(ctx, rs, b.Full, b.Netlink, stageGen(pre, preErr))
	if err != nil {
		return fmt.Errorf("nftables apply: %w", err)
	}
	for try := 0; p.nl != nil; try++ {
		err := b.sendBatch(p)
		if err == nil {
			b.checkedAfter()
			b.saveSets(p)
			// Unchecked, a patch planned again after a refusal may
			// have flushed a chain a hand rule was put in meanwhile.
			b.judge(w, covered, pids, rs, "")
			return nil
		}
		// Nothing was committed. Another change came first (a ban from the
		// guard): plan again at the new generation, a few times. Or the
		// kernel does not hold what the store says: the same change
		// through nft, refilling the changed sets. (Or the acks were
		// lost and the batch was committed whole: the plan made again
		// reads the record it wrote and has nothing to do.)
		moved := errors.Is(err, errGenerationMoved)
		netlink := moved && try < 3
		pre, preErr = b.generation()
		if b.Checked.OK && moved && (try >= 2 || !b.Checked.Still(pre, preErr)) {
			// Committed after the plan's read, and moat's rules are no
			// longer found as checked (or keep moving): a plan made
			// again would overwrite what changed. Nothing was
			// committed; the command checks them again.
			return fmt.Errorf("nftables apply: %w", ErrChangedSinceCheck)
		}
		if p, err = b.plan(ctx, rs, b.Full, netlink, stageGen(pre, preErr)); err != nil {
			return fmt.Errorf("nftables apply: %w", err)
		}
	}
	staged := false
	if p.pre != nil {
		if b.beforeSend != nil {
			b.beforeSend()
		}
		// The stage's own notifications (every policy set element:
		// 100,000 and more) are not listened to: it is committed at
		// p.gen or not at all, and the generation after it says
		// whether anything came between it and the listening again.
		w.pause()
		err := p.pre.send(p.gen)
		if !w.resume() {
			covered = false
		}
		if err == nil {
			// Committed alone at p.gen (the kernel refuses the stage at
			// any other generation), right after the plan's read.
			staged, pre, preErr = true, p.gen+1, nil
			if g, err := b.generation(); err != nil || g != pre {
				covered = false
			} else {
				// Listening again from the stage's commit on.
				w.From(g)
			}
		} else {
			// Nothing was committed: another change came first, or the
			// table was there. The whole table through nft alone.
			pre, preErr = b.generation()
			if preErr == nil {
				// Listening again before the read below.
				w.From(pre)
			}
			if b.Checked.OK && !b.Checked.At(Generation()) {
				return fmt.Errorf("nftables apply: %w", ErrChangedSinceCheck)
			}
			if p, err = b.plan(ctx, rs, b.Full, false, 0); err != nil {
				return fmt.Errorf("nftables apply: %w", err)
			}
		}
	}
	if p.Empty() {
		b.saveSets(p)
		return nil
	}
	if b.beforeCommit != nil {
		b.beforeCommit()
	}
	// nft -f commits at any generation: the commits until it has ended
	// are watched (commitwatch.go), so a change of moat's table that
	// another program committed before nft's commit, which that commit
	// may write over, is told.
	if w == nil {
		// Checked: from the last look.
		w = b.watchCommits()
		g, gerr := b.generation()
		covered = w != nil && gerr == nil && preErr == nil && g == pre
		if gerr == nil {
			w.From(g)
		}
	}
	if b.Checked.OK && !staged {
		// The last look before it.
		if g, err := Generation(); !b.Checked.At(g, err) {
			return fmt.Errorf("nftables apply: %w", ErrChangedSinceCheck)
		}
	}
	if b.afterLastLook != nil {
		b.afterLastLook()
	}
	cctx := execrun.WithStarted(ctx, pids.add)
	if err := b.removeOdd(p, func() error { return b.commit(cctx, p, false) }); err != nil {
		if staged {
			err = unstage(err)
		}
		return fmt.Errorf("nftables apply: %w", err)
	}
	b.track(pre, preErr)
	b.committedWhole = b.committed && p.Full
	b.checkedAfter()
	b.saveSets(p)
	b.judge(w, covered, pids, rs, "nft -f")
	return nil
}

// toolPIDs are the processes whose commits are moat's: moat itself and
// the tools it started.
type toolPIDs struct {
	mu   sync.Mutex
	pids []int
}

func (t *toolPIDs) add(pid int) {
	t.mu.Lock()
	t.pids = append(t.pids, pid)
	t.mu.Unlock()
}

// judge reads the commits w saw once moat's own have ended, and tells
// which change of moat's table by another program one of moat's
// commits may have written over (tool: what made them, "" for moat's
// own transaction). covered: w listened from a generation at which the
// table was what the plan read. Where tool's commit may have written
// over commits not heard (the watch not started, notifications lost),
// it says it cannot tell: silence would read as none.
func (b *Backend) judge(w *CommitWatch, covered bool, pids *toolPIDs, rs *ruleset.Ruleset, tool string) {
	if w == nil {
		if b.Netlink && tool != "" {
			b.tell(UnheardMessage(tool))
		}
		return
	}
	post, err := Generation()
	if err != nil {
		w.Close()
		if tool != "" {
			b.tell(UnheardMessage(tool))
		}
		return
	}
	commits, complete := w.Stop(post)
	pids.mu.Lock()
	ours := func(c Commit) bool { return CommittedBy(c, pids.pids) }
	b.overwrote = Overwritten(commits, ours, moatTableChange(rs))
	pids.mu.Unlock()
	b.tellOverwritten(tool)
	if !complete || !covered {
		// moat's own transaction commits at the generation its plan
		// read: nothing came between.
		b.log().Debug("the commits while moat wrote its table are not all known", "complete", complete, "covered", covered)
		if tool != "" {
			b.tell(UnheardMessage(tool))
		}
	}
}

// log is the backend's logger (nothing logged when Log is unset).
func (b *Backend) log() *slog.Logger {
	if b.Log != nil {
		return b.Log
	}
	return slog.New(slog.DiscardHandler)
}

// watchCommits starts watching the nf_tables commits (nil: not on
// netlink, or the watch could not start).
func (b *Backend) watchCommits() *CommitWatch {
	if !b.Netlink {
		return nil
	}
	w, err := WatchCommits()
	if err != nil {
		b.log().Debug("nft -f unwatched", "err", err)
		return nil
	}
	return w
}

// moatTableChange says whether a change is to moat's table: its chains,
// rules, sets, objects, and the elements of its policy sets (not the
// bans, login exemptions, trap entries and protected addresses, which
// the kernel, the guard and moat itself change).
func moatTableChange(rs *ruleset.Ruleset) func(Change) bool {
	policySets := map[string]bool{}
	for _, s := range rs.Sets {
		if !s.Bans && s.ScanWindow == 0 && !s.Protect && s.Name != ruleset.LoginSet4 && s.Name != ruleset.LoginSet6 {
			policySets[s.Name] = true
		}
	}
	return func(ch Change) bool {
		if ch.Family != unix.NFPROTO_INET || ch.Table != TableName {
			return false
		}
		if ch.Msg == unix.NFT_MSG_NEWSETELEM || ch.Msg == unix.NFT_MSG_DELSETELEM {
			return policySets[ch.Name]
		}
		return true
	}
}

// LastOverwritten names the changes of moat's table that other programs
// committed while the last Apply's nft ran, and that its commit may
// have written over (one line each, see Overwritten); nil when none.
func (b *Backend) LastOverwritten() []string { return b.overwrote }

// tellOverwritten says, through Warn, what the last commit by tool may
// have written over.
func (b *Backend) tellOverwritten(tool string) {
	if len(b.overwrote) == 0 {
		return
	}
	b.tell(overwrittenMessage(tool, b.overwrote))
}

// tell says msg through Warn, else logs it.
func (b *Backend) tell(msg string) {
	if b.Warn != nil {
		b.Warn(msg)
		return
	}
	b.log().Warn(msg)
}

// UnheardMessage is what the admin is told when the commits made while
// moat's tool wrote moat's rules are not all known: another program's
// change then may have been written over, unseen.
func UnheardMessage(tool string) string {
	return fmt.Sprintf("moat could not hear every change committed while moat's %s wrote its rules (the kernel's notifications were lost or did not come), so it cannot tell whether it replaced another program's change; 'moat status' shows moat's rules as they are now", tool)
}

// overwrittenMessage is what the admin is told of changes that moat's
// tool may have written over.
func overwrittenMessage(tool string, what []string) string {
	by := "moat"
	if tool != "" {
		by = "moat's " + tool
	}
	// A program committing in a loop meanwhile makes as many lines:
	// the first few are said, and how many more.
	const most = 8
	if len(what) > most {
		what = append(what[:most:most], fmt.Sprintf("%d more commits", len(what)-most))
	}
	return fmt.Sprintf("another program changed moat's rules while %s wrote them, and moat's write may have replaced that change (%s); 'moat status' shows moat's rules as they are now: make the change again if it is still wanted", by, strings.Join(what, "; "))
}

// OverwrittenMessage is overwrittenMessage for the iptables backend.
func OverwrittenMessage(tool string, what []string) string { return overwrittenMessage(tool, what) }

// checkedAfter moves the checked generation on by the commit just made:
// to the generation after it when it went from the checked one to the
// next, nothing else in between; else no generation is vouched for any
// more.
func (b *Backend) checkedAfter() {
	if !b.Checked.OK {
		return
	}
	if b.committed && b.genPre == b.Checked.Gen && b.genPost == b.genPre+1 {
		b.Checked.Gen = b.genPost
		return
	}
	b.Checked = CheckedGen{}
}

// stageGen is the generation a plan may stage at: 0 (none) when it is
// unknown.
func stageGen(gen uint32, err error) uint32 {
	if err != nil {
		return 0
	}
	return gen
}

// generation reads the ruleset generation when this backend writes over
// netlink (the kernel of the calling thread).
func (b *Backend) generation() (uint32, error) {
	if !b.Netlink {
		return 0, errors.New("not on netlink")
	}
	return Generation()
}

// track records a commit made at generation pre (or unknown, preErr).
func (b *Backend) track(pre uint32, preErr error) {
	b.committed, b.committedWhole, b.wrote = false, false, nil
	if preErr != nil {
		return
	}
	post, err := Generation()
	if err != nil {
		return
	}
	b.committed, b.genPre, b.genPost = true, pre, post
}

// sendBatch commits a netlink patch at the generation it was planned for.
func (b *Backend) sendBatch(p *Plan) error {
	if b.beforeSend != nil {
		b.beforeSend()
	}
	if err := p.nl.send(p.gen); err != nil {
		return err
	}
	b.track(p.gen, nil)
	b.wrote = p.wrote
	return nil
}

// saveSets records in the element store what the plan loaded into policy
// sets. A failure leaves an older entry, whose entries hash is not the
// kernel's record: the next change of that set refills it whole.
func (b *Backend) saveSets(p *Plan) {
	if b.Elements == nil {
		return
	}
	for _, name := range sortedKeys(p.save) {
		_ = b.Elements.Save(name, p.save[name])
	}
	if p.Full {
		_ = b.Elements.Keep(sortedKeys(p.save))
		return
	}
	// A set this plan did not touch holds what the kernel's record names
	// (its entries did not change): its entry is written if it has none
	// for them (moat upgraded, the entry lost), or the next fingerprint
	// would read the set back from the kernel, and the next change of it
	// refill it whole.
	if p.want == nil {
		return
	}
	for _, s := range p.want.sets {
		if _, saved := p.save[s.set.Name]; s.kind != policySet || saved {
			continue
		}
		if data, _, err := b.Elements.Head(s.set.Name); err != nil || data != s.data {
			ps := s.elems()
			_ = b.Elements.Save(s.set.Name, StoredSet{Data: s.data, Prefixes: ps, Ranges: prefixesHash(ps)})
		}
	}
	if p.dropped {
		// Sets the patch deleted: their entries go too.
		var keep []string
		for _, s := range p.want.sets {
			if s.kind == policySet {
				keep = append(keep, s.set.Name)
			}
		}
		_ = b.Elements.Keep(keep)
	}
}

// Active reports whether moat's table is loaded.
func (b *Backend) Active(ctx context.Context) (bool, error) {
	if b.NFT != nil {
		_, err := b.NFT.List(ctx, "chain")
		if isNotFound(err) {
			return false, nil
		}
		return err == nil, err
	}
	if b.Read != nil {
		return b.Read.TableExists()
	}
	out, err := b.Run(ctx, nil, "nft", "list", "tables", "inet")
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(line) == "table inet "+TableName {
			return true, nil
		}
	}
	return false, nil
}

// Remove deletes moat's table and nothing else (one transaction that
// works whether or not the table exists).
func (b *Backend) Remove(ctx context.Context) error {
	if b.NFT != nil {
		tx := b.NFT.NewTransaction()
		tx.Add(&knftables.Table{})
		tx.Delete(&knftables.Table{})
		return b.NFT.Run(ctx, tx)
	}
	script := "table inet " + TableName + " {}\ndelete table inet " + TableName + "\n"
	if _, err := b.Run(ctx, []byte(script), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("nftables: remove table inet %s: %w", TableName, err)
	}
	return nil
}

// Counters reads the kernel's counters of moat's rules, summed by origin
// ID. Set contents are not read (nft --terse), so large sets cost nothing.
func (b *Backend) Counters(ctx context.Context) (map[string]ruleset.Counter, error) {
	if b.Read != nil {
		return b.Read.Counters()
	}
	if b.Run == nil {
		return nil, errors.New("nftables: counters need the nft program")
	}
	out, err := b.Run(ctx, nil, "nft", "-j", "-t", "list", "table", "inet", TableName)
	if err != nil {
		return nil, fmt.Errorf("nftables: list table inet %s: %w", TableName, err)
	}
	return parseCounters(out)
}

// parseCounters reads `nft -j list table` output: each rule's comment tag
// and the packets and bytes of its counter expression.
func parseCounters(data []byte) (map[string]ruleset.Counter, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("nftables: parse counters: %w", err)
	}
	out := map[string]ruleset.Counter{}
	for _, obj := range doc.Nftables {
		raw, ok := obj["rule"]
		if !ok {
			continue
		}
		var rule struct {
			Comment string                       `json:"comment"`
			Expr    []map[string]json.RawMessage `json:"expr"`
		}
		if err := json.Unmarshal(raw, &rule); err != nil {
			return nil, fmt.Errorf("nftables: parse counters: %w", err)
		}
		id := ruleset.OriginID(rule.Comment)
		if id == "" {
			continue
		}
		for _, e := range rule.Expr {
			c, ok := e["counter"]
			if !ok {
				continue
			}
			var n ruleset.Counter
			if err := json.Unmarshal(c, &n); err != nil {
				return nil, fmt.Errorf("nftables: parse counter of %q: %w", id, err)
			}
			sum := out[id]
			sum.Packets += n.Packets
			sum.Bytes += n.Bytes
			out[id] = sum
		}
	}
	return out, nil
}

// Snapshot returns moat's table, or nil when there is none. Writing over
// netlink (Netlink), it is read over netlink without the ban sets'
// elements (see netlinkSnapshot; a rollback puts back the bans in force);
// otherwise, or when the table holds objects that read does not copy, it
// is the table as `nft list table` prints it (set elements and their
// timeouts included).
func (b *Backend) Snapshot(ctx context.Context) ([]byte, error) {
	if b.Netlink && b.NFT == nil {
		snap, err := netlinkSnapshot()
		if !errors.Is(err, errSnapOther) {
			if err != nil {
				return nil, fmt.Errorf("nftables: snapshot table inet %s: %w", TableName, err)
			}
			return snap, nil
		}
	}
	if b.Run == nil {
		return nil, errors.New("nftables: snapshots need the nft program")
	}
	out, err := b.Run(ctx, nil, "nft", "list", "table", "inet", TableName)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("nftables: snapshot table inet %s: %w", TableName, err)
	}
	return out, nil
}

// Restore makes moat's table exactly a snapshot, in one transaction
// (delete and recreate); an empty snapshot removes the table. A netlink
// snapshot's ban sets come back empty (the rollback puts back the bans in
// force).
func (b *Backend) Restore(ctx context.Context, snap []byte) error {
	if len(bytes.TrimSpace(snap)) == 0 {
		return b.Remove(ctx)
	}
	if bytes.HasPrefix(snap, []byte(netlinkSnapMagic)) {
		if _, err := restoreNetlink(snap, false); err != nil {
			return fmt.Errorf("nftables: restore table inet %s: %w", TableName, err)
		}
		return nil
	}
	if !bytes.HasPrefix(bytes.TrimSpace(snap), []byte("table inet "+TableName+" {")) {
		return fmt.Errorf("nftables: restore: not a snapshot of table inet %s", TableName)
	}
	if b.Run == nil {
		return errors.New("nftables: restore needs the nft program")
	}
	script := "table inet " + TableName + " {}\ndelete table inet " + TableName + "\n" + string(snap)
	if _, err := b.Run(ctx, []byte(script), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("nftables: restore table inet %s: %w", TableName, err)
	}
	return nil
}

// RestoreKeepingBans restores a snapshot read over netlink leaving the
// ban sets as they are, when the kernel's table and ban sets have the
// snapshot's definitions: the bans made and lifted since stay so, and the
// 200,000 bans of a busy server are neither read nor loaded again. kept
// is false (nothing done) when it cannot; Restore then restores it with
// the ban sets empty.
func (b *Backend) RestoreKeepingBans(ctx context.Context, snap []byte) (kept bool, err error) {
	if !bytes.HasPrefix(snap, []byte(netlinkSnapMagic)) || !b.Netlink || b.NFT != nil {
		return false, nil
	}
	kept, err = restoreNetlink(snap, true)
	if err != nil {
		return false, fmt.Errorf("nftables: restore table inet %s: %w", TableName, err)
	}
	return kept, nil
}

// Fingerprint is a hash of what moat's table holds that only a change of
// the ruleset alters: chains, rules, set definitions and policy set
// elements; not counters, handles, bans or rate-limit state. It is ""
// when the table is absent. Compare it with the fingerprint taken after
// moat's own apply to see changes made outside moat.
func (b *Backend) Fingerprint(ctx context.Context) (string, error) {
	if b.Run == nil {
		return "", errors.New("nftables: fingerprint needs the nft program")
	}
	out, err := b.Run(ctx, nil, "nft", "-j", "list", "table", "inet", TableName)
	if isNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("nftables: list table inet %s: %w", TableName, err)
	}
	return fingerprint(out)
}

// fingerprint hashes `nft -j list table` output without what changes by
// itself.
func fingerprint(data []byte) (string, error) {
	var doc struct {
		Nftables []map[string]map[string]any `json:"nftables"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return "", fmt.Errorf("nftables: fingerprint: %w", err)
	}
	h := sha256.New()
	for _, obj := range doc.Nftables {
		for typ, o := range obj {
			if typ == "metainfo" {
				continue
			}
			delete(o, "handle")
			if typ == "set" {
				flags, _ := json.Marshal(o["flags"])
				if strings.Contains(string(flags), "timeout") || strings.Contains(string(flags), "dynamic") {
					delete(o, "elem") // bans and rate-limit state
				}
			}
			if typ == "rule" {
				if exprs, ok := o["expr"].([]any); ok {
					for _, e := range exprs {
						if m, ok := e.(map[string]any); ok {
							delete(m, "counter")
						}
					}
				}
			}
			line, err := json.Marshal(map[string]any{typ: o})
			if err != nil {
				return "", err
			}
			h.Write(line)
			h.Write([]byte{'\n'})
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// setElement is one element of `nft -j list set` output.
type setElement struct {
	Val     string
	Timeout int64
	Expires int64
	Comment string
}

// parseSetJSON reads the elements of `nft -j list set` output: plain
// values, prefixes, and elements with timeouts and comments.
func parseSetJSON(data []byte) ([]setElement, error) {
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("nftables: parse set: %w", err)
	}
	var out []setElement
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, raw := range o.Set.Elem {
			el, err := parseElem(raw)
			if err != nil {
				return nil, err
			}
			out = append(out, el)
		}
	}
	return out, nil
}

func parseElem(raw json.RawMessage) (setElement, error) {
	var el struct {
		Elem struct {
			Val     json.RawMessage `json:"val"`
			Timeout int64           `json:"timeout"`
			Expires int64           `json:"expires"`
			Comment string          `json:"comment"`
		} `json:"elem"`
	}
	if json.Unmarshal(raw, &el) == nil && el.Elem.Val != nil {
		v, err := elemValue(el.Elem.Val)
		return setElement{Val: v, Timeout: el.Elem.Timeout, Expires: el.Elem.Expires, Comment: el.Elem.Comment}, err
	}
	v, err := elemValue(raw)
	return setElement{Val: v}, err
}

// elemValue reads a value: "192.0.2.1", 22, or {"prefix": {"addr": ..., "len": ...}}.
func elemValue(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String(), nil
	}
	var p struct {
		Prefix *struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
	}
	if json.Unmarshal(raw, &p) == nil && p.Prefix != nil {
		return fmt.Sprintf("%s/%d", p.Prefix.Addr, p.Prefix.Len), nil
	}
	return "", fmt.Errorf("nftables: unexpected set element %s", raw)
}

// sortedKeys returns a map's keys in order, so scripts are byte-stable.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
