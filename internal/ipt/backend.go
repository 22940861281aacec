package ipt

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	gnft "github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/setstore"
)

// Runner runs a program with arguments and standard input and returns its
// standard output. It is the seam tests use to see exact commands.
type Runner = execrun.Runner

// ExecRunner runs programs for real (never through a shell), with input
// that cannot be cut short.
var ExecRunner = execrun.Exec

// Backend programs moat's iptables chains and ipsets.
type Backend struct {
	Run Runner
	// RunFrom, when set, runs the programs whose input is large (ipset
	// restore of the policy sets) with that input written straight into
	// the file they read, never whole in memory; nil: through Run.
	RunFrom execrun.Writer
	// Full makes Apply rewrite moat's chains even when their generation
	// says they hold the ruleset already (they were changed by hand).
	Full bool
	// Netlink lets Active answer without starting iptables-save where
	// the iptables tools are the nf_tables kind: moat's chains are then
	// chains of the nftables tables "ip filter" and "ip6 filter".
	Netlink bool
	// Checked, when OK, is the generation the command's drift check
	// vouched for: Apply changes nothing unless the ruleset is still
	// there (nft.ErrChangedSinceCheck), and moves it on by its own
	// commits.
	Checked nft.CheckedGen
	// Warn, when set, is told of changes of moat's chains that another
	// program committed while moat's iptables-restore ran, which the
	// restore may have written over (LastOverwritten); else they are
	// logged.
	Warn func(msg string)
	// The nf_tables commits watched from the last look at the
	// generation before a restore of Apply until Apply ends
	// (commitwatch.go in nft): the watch, the restores' PIDs, and what
	// the last Apply may have written over.
	watch      *nft.CommitWatch
	watchPIDs  []int
	watchMu    sync.Mutex
	overwrote  []string
	beforeLook func() // tests: before the last look ahead of a restore
	// IpsetNetlink reads ipsets (their names, headers and members) over
	// netlink instead of starting `ipset list` (New sets it; tests on a
	// fake Runner leave it off).
	IpsetNetlink bool
	// StateDir, when set, keeps moat's chains as last read, for the
	// next command while the nftables generation has not moved
	// (chainCacheFile).
	StateDir string
	// available: Available found every program once (a command asked
	// several times, each looking up five programs on the PATH).
	available bool
	// Elements keeps what moat loaded into each policy ipset, so that a
	// change of a set's networks is sent as adds and deletes (nil: a
	// changed set is loaded whole and swapped in).
	Elements setstore.Store
	// lastRead is the last read of moat's chains, at the nftables
	// generation it names (readChains).
	lastRead *state
	// track is what the last Apply did to the nftables ruleset
	// generation (LastApply).
	track commitTrack
	// KeyDir is the state directory that holds the key of the ipset
	// digests (digestKeyFile); without one they are taken with a fixed
	// key, and differ from those taken with it.
	KeyDir string
	// Log takes the backend's debug messages (why a rule change went
	// through iptables-restore rather than netlink); nil: slog's default.
	Log *slog.Logger
	// hasher hashes ipset members for the digests (digestKey).
	hasher *memberHasher
	// readHeads are the header lines of the sets this Backend last read
	// whole (the drift check's read), for the next Apply's fingerprint
	// of the sets it changes in place (afterApply.heads).
	readHeads map[string][]string
	// needLines: the read must give iptables-save's lines (a state
	// predicted without them does not serve).
	needLines bool
	// noRulesNetlink: Apply restores its rule changes (the retry after
	// a transaction whose answer was lost: writeRulesNetlink).
	noRulesNetlink bool
	// restoreNote is RestoreNote's.
	restoreNote string
}

// log is Log, or slog's default logger.
func (b *Backend) log() *slog.Logger {
	if b.Log != nil {
		return b.Log
	}
	return slog.Default()
}

// nlPrint says whether the fingerprint reads moat's chains over netlink
// (iptables-nft, ipsets over netlink) rather than from iptables-save.
func (b *Backend) nlPrint() bool { return b.IpsetNetlink && b.InNftables() }

// New returns the iptables backend.
func New() *Backend {
	return &Backend{Run: ExecRunner, RunFrom: execrun.ExecFrom, Netlink: true, IpsetNetlink: true}
}

// runFrom runs a program whose input write writes: with RunFrom, or
// written whole into memory for Run.
func (b *Backend) runFrom(ctx context.Context, write func(io.Writer) error, name string, args ...string) ([]byte, error) {
	if name == "ipset" {
		nft.WaitClosed() // runIpset
	}
	if b.RunFrom != nil {
		return b.RunFrom(ctx, write, name, args...)
	}
	return execrun.Buffered(b.Run)(ctx, write, name, args...)
}

// runIpset runs the ipset program (b.Run) once the sockets of this
// process's nf_tables transactions are closed (nft.WaitClosed). A rule
// that used a set holds a reference to it until the kernel frees the rule
// after a commit that removed it, an RCU grace period later; the release
// of the transaction's socket waits for that, and ipset refuses to
// destroy or rename a set still referenced ("in use by a kernel
// component"). nft.CloseLater releases those sockets off the command's
// path: whatever may destroy or rename a set waits for them here
// (mayFreeSets); a ban, a read or a member added does not wait (a
// long-running guard bans beside the closes of its other work).
func (b *Backend) runIpset(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	if mayFreeSets(stdin, args) {
		nft.WaitClosed()
	}
	return b.Run(ctx, stdin, "ipset", args...)
}

// mayFreeSets says whether ipset with args (and stdin, for restore) may
// destroy, rename or swap a set: a command of these among the arguments,
// or a line of the script that starts with one (ipset's short forms too).
// A swap is refused while a dump of either set is open (a dump cut short
// keeps it open until its socket is closed, which CloseLater does later).
// When in doubt, yes: a wait is only time.
func mayFreeSets(stdin []byte, args []string) bool {
	frees := func(cmd string) bool {
		switch cmd {
		case "destroy", "x", "rename", "e", "swap", "w", "-X", "-E", "-W", "--destroy", "--rename", "--swap":
			return true
		}
		return false
	}
	for _, a := range args {
		if frees(a) {
			return true
		}
	}
	for line := range bytes.Lines(stdin) {
		cmd, _, _ := bytes.Cut(bytes.TrimLeft(line, " \t"), []byte(" "))
		if frees(string(bytes.TrimRight(cmd, "\r\n\t"))) {
			return true
		}
	}
	return false
}

// Name is the backend's name.
func (b *Backend) Name() string { return "iptables" }

type family struct {
	fam           policy.Family
	save, restore string
}

var families = []family{
	{policy.FamilyV4, "iptables-save", "iptables-restore"},
	{policy.FamilyV6, "ip6tables-save", "ip6tables-restore"},
}

// Available reports whether the iptables tools and ipset can be run here
// (found on the PATH; permission and kernel show on first use).
func (b *Backend) Available() error {
	if b.available {
		return nil
	}
	for _, prog := range []string{"iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore", "ipset"} {
		if _, err := execrun.LookPath(prog); err != nil {
			return fmt.Errorf("iptables backend: %s not found: %w", prog, err)
		}
	}
	b.available = true
	return nil
}

// Script is what Apply loads into a host that has no moat chains yet.
func (b *Backend) Script(rs *ruleset.Ruleset) (string, error) {
	var s strings.Builder
	sets := RenderSets(rs, nil)
	// The early lists as the policy sets are written (filled under a
	// temporary name, renamed): drift compares their members.
	var early strings.Builder
	for _, l := range earlyLists(rs, SetNames(rs)) {
		tmp := tmpSetName(l.name)
		fmt.Fprintf(&early, "%s\n", earlyCreate(tmp))
		for _, m := range l.members {
			fmt.Fprintf(&early, "add %s %s\n", tmp, m)
		}
		fmt.Fprintf(&early, "rename %s %s\n", tmp, l.name)
	}
	if sets != "" || early.Len() > 0 {
		s.WriteString("# ipset restore\n")
		s.WriteString(sets)
		s.WriteString(early.String())
	}
	for _, f := range families {
		fmt.Fprintf(&s, "# %s --noflush\n", f.restore)
		s.WriteString(Render(rs, f.fam, nil))
	}
	return s.String(), nil
}

// state is what Apply needs to know of the host first.
type state struct {
	jumps map[policy.Family]map[string]Jump // built-in chain → its jump to moat's
	has   map[policy.Family]map[string]bool // moat chains present
	gen   map[policy.Family]string          // generation of moat's rules
	sets  map[string]bool                   // ipsets present
	lines map[policy.Family][]string        // moat's lines of iptables-save
	held  map[policy.Family]contents        // MOAT-GEN's record of each policy set's contents
	rules map[policy.Family]string          // MOAT-GEN's hash of the rules
	// raw is, per family, the rawSum of the raw section moat's own
	// restore last wrote, known only in a state predicted from moat's
	// restores (never from a read: "" or absent, unknown). MOAT-GEN's
	// record is in filter and covers both tables; a family whose raw
	// section is this one is rewritten in filter alone.
	raw map[policy.Family]string
	// sums are, per family, the chainSum of each of moat's chains (but
	// MOAT-GEN) as moat's own script last wrote it, known only in a
	// state predicted from moat's scripts (predictState) and kept with
	// it at its generation: a chain whose rules render as the same text
	// is not rewritten (onlyChanged). Absent: unknown, rewritten.
	sums map[policy.Family]map[string]string
	// readGen is the nftables ruleset generation both families' chains
	// were read at (the same before and after the reads), when known.
	readGen   uint32
	readGenOK bool
	// noLines: lines are not known (the state was predicted from moat's
	// own scripts: predictState); only the netlink fingerprint, which
	// reads the kernel's rules itself, takes it.
	noLines bool
}

// chainsOnly is a copy of st without the ipsets present, which the
// generation does not vouch for (ipsets come and go without a commit:
// an Apply destroys those no rule uses): a read taken again from it
// lists them anew. With them kept, a second Apply in one command (the
// undo of a killed one, then the change) destroyed a set the first had
// destroyed already, and failed.
func (st *state) chainsOnly() *state {
	c := st.clone()
	c.sets = map[string]bool{}
	return c
}

// clone copies st deep enough for Apply to change it.
func (st *state) clone() *state {
	c := &state{jumps: map[policy.Family]map[string]Jump{}, has: map[policy.Family]map[string]bool{},
		gen: maps.Clone(st.gen), sets: maps.Clone(st.sets), lines: map[policy.Family][]string{},
		held: map[policy.Family]contents{}, rules: maps.Clone(st.rules), readGen: st.readGen, readGenOK: st.readGenOK,
		noLines: st.noLines, raw: maps.Clone(st.raw), sums: map[policy.Family]map[string]string{}}
	for f, m := range st.sums {
		c.sums[f] = maps.Clone(m)
	}
	for f, m := range st.jumps {
		c.jumps[f] = maps.Clone(m)
	}
	for f, m := range st.has {
		c.has[f] = maps.Clone(m)
	}
	for f, l := range st.lines {
		c.lines[f] = slices.Clone(l)
	}
	for f, m := range st.held {
		c.held[f] = maps.Clone(m)
	}
	return c
}

// held is what MOAT-GEN says a policy set holds, when both families say
// the same ("" when unknown).
func (st *state) heldBy(name string) string {
	h4, h6 := st.held[policy.FamilyV4][name], st.held[policy.FamilyV6][name]
	if h4 != h6 {
		return ""
	}
	return h4
}

// read is the read for a change: chains iptables-save cannot print are
// removed first (checkOddChains).
func (b *Backend) read(ctx context.Context) (*state, error) {
	return b.readState(ctx, true, true)
}

// readRules is read without the ipsets present (st.sets stays empty):
// for what needs only the chains (the fingerprint, Split), one process
// less.
func (b *Backend) readRules(ctx context.Context) (*state, error) {
	return b.readState(ctx, false, false)
}

// readState reads moat's chains, with withSets the ipsets present too;
// with repair, chains iptables-save cannot print are removed first, else
// they fail the read (checkOddChains).
func (b *Backend) readState(ctx context.Context, withSets, repair bool) (*state, error) {
	st, err := b.readChainsOdd(ctx, repair)
	if err != nil {
		return nil, err
	}
	if !withSets {
		return st, nil
	}
	names, err := b.setNames(ctx)
	if err != nil {
		return nil, fmt.Errorf("list ipsets: %w", err)
	}
	for _, name := range names {
		if ownSet(name) {
			st.sets[name] = true
		}
	}
	return st, nil
}

// readChains reads moat's chains of both families with iptables-save,
// or takes them from the last read when the nftables ruleset generation
// says that nothing was committed since (iptables-nft: every change to
// a chain is an nf_tables transaction). A command read them twice
// before: for the drift check's fingerprint, then for its plan.
func (b *Backend) readChains(ctx context.Context) (*state, error) { return b.readChainsOdd(ctx, false) }

// readChainsOdd is readChains; with repair, chains iptables-save cannot
// print are removed first, else they fail the read (checkOddChains).
func (b *Backend) readChainsOdd(ctx context.Context, repair bool) (*state, error) {
	track := b.InNftables()
	var g0 uint32
	if track {
		g, err := nftGeneration()
		switch {
		case err != nil:
			track = false
		case b.lastRead != nil && b.lastRead.readGen == g && (!b.lastRead.noLines || b.nlPrint() && !b.needLines):
			return b.lastRead.chainsOnly(), nil
		default:
			if st := b.loadChainCache(g); st != nil && (!st.noLines || !b.needLines) {
				b.lastRead = st.chainsOnly()
				return st, nil
			}
			g0 = g
		}
	}
	// A cached read was taken at a generation without chains
	// iptables-save cannot print (checked below at that generation).
	if removed, err := b.checkOddChains(repair); err != nil {
		return nil, err
	} else if removed && track {
		if g0, err = nftGeneration(); err != nil {
			track = false
		}
	}
	st := &state{jumps: map[policy.Family]map[string]Jump{}, has: map[policy.Family]map[string]bool{},
		gen: map[policy.Family]string{}, sets: map[string]bool{}, lines: map[policy.Family][]string{},
		held: map[policy.Family]contents{}, rules: map[policy.Family]string{}}
	for _, f := range families {
		out, err := b.Run(ctx, nil, f.save) // every table: moat's chains are in filter and raw
		if err == nil {
			err = CheckSave(f.save, out)
		}
		if err != nil {
			return nil, fmt.Errorf("read %s rules: %w", f.fam, err)
		}
		sv := parseSave(out)
		st.jumps[f.fam], st.has[f.fam], st.gen[f.fam], st.lines[f.fam] = sv.jumps, sv.chains, sv.gen, sv.lines
		st.held[f.fam], st.rules[f.fam] = sv.held, sv.rules
	}
	b.lastRead = nil
	if track {
		// The same generation after both reads: nothing committed in
		// between, so the two families were read in one state.
		if g1, err := nftGeneration(); err == nil && g1 == g0 {
			st.readGen, st.readGenOK = g0, true
			b.lastRead = st.chainsOnly()
			b.saveChainCache(st)
		}
	}
	return st, nil
}

// setNames lists every ipset's name: over netlink (IpsetNetlink), else
// with `ipset list -n`.
func (b *Backend) setNames(ctx context.Context) ([]string, error) {
	if b.IpsetNetlink {
		if c, err := dialIpset(); err == nil {
			names, err := c.names(ctx)
			_ = c.Close() // read only
			if err == nil {
				return names, nil
			}
		}
	}
	out, err := b.runIpset(ctx, nil, "list", "-n")
	if err != nil {
		return nil, err
	}
	// One name a line: a name may hold a space.
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" {
			names = append(names, l)
		}
	}
	return names, nil
}

// ownSet says whether an ipset is moat's: its sets, sets being filled, and
// throwaway sets of a check.
func ownSet(name string) bool {
	rest, ok := strings.CutPrefix(name, SetPrefix)
	if !ok {
		if rest, ok = strings.CutPrefix(name, "moatnew-"); !ok {
			rest, ok = strings.CutPrefix(name, checkPrefix)
		}
	}
	// Only names moat could have made: a set made by hand with a space,
	// a quote or a newline in its name is not moat's, and would be read
	// as other words (or another command) by ipset restore.
	return ok && rest != "" && !strings.ContainsFunc(rest, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.')
	})
}

type saved struct {
	jumps      map[string]Jump
	chains     map[string]bool
	gen, rules string
	held       contents
	lines      []string // moat's chains, rules and jumps, without counters
}

// parseSave finds in iptables-save output which built-in chains jump to a
// moat chain, which moat chains exist, and the generation of moat's rules.
func parseSave(out []byte) saved {
	sv := saved{jumps: map[string]Jump{}, chains: map[string]bool{}, held: contents{}}
	pos := map[string]int{} // rules seen so far in each built-in chain
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	table := tableFilter // output without table lines is the filter table's
	for sc.Scan() {
		line := sc.Text()
		if t, ok := strings.CutPrefix(line, "*"); ok {
			table = t
			continue
		}
		// moat's chains are in raw and filter: a MOAT-* chain of another
		// table (mangle, nat) is someone else's, and a generation written
		// there is not moat's record.
		if !slices.Contains(tables, table) {
			continue
		}
		if strings.HasPrefix(line, ":MOAT-") {
			name, _, _ := strings.Cut(line[1:], " ")
			sv.chains[name] = true
			sv.lines = append(sv.lines, ":"+name)
		}
		if strings.HasPrefix(line, "-A MOAT-") || isJump(line) {
			sv.lines = append(sv.lines, line)
		}
		if chain, _, ok := strings.Cut(strings.TrimPrefix(line, "-A "), " "); ok && strings.HasPrefix(line, "-A ") {
			pos[table+" "+chain]++
		}
		if builtin, cond, ok := parseJump(line); ok && tableOf(builtin) == table {
			if j, seen := sv.jumps[builtin]; seen {
				j.Extra = append(j.Extra, cond)
				sv.jumps[builtin] = j
			} else {
				sv.jumps[builtin] = Jump{Cond: cond, Pos: pos[table+" "+builtin]}
			}
		}
		if strings.HasPrefix(line, "-A "+GenChain+" ") {
			readGenRule(line, &sv.gen, &sv.rules, sv.held)
		}
	}
	return sv
}

// readGenRule reads one MOAT-GEN rule's record (iptables-save's or moat's
// own form: the comment is the same) into gen, rules or held.
func readGenRule(line string, gen, rules *string, held contents) {
	c := CommentOf(line)
	if _, rest, ok := strings.Cut(c, genTag+" "); ok {
		*gen = rest
	}
	if _, rest, ok := strings.Cut(c, rulesTag+" "); ok {
		*rules = rest
	}
	if _, rest, ok := strings.Cut(c, setTag+" "); ok {
		if name, hash, ok := strings.Cut(rest, " "); ok {
			held[name] = hash
		}
	}
}

// checkPrefix starts the names of the throwaway ipsets a check creates.
const checkPrefix = "moatchk"

// Check loads the rules with iptables-restore --test, changing nothing
// moat uses: the sets the rules refer to are created empty under
// throwaway names first (the set match needs them in the kernel) and
// destroyed afterwards.
func (b *Backend) Check(ctx context.Context, rs *ruleset.Ruleset) (err error) {
	st, err := b.readState(ctx, true, false) // a check changes nothing

	if err != nil {
		return err
	}
	// What killed checks left goes first (checksets.go).
	if err := b.removeStaleCheckSets(ctx, st.sets); err != nil {
		return fmt.Errorf("iptables check: %w", err)
	}
	names := Names{}
	var create strings.Builder
	for i, s := range rs.Sets {
		name := checkSetName(strconv.Itoa(i))
		names[s.Name] = name
		if st.sets[name] {
			fmt.Fprintf(&create, "destroy %s\n", name)
		}
		fmt.Fprintf(&create, "%s\n", createLine(s, name))
	}
	// The early lists under throwaway names too (empty: the rules only
	// need them to exist).
	var early []string
	for _, l := range earlyLists(rs, names) {
		key := strings.TrimPrefix(l.name, SetPrefix)
		name := checkSetName(key)
		names[key] = name
		early = append(early, name)
		if st.sets[name] {
			fmt.Fprintf(&create, "destroy %s\n", name)
		}
		fmt.Fprintf(&create, "%s\n", earlyCreate(name))
	}
	if create.Len() > 0 {
		if _, err := b.runIpset(ctx, []byte(create.String()), "restore"); err != nil {
			// Refused or interrupted (Ctrl-C) half way: the sets it
			// made go now.
			return errors.Join(fmt.Errorf("iptables check: create throwaway ipsets: %w", err), b.removeOwnCheckSets(context.WithoutCancel(ctx)))
		}
		defer func() {
			del := early
			for _, s := range rs.Sets {
				del = append(del, names[s.Name])
			}
			err = errors.Join(err, b.destroySets(context.WithoutCancel(ctx), del))
		}()
	}
	c := contentsOf(rs, names)
	gen := generation(rs, names, c)
	for _, f := range families {
		script := render(rs, f.fam, st.jumps[f.fam], names, gen, c)
		if _, err := b.Run(ctx, []byte(script), f.restore, "-w", "5", "--noflush", "--test"); err != nil {
			return fmt.Errorf("iptables check (%s): %w", f.fam, err)
		}
	}
	return nil
}

// Apply loads rs. Sets that are not there yet are loaded whole first,
// then one restore per family switches the rules (atomic per family),
// then the sets no rule uses any more are destroyed. The two families
// cannot switch in one commit: if moat dies between them, their
// generations differ, Split reports it and the next Apply rewrites both.
// With iptables-nft's tools, the rules of both families switch in one
// transaction that moat writes over netlink instead (rulesnl.go), and
// the restores are the fallback.
//
// A policy set whose networks changed keeps its name: with a record in
// Elements of what it holds (the contents MOAT-GEN names), it gets the
// networks added and then those deleted (over ipset's netlink interface
// when no set is loaded whole, else in the ipset restore that loads
// them), so an address listed before and after is never out of it;
// without one it is filled whole under a temporary name (its members
// over netlink, ipsetload.go) and swapped in. Before either, the
// set's record leaves MOAT-GEN and its entry Elements, so a moat killed
// half way leaves a set that Split reports and the next apply loads
// whole. Only the MOAT-GEN chain is rewritten when the rules themselves
// did not change.
// Nothing changed: nothing is sent.
func (b *Backend) Apply(ctx context.Context, rs *ruleset.Ruleset) error {
	if !b.Checked.OK {
		return b.apply(ctx, rs)
	}
	if !b.Checked.Still(nftGeneration()) {
		// A change since the check (a rule put by hand into moat's
		// chains?) is in what Apply would read and overwrite.
		return fmt.Errorf("iptables apply: %w", nft.ErrChangedSinceCheck)
	}
	err := b.apply(ctx, rs)
	// The checked generation moves on by Apply's own commits, when
	// nothing else committed in between.
	before, commits, applied, known := b.LastApply()
	g, gerr := nftGeneration()
	if err == nil && b.Checked.OK && applied && known && before == b.Checked.Gen && gerr == nil && g == before+commits {
		b.Checked.Gen = g
	} else {
		b.Checked = nft.CheckedGen{}
	}
	return err
}

func (b *Backend) apply(ctx context.Context, rs *ruleset.Ruleset) error {
	b.overwrote = nil
	defer b.closeWatch()
	// The tools' PIDs, to tell their commits from others' (overwrite.go).
	ctx = execrun.WithStarted(ctx, b.restoreStarted)
	if b.InNftables() {
		// A table made dormant by hand filters nothing, and
		// iptables-restore leaves its flags as they are: woken first.
		if d, err := nft.DormantTables(nft.XtablesTables); err == nil && len(d) > 0 {
			if err := nft.WakeTables(d); err != nil {
				return fmt.Errorf("iptables apply: %w", err)
			}
		}
	}
	if !b.Checked.OK {
		// No drift check vouches for the read below (a first enable, a
		// repair): the commits are watched from before it.
		b.startWatch()
	}
	b.startTrack()
	if b.Checked.OK && (!b.track.known || b.track.before != b.Checked.Gen) {
		// Moved since the check (or since the one Apply made again).
		return fmt.Errorf("iptables apply: %w", nft.ErrChangedSinceCheck)
	}
	if b.track.known {
		b.watch.From(b.track.before)
	}
	// The headers the drift check read: this Apply's alone.
	heads := b.readHeads
	b.readHeads = nil
	st, err := b.read(ctx)
	if err != nil {
		return err
	}
	fresh := noChains(st)
	names := SetNames(rs)
	c := contents{}
	sets := map[string]*ruleset.Set{}
	for _, s := range rs.Sets {
		if !s.Bans && s.ScanWindow == 0 {
			n := names.of(s.Name)
			c[n], sets[n] = contentHash(s), s
		}
	}
	// Merged only for the sets that need their networks.
	nets := map[string][]netip.Prefix{}
	networks := func(n string) []netip.Prefix {
		if _, ok := nets[n]; !ok {
			nets[n] = merged(sets[n])
		}
		return nets[n]
	}
	rh := rulesHash(rs, names)
	gen := generationOf(rh, c)

	// A set under the name of one of moat's policy sets that is not of
	// their kind (made by hand: moat's rules can refer to it only once it
	// is, for the kernel swaps only sets of one type and family) would
	// fail every load: it is destroyed and loaded whole.
	for _, n := range sortedKeys(c) {
		if !st.sets[n] || st.heldBy(n) == c[n] {
			continue
		}
		if kind, ok := b.foreignSet(ctx, n, sets[n].Family); ok {
			if _, err := b.runIpset(ctx, nil, "destroy", n); err != nil {
				return fmt.Errorf("ipset %s is not one of moat's (%s) and cannot be destroyed (remove it, or what uses it, by hand): %w", n, kind, err)
			}
			delete(st.sets, n)
		}
	}
	var diffs []setDiff
	refill := map[string]bool{}
	var changing []string
	// The sums of the policy sets' networks' hashes, where the element
	// records give them (for the fingerprint afterwards).
	mh := b.digestKey()
	sums := map[string]memberSum{}
	for _, n := range sortedKeys(c) {
		held := st.heldBy(n)
		if !st.sets[n] {
			continue // new: loaded whole
		}
		if !b.Full && held == c[n] {
			if ok, ranges := b.vouched(n, held); ok {
				if sum, ok := mh.decodeSum(ranges); ok {
					sums[n] = sum
				}
				continue // holds it already
			}
		}
		changing = append(changing, n)
		old, ok := b.stored(n, held)
		if b.Full || !ok {
			refill[n] = true
			continue
		}
		add, del := diffPrefixes(old.Prefixes, networks(n))
		// The adds come before the deletes: a set that cannot hold both
		// (ipset: "Hash is full" half way through the restore) is loaded
		// whole under a temporary name, made big enough, and swapped in.
		if peak := len(old.Prefixes) + len(add); peak > minMaxelem && peak > b.maxelem(ctx, n) {
			refill[n] = true
			continue
		}
		if sum, ok := mh.decodeSum(old.Ranges); ok {
			for _, p := range add {
				sum.add(mh.prefix(p))
			}
			for _, p := range del {
				sum.sub(mh.prefix(p))
			}
			sums[n] = sum
		}
		if len(add) > 0 || len(del) > 0 {
			diffs = append(diffs, setDiff{name: n, add: add, del: del})
		}
	}
	// What each family's MOAT-GEN was made to hold by a restore of it
	// alone (the rules as they were), for the fingerprint afterwards;
	// whole: some restore rewrote the chains.
	orig := st.clone()
	genOnly := map[policy.Family]string{}
	whole := false
	// wrote: every script restored into each family, in order.
	wrote := map[policy.Family][]string{}
	if len(changing) > 0 {
		b.startWatch()
		g, gerr := nftGeneration()
		if b.Checked.OK && !b.Checked.At(g, gerr) {
			return fmt.Errorf("iptables apply: %w", nft.ErrChangedSinceCheck)
		}
		b.watch.From(g)
		script, err := b.markChanging(ctx, st, changing)
		if err != nil {
			return err
		}
		genOnly[families[0].fam] = script
		wrote[families[0].fam] = append(wrote[families[0].fam], script)
		// IPv4's MOAT-GEN now says "changing": it is rewritten below
		// even when the generation is the one it named before.
		st.gen[families[0].fam] = dirty
	}
	// The sets to load whole and the differences, written straight into
	// the file ipset restore reads (at 100,000 networks 4.7 MB of text,
	// which moat held whole, with its copies, in memory).
	// With netlink, the policy sets' members go that way once the
	// restore made their (temporary) sets (ipsetload.go).
	again := func(n string) bool { return refill[n] }
	destroyed := map[string]bool{}
	load := setsToLoad(rs, st.sets, names, again)
	if len(load) == 0 && len(diffs) > 0 && b.IpsetNetlink {
		// Differences alone: over netlink, else as text below.
		if err := sendDiffs(ctx, diffs); err == nil {
			diffs = nil
		}
	}
	var diff strings.Builder
	for _, d := range diffs {
		d.text(&diff)
	}
	// The early lists hold every set a drop of the new rules needs
	// before those are loaded (and what the old rules need still): in
	// the restore that makes the sets when their members are not filled
	// (and renamed) over netlink after it, else in one of their own.
	early := earlyLists(rs, names)
	rewrite := false
	for _, f := range families {
		rewrite = rewrite || b.Full || st.rules[f.fam] != rh || !b.jumpsComplete(rs, st, f.fam, names)
	}
	// Lists that hold their members already (the common case of a rule
	// change) need no ipset process before nor after.
	needAdd, needExact := false, false
	if rewrite || b.Full {
		needAdd, needExact = b.earlyNeeds(ctx, early)
	}
	var addEarly strings.Builder
	if needAdd {
		if err := b.replaceForeignEarly(ctx, st, early, wrote); err != nil {
			return err
		}
		writeEarlyAdd(&addEarly, early, st.sets)
	}
	if len(load) > 0 || diff.Len() > 0 {
		var conn *ipsetWriter
		var fills *[]fill
		if b.IpsetNetlink && slices.ContainsFunc(load, func(s *ruleset.Set) bool { return !s.Bans && s.ScanWindow == 0 }) {
			if conn, _ = dialIpsetWriter(); conn != nil {
				defer func() { _ = conn.Close() }() // the answers were read
				fills = new([]fill)
			}
		}
		write := func(w io.Writer) error {
			if err := writeSets(w, rs, st.sets, names, again, networks, destroyed, fills); err != nil {
				return err
			}
			if _, err := io.WriteString(w, diff.String()); err != nil {
				return err
			}
			if fills == nil {
				_, err := io.WriteString(w, addEarly.String())
				addEarly.Reset()
				return err
			}
			return nil
		}
		if _, err := b.runFrom(ctx, write, "ipset", "-exist", "restore"); err != nil {
			return fmt.Errorf("load ipsets: %w", err)
		}
		if fills != nil {
			for _, f := range *fills {
				if err := conn.fillSet(ctx, f); err != nil {
					return fmt.Errorf("load ipsets: %w", err)
				}
			}
		}
	}
	if addEarly.Len() > 0 {
		if _, err := b.runIpset(ctx, []byte(addEarly.String()), "-exist", "restore"); err != nil {
			return fmt.Errorf("load ipsets: early lists: %w", err)
		}
	}
	// keepRaw: the family's raw section is already the one it would be
	// rewritten to (moat's own restore wrote it, and the generation
	// says nothing committed since): its restore is the filter section
	// alone, one commit that carries the rules and their record, which
	// needs no "rewriting" mark (markRewriting).
	rawSums := map[policy.Family]string{}
	keepRaw := map[policy.Family]bool{}
	for _, f := range families {
		rawSums[f.fam] = rawSum(rs, f.fam, names)
		keepRaw[f.fam] = !b.Full && rawSums[f.fam] != "" && st.raw[f.fam] == rawSums[f.fam] &&
			st.has[f.fam][ChainName(ruleset.Prerouting)] && b.jumpsComplete(rs, st, f.fam, names)
	}
	rewrote := map[policy.Family]bool{}
	// restored: the rule scripts iptables-restore wrote, per family.
	restored := map[policy.Family][]string{}
	// Over netlink when it can be (rulesnl.go): both families, their
	// tables and MOAT-GEN's record in one transaction, no process.
	viaNetlink := false
	plan, ok := b.rulesNetlinkPlan(rs, st, gen, rh, c, names, keepRaw)
	if ok {
		switch b.writeRulesNetlink(st, plan) {
		case nlCommitted:
			viaNetlink = true
		case nlUnknown:
			// All of it or none of it was committed: the change again
			// from what the kernel holds now, through iptables-restore.
			// (No generation vouches for that read.)
			b.noRulesNetlink = true
			b.Checked = nft.CheckedGen{}
			defer func() { b.noRulesNetlink = false }()
			return b.apply(ctx, rs)
		case nlMoved:
			// Another program committed after the read: the restore
			// would empty moat's chains and write them again, with a
			// rule put there by hand in between. Nothing of the rules
			// committed yet: checked again first. Else (the ipsets'
			// "changing" mark is in): the restore goes on only if
			// moat's chains are still as read.
			if b.track.commits == 0 || b.chainsChanged(ctx, orig) {
				return fmt.Errorf("iptables apply: %w", nft.ErrChangedSinceCheck)
			}
		}
	}
	if viaNetlink {
		for _, f := range families {
			p, ok := plan[f.fam]
			if !ok {
				continue
			}
			wrote[f.fam] = append(wrote[f.fam], p.script)
			if p.whole {
				whole = true
				rewrote[f.fam] = true
			} else {
				genOnly[f.fam] = p.script
			}
		}
	}
	var mark map[policy.Family]string
	if !viaNetlink {
		mark = b.markRewriting(rs, st, gen, rh, names, changing, wrote, keepRaw)
		if err := b.lookBeforeRestore(ctx, orig); err != nil {
			return err
		}
	}
	// The records of the families whose rules are as they were, written
	// over netlink after the loop, both in one transaction (writeGen).
	recs := map[policy.Family][]string{}
	for _, f := range families {
		w, ts := b.familyWrite(rs, st, f.fam, gen, rh, names, keepRaw[f.fam])
		if viaNetlink || w == writeNone {
			continue
		}
		var script string
		if w == writeRecord {
			// The rules are as they were: only the record changes.
			script = "*filter\n" + genChainRules(gen, rh, c) + "COMMIT\n"
			genOnly[f.fam] = script
			if b.genOverNetlink(st, f.fam) {
				recs[f.fam] = genComments(gen, rh, c)
				wrote[f.fam] = append(wrote[f.fam], script)
				continue
			}
		} else {
			script = mark[f.fam] + renderTablesRH(rs, f.fam, st.jumps[f.fam], names, gen, rh, c, ts)
			whole = true
			rewrote[f.fam] = true
			restored[f.fam] = append(restored[f.fam], script)
		}
		wrote[f.fam] = append(wrote[f.fam], script)
		if err := b.restoreRules(ctx, f, script); err != nil {
			return fmt.Errorf("load %s rules: %w", f.fam, err)
		}
	}
	if len(recs) > 0 && b.writeGen(recs) != nil {
		for _, f := range families {
			if _, ok := recs[f.fam]; !ok {
				continue
			}
			if err := b.restoreRules(ctx, f, genOnly[f.fam]); err != nil {
				return fmt.Errorf("load %s rules: %w", f.fam, err)
			}
		}
	}
	b.endWatch()
	b.remember(c, networks, sums)
	b.track.after = b.afterApply(orig, genOnly, wrote, whole, c, networks, sums)
	if a := b.track.after; a != nil && a.st != nil {
		// The raw section each family rewritten whole now holds: the
		// one written, or the one kept (the same).
		if a.st.raw == nil {
			a.st.raw = map[policy.Family]string{}
		}
		for f := range rewrote {
			a.st.raw[f] = rawSums[f]
		}
		for f, scripts := range restored {
			forgetRestored(a.st, f, scripts)
		}
	}
	if b.track.after != nil {
		b.track.after.fresh = fresh && whole
		// The sets changed in place (or not at all) keep the header the
		// drift check read, but for their number of members.
		b.track.after.heads = map[string][]string{}
		for n, head := range heads {
			if _, policySet := c[n]; policySet && st.sets[n] && !refill[n] {
				b.track.after.heads[n] = head
			}
		}
	}
	used := map[string]bool{}
	for _, n := range names {
		used[n] = true
	}
	earlyUsed(used, early)
	var stale []string
	for name := range st.sets {
		if used[name] || strings.HasPrefix(name, checkPrefix) && checkSetLive(name) {
			continue
		}
		// A temporary set left by a moat killed while filling it is
		// destroyed and made again by the restore above, which renames
		// or swaps it away: destroying it again would fail.
		if destroyed[name] {
			continue
		}
		stale = append(stale, name)
	}
	var exact strings.Builder
	if len(stale) > 0 && !needExact && len(early) > 0 {
		// A set to destroy may be held by an early list.
		_, needExact = b.earlyNeeds(ctx, early)
	}
	if needExact {
		// Each early list then holds its members alone: the sets no
		// rule drops by leave it before they are destroyed, in the
		// same restore.
		writeEarlyExact(&exact, early, st.sets, needAdd)
		stale = slices.DeleteFunc(stale, func(n string) bool {
			return slices.ContainsFunc(early, func(l earlyList) bool { return n == tmpSetName(l.name) })
		})
	}
	return b.destroySetsAfter(ctx, exact.String(), stale)
}

// foreignSet says whether the ipset name is not of the kind moat makes
// its policy sets (hash:net of family fam), and what it is; false when
// it is, or cannot be read.
func (b *Backend) foreignSet(ctx context.Context, name string, fam policy.Family) (string, bool) {
	want := "inet"
	if fam == policy.FamilyV6 {
		want = "inet6"
	}
	typ, got := b.setKind(ctx, name)
	if typ == "" {
		return "", false
	}
	return strings.TrimSpace(typ + " " + got), typ != "hash:net" || got != want
}

// setKind is the type of the ipset name and its family ("inet",
// "inet6", "" for none), over netlink when it can be, else from `ipset
// list -t`; "" when it cannot be read.
func (b *Backend) setKind(ctx context.Context, name string) (typ, family string) {
	if b.IpsetNetlink {
		if c, err := dialIpset(); err == nil {
			typ, f, err := c.kind(ctx, name)
			_ = c.Close() // read only
			if err == nil && typ != "" {
				return typ, map[uint8]string{unix.NFPROTO_IPV4: "inet", unix.NFPROTO_IPV6: "inet6"}[f]
			}
		}
	}
	typ, header, err := b.ipsetHeader(ctx, name)
	if err != nil || typ == "" {
		return "", ""
	}
	if f := strings.Fields(header); len(f) >= 2 && f[0] == "family" {
		family = f[1]
	}
	return typ, family
}

// ipsetHeader reads the Type and Header lines of `ipset list -t name`
// (the header alone: no member is read).
func (b *Backend) ipsetHeader(ctx context.Context, name string) (typ, header string, err error) {
	out, err := b.runIpset(ctx, nil, "list", "-t", name)
	if err != nil {
		return "", "", err
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "Type: "); ok {
			typ = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(l, "Header: "); ok {
			header = strings.TrimSpace(v)
		}
	}
	return typ, header, nil
}

// maxelem is the most entries an ipset takes (its header), 0 if unknown.
func (b *Backend) maxelem(ctx context.Context, name string) int {
	if b.IpsetNetlink {
		if c, err := dialIpset(); err == nil {
			n := c.maxelem(ctx, name)
			_ = c.Close() // read only
			if n > 0 {
				return n
			}
		}
	}
	out, err := b.runIpset(ctx, nil, "list", "-t", name)
	if err != nil {
		return 0
	}
	_, rest, ok := strings.Cut(string(out), " maxelem ")
	if !ok {
		return 0
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return 0
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return n
}

// vouched says whether nothing can have changed a set since MOAT-GEN
// recorded its contents: with Elements, its entry there (removed before
// moat changes the set, written when the change is whole) is for them.
// ranges is the entry's Ranges field (the networks' sum: encodeSum).
func (b *Backend) vouched(name, held string) (ok bool, ranges string) {
	if b.Elements == nil {
		return true, ""
	}
	data, ranges, err := b.Elements.Head(name)
	return err == nil && data == held, ranges
}

// stored is the record of what a set holds, when it is the contents held.
func (b *Backend) stored(name, held string) (setstore.Set, bool) {
	if b.Elements == nil || held == "" {
		return setstore.Set{}, false
	}
	s, err := b.Elements.Load(name)
	return s, err == nil && s.Data == held
}

// markChanging takes the records of the sets about to change out of
// the IPv4 family's MOAT-GEN (generation "changing", which Split reports;
// a set counts as holding what MOAT-GEN names only when both families
// name the same, so one family is enough, and saves a process), and
// their entries out of Elements, before any of them is touched: ipset
// changes a set line by line, not in one transaction, so a moat killed
// half way leaves a set that is neither the old nor the new one; it is
// then reported, and the next apply loads it whole.
//
// It returns the script it restored into the IPv4 family.
func (b *Backend) markChanging(ctx context.Context, st *state, names []string) (string, error) {
	if b.Elements != nil {
		for _, n := range names {
			if err := b.Elements.Forget(n); err != nil {
				return "", fmt.Errorf("forget the record of ipset %s: %w", n, err)
			}
		}
	}
	f := families[0]
	keep := contents{}
	for n, h := range st.held[f.fam] {
		if !slices.Contains(names, n) {
			keep[n] = h
		}
	}
	script := "*filter\n" + genChainRules(dirty, st.rules[f.fam], keep) + "COMMIT\n"
	if b.genOverNetlink(st, f.fam) &&
		b.writeGen(map[policy.Family][]string{f.fam: genComments(dirty, st.rules[f.fam], keep)}) == nil {
		return script, nil
	}
	if err := b.restoreRules(ctx, f, script); err != nil {
		return "", fmt.Errorf("mark %s sets as changing: %w", f.fam, err)
	}
	return script, nil
}

// markRewriting marks MOAT-GEN "rewriting", without the rules' record,
// in each family whose rules are about to be rewritten whole (render)
// and that has a record a later apply could trust: the restore commits
// the raw table (the blocklists' and bans' drops) before filter, which
// holds MOAT-GEN, and a moat killed between the two left raw at the new
// rules under the old record: the repair (an apply of the old ruleset)
// trusted it, left raw as it was and failed to destroy the sets raw
// still used. Marked, Split reports the family and the next apply
// rewrites it whole. Over netlink (both families in one transaction)
// the mark is written here, into wrote; else it is returned, per
// family, for the start of that family's restore (its own section,
// committed first).
//
// A family in keepRaw is rewritten in filter alone (its raw section is
// the one it would write): one commit, not marked. A change written
// over netlink (rulesnl.go) is never marked either: its one transaction
// holds raw, filter and the record of both families, so no moat killed
// half way can leave raw new under an old record.
func (b *Backend) markRewriting(rs *ruleset.Ruleset, st *state, gen, rh string, names Names, changing []string, wrote map[policy.Family][]string, keepRaw map[policy.Family]bool) map[policy.Family]string {
	if !slices.ContainsFunc(rs.Chains, func(c *ruleset.Chain) bool { return tableOfHook(c.Hook) == tableRaw }) {
		return nil // one table: one commit
	}
	recs := map[policy.Family][]string{}
	scripts := map[policy.Family]string{}
	for _, f := range families {
		w, ts := b.familyWrite(rs, st, f.fam, gen, rh, names, keepRaw[f.fam])
		switch {
		case w != writeWhole:
			continue // left as it is, or only MOAT-GEN is written
		case !st.has[f.fam][GenChain] || st.gen[f.fam] == rewriting && st.rules[f.fam] == "":
			continue // no record to trust
		case !slices.Contains(ts, tableRaw):
			continue // filter alone: one commit
		}
		keep := contents{}
		for n, h := range st.held[f.fam] {
			if !slices.Contains(changing, n) {
				keep[n] = h
			}
		}
		recs[f.fam] = genComments(rewriting, "", keep)
		scripts[f.fam] = "*filter\n" + genChainRules(rewriting, "", keep) + "COMMIT\n"
		st.gen[f.fam], st.rules[f.fam], st.held[f.fam] = rewriting, "", keep
	}
	if len(recs) == 0 {
		return nil
	}
	nl := true
	for f := range recs {
		nl = nl && b.genOverNetlink(st, f)
	}
	if nl && b.writeGen(recs) == nil {
		for _, f := range families {
			if s, ok := scripts[f.fam]; ok {
				wrote[f.fam] = append(wrote[f.fam], s)
			}
		}
		return nil
	}
	return scripts
}

// genOverNetlink says whether MOAT-GEN's record in family fam is written
// over netlink (writeGen): iptables-nft, and the chain is there.
func (b *Backend) genOverNetlink(st *state, fam policy.Family) bool {
	return b.nlPrint() && st.has[fam][GenChain]
}

// remember records in Elements what each policy set now holds, with the
// sum of its networks' hashes (sums, where the change gave it; else
// hashed here, and added to sums). Those already recorded for these
// contents with a sum under this key are left as they are.
func (b *Backend) remember(c contents, networks func(string) []netip.Prefix, sums map[string]memberSum) {
	if b.Elements == nil {
		return
	}
	mh := b.digestKey()
	for _, n := range sortedKeys(c) {
		if data, ranges, err := b.Elements.Head(n); err == nil && data == c[n] {
			if _, ok := mh.decodeSum(ranges); ok {
				continue
			}
		}
		sum, ok := sums[n]
		if !ok {
			sum = mh.sumOf(networks(n))
			sums[n] = sum
		}
		_ = b.Elements.Save(n, setstore.Set{Data: c[n], Prefixes: networks(n), Ranges: mh.encodeSum(sum)})
	}
	_ = b.Elements.Keep(sortedKeys(c))
}

// diffPrefixes walks two sorted network lists: what to add to old and to
// delete from it to get new.
func diffPrefixes(old, new []netip.Prefix) (add, del []netip.Prefix) {
	i, j := 0, 0
	for i < len(old) || j < len(new) {
		switch {
		case j == len(new) || i < len(old) && comparePrefix(old[i], new[j]) < 0:
			del = append(del, old[i])
			i++
		case i == len(old) || comparePrefix(old[i], new[j]) > 0:
			add = append(add, new[j])
			j++
		default:
			i++
			j++
		}
	}
	return add, del
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// familyWrite is what Apply writes into family fam: nothing
// (writeNone: its record is the new generation's and its jumps are
// there), MOAT-GEN's record alone (writeRecord: the rules are as they
// were), or its rules whole (writeWhole) in the tables ts, filter alone
// where keepRaw holds raw as it is. Apply's restores and the netlink
// transaction (rulesNetlinkPlan) both follow it.
func (b *Backend) familyWrite(rs *ruleset.Ruleset, st *state, fam policy.Family, gen, rh string, names Names, keepRaw bool) (familyWriteKind, []string) {
	complete := b.jumpsComplete(rs, st, fam, names)
	switch {
	case !b.Full && st.gen[fam] == gen && complete:
		return writeNone, nil
	case !b.Full && st.rules[fam] == rh && complete:
		return writeRecord, nil
	case keepRaw:
		return writeWhole, []string{tableFilter}
	}
	return writeWhole, tables
}

// familyWriteKind is familyWrite's answer.
type familyWriteKind int

const (
	writeNone familyWriteKind = iota
	writeRecord
	writeWhole
)

// jumpsComplete says whether every chain of rs has its jump.
func (b *Backend) jumpsComplete(rs *ruleset.Ruleset, st *state, fam policy.Family, names Names) bool {
	for _, c := range rs.Chains {
		cond, _ := jumpCond(rs, c, fam, names)
		if j, ok := st.jumps[fam][builtinChain[c.Hook]]; !ok || j.Cond != cond || len(j.Extra) > 0 {
			return false
		}
	}
	return true
}

// Split describes a difference between the IPv4 and IPv6 rules' generations
// (an apply was cut between the two families); "" when there is none.
// The next Apply repairs it.
func (b *Backend) Split(ctx context.Context) (string, error) {
	st, err := b.readRules(ctx)
	if err != nil {
		return "", err
	}
	return splitOf(st), nil
}

func splitOf(st *state) string {
	g4, g6 := st.gen[policy.FamilyV4], st.gen[policy.FamilyV6]
	if g4 == dirty || g6 == dirty {
		return "moat was changing its ipsets when it stopped: some may hold part of a change ('moat reload' loads them whole)"
	}
	if g4 == rewriting || g6 == rewriting {
		return "moat was rewriting its rules when it stopped: a family may hold part of the change ('moat reload' rewrites them)"
	}
	has4, has6 := len(st.has[policy.FamilyV4]) > 0, len(st.has[policy.FamilyV6]) > 0
	if g4 == g6 && has4 == has6 {
		return ""
	}
	show := func(has bool, g string) string {
		switch {
		case !has:
			return "absent"
		case g == "":
			return "of unknown generation"
		}
		return "generation " + g
	}
	return fmt.Sprintf("moat's IPv4 rules are %s, its IPv6 rules %s: an apply was interrupted between the two families ('moat reload' repairs it)",
		show(has4, g4), show(has6, g6))
}

// Fingerprint is a hash of moat's chains, rules and jumps in both
// families and of the sets they use (name, type, size), without counters
// or bans; "" when moat has nothing loaded. Compare it with the
// fingerprint taken after moat's own apply to see changes made outside.
func (b *Backend) Fingerprint(ctx context.Context) (string, error) {
	fp, _, err := b.FingerprintSets(ctx)
	return fp, err
}

// FingerprintSets is Fingerprint, also saying whether it covers sets
// other than the bans' and the login exemptions' (sets: whose headers an
// ipset command may change without touching any chain).
func (b *Backend) FingerprintSets(ctx context.Context) (fp string, sets bool, err error) {
	k, err := b.FingerprintKernel(ctx)
	return k.Fingerprint, k.Sets, err
}

// KernelPrint is the fingerprint of moat's chains and sets (Fingerprint).
type KernelPrint struct {
	Fingerprint string
	// Sets: it covers sets other than the bans' and the login
	// exemptions', which change without moving the nftables generation.
	Sets bool
	// Protected is the hash of the protected sets' listings alone
	// (ProtectedFingerprint), read with the fingerprint, when they are
	// the only such sets (no policy ipset): "" otherwise. With the
	// chains vouched for by an unchanged generation, it vouches for the
	// rest.
	Protected string
}

// protectedSets are the ipsets of the clients of logged-in sessions and
// the allowlist at the apply, which every ruleset has, and the early
// lists (which hold the ban sets but for a policy whose allowlist holds
// a whole family), in the order of their names: the sets an unchanged
// generation cannot vouch for in a policy without policy ipsets.
func protectedSets() []string {
	return []string{IPSetName(earlyKey4), IPSetName(earlyKey6), IPSetName(ruleset.ProtectSet4), IPSetName(ruleset.ProtectSet6)}
}

// FingerprintKernel is Fingerprint with what it covers.
func (b *Backend) FingerprintKernel(ctx context.Context) (KernelPrint, error) {
	after := b.takeAfter()
	if after != nil && after.st != nil {
		st := after.st
		// The chains as moat's restores made them, at the generation
		// now: the next read (this command's, or the next command's
		// check and plan) need not run iptables-save.
		st.readGen, st.readGenOK = after.gen, true
		b.lastRead = st.chainsOnly()
		b.saveChainCache(st)
	}
	if b.nlPrint() {
		k, err := b.fingerprintNetlink(ctx, after)
		if err == nil {
			return k, nil
		}
		// An answer it cannot read: iptables-save.
	}
	if after != nil && after.st != nil && !after.st.noLines {
		return b.fingerprintText(ctx, after.st, after)
	}
	// A state predicted from moat's scripts has no lines: read anew.
	b.needLines = true
	st, err := b.readRules(ctx)
	b.needLines = false
	if err != nil {
		return KernelPrint{}, err
	}
	return b.fingerprintText(ctx, st, after)
}

// fingerprintNetlink is the fingerprint of moat's chains read over
// netlink (hashChainsNetlink) and of the sets their rules use.
func (b *Backend) fingerprintNetlink(ctx context.Context, after *afterApply) (KernelPrint, error) {
	h := sha256.New()
	if err := hashDormant(h); err != nil {
		return KernelPrint{}, err
	}
	h.Write([]byte("# moat's chains over netlink\n"))
	rd, err := hashChains(ctx, h)
	if err != nil {
		return KernelPrint{}, err
	}
	if !rd.any {
		return KernelPrint{}, nil
	}
	ic, err := dialIpset()
	if err != nil {
		return KernelPrint{}, err
	}
	defer func() { _ = ic.Close() }() // read only
	used := map[string]bool{}
	// A set a rule refers to cannot be destroyed, nor renamed.
	names, err := ic.setNamesByIndex(ctx, slices.Sorted(maps.Keys(rd.sets)))
	if err != nil {
		return KernelPrint{}, err
	}
	for _, name := range names {
		used[name] = true
	}
	sr := b.setReader()
	sr.loaded = after
	return sr.print(ctx, h, used), nil
}

// hashDormant writes the tables of iptables-nft made dormant, if any
// (iptables-save does not show that a table's rules filter nothing);
// only when one is, so that other fingerprints stay as they were.
func hashDormant(h io.Writer) error {
	d, err := nft.DormantTables(nft.XtablesTables)
	if err != nil {
		return err
	}
	if len(d) > 0 {
		fmt.Fprintf(h, "# dormant %v\n", d)
	}
	return nil
}

// fingerprintText is the fingerprint of moat's chains as iptables-save
// printed them (st.lines) and of the sets their rules use.
func (b *Backend) fingerprintText(ctx context.Context, st *state, after *afterApply) (KernelPrint, error) {
	if len(st.has[policy.FamilyV4]) == 0 && len(st.has[policy.FamilyV6]) == 0 {
		return KernelPrint{}, nil
	}
	h := sha256.New()
	if b.InNftables() {
		if err := hashDormant(h); err != nil {
			return KernelPrint{}, err
		}
		// Rules iptables-save does not show whole: only when there are
		// some, so that other fingerprints stay as they were.
		if hidden, err := HiddenRules(); err != nil {
			return KernelPrint{}, err
		} else if len(hidden) > 0 {
			fmt.Fprintf(h, "# hidden %q\n", hidden)
		}
	}
	used := map[string]bool{}
	for _, f := range families {
		fmt.Fprintf(h, "# %s\n", f.fam)
		for _, l := range st.lines[f.fam] {
			fmt.Fprintln(h, l)
			// Every set of the line: the ban rule matches the protected
			// set after the ban set.
			for rest, ok := l, true; ok; {
				if _, rest, ok = strings.Cut(rest, "--match-set "); ok {
					name, _, _ := strings.Cut(rest, " ")
					used[name] = true
				}
			}
		}
	}
	sr := b.setReader()
	sr.loaded = after
	return sr.print(ctx, h, used), nil
}

// print ends a fingerprint h of moat's chains with the digests of the
// sets they use (but the bans' and the login exemptions').
func (sr *setReader) print(ctx context.Context, h hash.Hash, used map[string]bool) KernelPrint {
	var k KernelPrint
	sr.earlyKeep = used
	sums := map[string][]byte{}
	policySets := false
	sr.prefetch(ctx, used)
	for _, name := range sortedKeys(used) {
		if name == IPSetName(ruleset.BanSet4) || name == IPSetName(ruleset.BanSet6) ||
			name == IPSetName(ruleset.LoginSet4) || name == IPSetName(ruleset.LoginSet6) {
			continue
		}
		k.Sets = true
		sum := sr.digest(ctx, name)
		h.Write(sum)
		if slices.Contains(protectedSets(), name) {
			sums[name] = sum
		} else {
			policySets = true
		}
	}
	k.Fingerprint = hex.EncodeToString(h.Sum(nil))
	if k.Sets && !policySets {
		// Each of protectedSets, as ProtectedFingerprint reads them (an
		// early list no rule uses too: missing, or not).
		ph := sha256.New()
		for _, name := range protectedSets() {
			sum, ok := sums[name]
			if !ok {
				sum = sr.digest(ctx, name)
			}
			ph.Write(sum)
		}
		k.Protected = hex.EncodeToString(ph.Sum(nil))
	}
	return k
}

// ProtectedFingerprint is KernelPrint.Protected read anew: the protected
// sets' listings alone (two ipset processes, no iptables-save).
func (b *Backend) ProtectedFingerprint(ctx context.Context) string {
	ph := sha256.New()
	sr := b.setReader()
	// The sets a ruleset with no policy set uses (print: an early list
	// is hashed by the members the rules use).
	sr.earlyKeep = map[string]bool{}
	for _, n := range []string{ruleset.BanSet4, ruleset.BanSet6, ruleset.ProtectSet4, ruleset.ProtectSet6, ruleset.LoginSet4, ruleset.LoginSet6, earlyKey4, earlyKey6} {
		sr.earlyKeep[IPSetName(n)] = true
	}
	for _, name := range protectedSets() {
		ph.Write(sr.digest(ctx, name))
	}
	return hex.EncodeToString(ph.Sum(nil))
}

// setReader reads the sets of one fingerprint: over netlink
// (IpsetNetlink), else, and for a set netlink cannot read, with `ipset
// list`.
type setReader struct {
	b  *Backend
	mh *memberHasher
	// loaded: the policy sets hold what the last Apply loaded into
	// them (their headers are read, not their members).
	loaded *afterApply
	// earlyKeep: the sets whose membership of an early list counts
	// (earlyDigest).
	earlyKeep map[string]bool
	// read: the sets prefetch dumped whole, for digest to take.
	read map[string]setRead
}

// setRead is one set's readSetSum.
type setRead struct {
	head    []string
	sum     memberSum
	missing bool
	err     error
}

// prefetch dumps the sets of used that digest would read whole one
// after the other (over netlink: not an early list, not a set this
// command loaded, not a ban or login set), when there are two or more,
// each on a goroutine of its own: the kernel's dump and its sum take
// most of a drift check at 100,000 networks (the policy's IPv4 and IPv6
// sets, about 15 ms each), and the two run on two CPUs. The same reads
// as one after the other: each socket is opened here, on the calling
// thread, so that it reads that thread's network namespace whatever
// thread reads it; each goroutine hashes with a memberHasher of its own.
// As many dumps at once as there are processors, two at least
// (eachLimited). digest takes each result once (a second digest of a
// name reads anew).
func (sr *setReader) prefetch(ctx context.Context, used map[string]bool) {
	if sr.mh == nil {
		return
	}
	var names []string
	for _, name := range sortedKeys(used) {
		if name == IPSetName(ruleset.BanSet4) || name == IPSetName(ruleset.BanSet6) ||
			name == IPSetName(ruleset.LoginSet4) || name == IPSetName(ruleset.LoginSet6) ||
			isEarlyList(name) || sr.loaded != nil && sr.loaded.sets[name] {
			continue
		}
		names = append(names, name)
	}
	if len(names) < 2 {
		return
	}
	reads := make([]setRead, len(names))
	n := eachLimited(len(names), max(2, runtime.GOMAXPROCS(0)), func(i int) func() {
		fd, err := dialIpsetFD()
		if err != nil {
			return nil // digest reads the rest itself
		}
		return func() {
			r := &reads[i]
			r.head, r.sum, r.missing, r.err = readSetSumOn(ctx, fd, sr.mh.clone(), names[i], 0)
		}
	})
	sr.read = make(map[string]setRead, n)
	for i := range n {
		sr.read[names[i]] = reads[i]
	}
}

// eachLimited calls start(0), start(1), ... start(n-1) on the calling
// goroutine (its thread: its network namespace), each once at most limit
// of the functions they returned are running, and runs each of those on
// a goroutine of its own; it returns once they all returned, with the
// number started. A start that returns nil stops it there. A policy may
// hold hundreds of sets (each run of rules that differ only in their
// address is one): dumped all at once, each held a socket, the kernel's
// answers queued in it and a 64 KiB buffer.
func eachLimited(n, limit int, start func(i int) func()) int {
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	i := 0
	for ; i < n; i++ {
		sem <- struct{}{}
		run := start(i)
		if run == nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			run()
		})
	}
	wg.Wait()
	return i
}

func (b *Backend) setReader() *setReader {
	sr := &setReader{b: b}
	if b.IpsetNetlink {
		sr.mh = b.digestKey()
	}
	return sr
}

// digest is the hash of one set as the kernel holds it (hashSet over
// netlink, hashSetListing of `ipset list`): the same for the same set
// read the same way, different when a member or the header differs.
func (sr *setReader) digest(ctx context.Context, name string) []byte {
	if isEarlyList(name) {
		return sr.earlyDigest(ctx, name)
	}
	if sr.mh != nil && sr.loaded != nil && sr.loaded.sets[name] {
		sum, ok := sr.loaded.sums[name]
		if !ok {
			sum = sr.mh.sumOf(sr.loaded.networks(name))
		}
		h := sha256.New()
		if head, ok := sr.loaded.heads[name]; ok {
			writeSetDigest(h, name, withElements(head, sum.n), sum, false)
			return h.Sum(nil)
		}
		if err := hashSetLoadedSum(ctx, h, sr.mh, name, sum); err == nil {
			return h.Sum(nil)
		}
	}
	if sr.mh != nil {
		r, ok := sr.read[name]
		if ok {
			delete(sr.read, name)
		} else {
			r.head, r.sum, r.missing, r.err = readSetSum(ctx, sr.mh, name, 0)
		}
		head, sum, missing, err := r.head, r.sum, r.missing, r.err
		if err == nil {
			if !missing {
				// The next Apply's fingerprint takes the header from here
				// (readHeads).
				if sr.b.readHeads == nil {
					sr.b.readHeads = map[string][]string{}
				}
				sr.b.readHeads[name] = head
			}
			h := sha256.New()
			writeSetDigest(h, name, head, sum, missing)
			return h.Sum(nil)
		}
	}
	h := sha256.New()
	out, err := sr.b.runIpset(ctx, nil, "list", name)
	hashSetListing(h, name, out, err)
	return h.Sum(nil)
}

// hashSetListing hashes what `ipset list NAME` said (err: the set is
// missing): the header without its size in memory, references, hash
// seed and hash size, and the members, not in the order listed.
func hashSetListing(h io.Writer, name string, out []byte, err error) {
	// The members too, not the header alone: an address added and
	// another deleted by hand leave the number of entries as it was.
	if err != nil {
		fmt.Fprintf(h, "set %s missing\n", name)
		return
	}
	// Members in order: ipset lists them in hash order, which the
	// random seed of each set decides (the same networks loaded again,
	// or swapped in, are listed in another order).
	head, members, _ := strings.Cut(string(out), "Members:\n")
	for _, l := range strings.Split(head, "\n") {
		if strings.HasPrefix(l, "Size in memory") || strings.HasPrefix(l, "References") {
			continue
		}
		fmt.Fprintln(h, regexpInitval.ReplaceAllString(l, ""))
	}
	lines := strings.Split(members, "\n")
	slices.Sort(lines)
	for _, l := range lines {
		fmt.Fprintln(h, l)
	}
}

// InNftables says whether moat's chains can only be in nftables (the
// iptables tools are the nf_tables kind here: no legacy x_tables table is
// loaded): then every change to them moves the nftables ruleset
// generation. A later legacy table makes it false again.
func (b *Backend) InNftables() bool {
	return b.Netlink && !legacyTables()
}

// The hash seed is random and the hash size grows with it: neither is
// part of what moat loaded.
var regexpInitval = regexp.MustCompile(` (initval 0x[0-9a-f]+|hashsize [0-9]+)`)

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (b *Backend) destroySets(ctx context.Context, names []string) error {
	return b.destroySetsAfter(ctx, "", names)
}

// destroySetsAfter destroys the ipsets names (the early lists first)
// in one ipset restore after the lines first.
func (b *Backend) destroySetsAfter(ctx context.Context, first string, names []string) error {
	names, err := b.destroyCheckSets(ctx, names)
	if err != nil {
		return err
	}
	if len(names) == 0 && first == "" {
		return nil
	}
	names = earlyFirst(names)
	var s strings.Builder
	s.WriteString(first)
	for _, n := range names {
		fmt.Fprintf(&s, "destroy %s\n", n)
	}
	if _, err := b.runIpset(ctx, []byte(s.String()), "restore"); err != nil {
		return fmt.Errorf("remove unused ipsets %q: %w", names, err)
	}
	return nil
}

// Active reports whether moat's chains are loaded.
func (b *Backend) Active(ctx context.Context) (bool, error) {
	if b.Netlink && !legacyTables() {
		if ok, err := chainsOverNetlink(); err == nil {
			return ok, nil
		}
	}
	if _, err := b.checkOddChains(false); err != nil {
		return false, err
	}
	for _, f := range families {
		out, err := b.Run(ctx, nil, f.save, "-t", "filter")
		if err == nil {
			err = CheckSave(f.save, out)
		}
		if err != nil {
			return false, fmt.Errorf("read %s rules: %w", f.fam, err)
		}
		if len(parseSave(out).chains) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// Remove deletes moat's jumps, chains and ipsets, and nothing else.
func (b *Backend) Remove(ctx context.Context) error {
	b.track = commitTrack{} // its commits are no Apply's
	st, err := b.read(ctx)
	if err != nil {
		return err
	}
	for _, f := range families {
		if len(st.has[f.fam]) == 0 && len(st.jumps[f.fam]) == 0 {
			continue
		}
		var s strings.Builder
		for _, t := range tables {
			var chains, jumps []string
			for _, name := range sortedKeys(st.has[f.fam]) {
				if tableOf(name) == t {
					chains = append(chains, name)
				}
			}
			for _, builtin := range sortedKeys(st.jumps[f.fam]) {
				if tableOf(builtin) == t {
					jumps = append(jumps, builtin)
				}
			}
			if len(chains) == 0 && len(jumps) == 0 {
				continue
			}
			fmt.Fprintf(&s, "*%s\n", t)
			for _, name := range chains {
				fmt.Fprintf(&s, ":%s - [0:0]\n", name)
			}
			for _, builtin := range jumps {
				j := st.jumps[f.fam][builtin]
				for _, cond := range append([]string{j.Cond}, j.Extra...) {
					fmt.Fprintf(&s, "-D %s %s\n", builtin, jumpSpec(builtin, cond))
				}
			}
			for _, name := range chains {
				fmt.Fprintf(&s, "-X %s\n", name)
			}
			s.WriteString("COMMIT\n")
		}
		if _, err := b.Run(ctx, []byte(s.String()), f.restore, "-w", "5", "--noflush"); err != nil {
			return fmt.Errorf("remove %s rules: %w", f.fam, err)
		}
	}
	// A check running meanwhile keeps its throwaway sets.
	return b.destroySets(ctx, slices.DeleteFunc(sortedKeys(st.sets), checkSetLive))
}

// Counters reads the counters of moat's rules, summed by origin ID over
// both families.
func (b *Backend) Counters(ctx context.Context) (map[string]ruleset.Counter, error) {
	out := map[string]ruleset.Counter{}
	for _, f := range families {
		data, err := b.Run(ctx, nil, f.save, "-c")
		if err != nil {
			return nil, fmt.Errorf("read %s counters: %w", f.fam, err)
		}
		if err := addCounters(out, data); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// addCounters reads "[packets:bytes] -A MOAT-... --comment TAG ..." lines.
func addCounters(out map[string]ruleset.Counter, data []byte) error {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "[") || !strings.Contains(line, " -A MOAT-") {
			continue
		}
		end := strings.IndexByte(line, ']')
		if end < 0 {
			continue
		}
		pk, by, ok := strings.Cut(line[1:end], ":")
		if !ok {
			continue
		}
		packets, err1 := strconv.ParseUint(pk, 10, 64)
		bytes, err2 := strconv.ParseUint(by, 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("parse iptables counters %q: %w", line, err)
		}
		tag := CommentOf(line)
		if tag == "" || strings.Contains(line, "-j LOG") || strings.HasPrefix(tag, genTag) {
			continue
		}
		id := ruleset.OriginID(tag)
		c := out[id]
		c.Packets += packets
		c.Bytes += bytes
		out[id] = c
	}
	return sc.Err()
}

// CommentOf extracts the --comment argument of an iptables-save line (drift
// reads its layouts through it too).
func CommentOf(line string) string {
	_, rest, ok := strings.Cut(line, "--comment ")
	if !ok {
		return ""
	}
	if strings.HasPrefix(rest, `"`) {
		end := strings.IndexByte(rest[1:], '"')
		if end < 0 {
			return ""
		}
		return rest[1 : end+1]
	}
	word, _, _ := strings.Cut(rest, " ")
	return word
}

// chainsOverNetlink says whether a MOAT- chain exists in the nftables
// tables iptables-nft uses (ip filter, ip6 filter).
func chainsOverNetlink() (bool, error) {
	c, done, err := nft.Conn()
	defer done()
	if err != nil {
		return false, err
	}
	chains, err := c.ListChains()
	if err != nil {
		return false, err
	}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != "filter" || !strings.HasPrefix(ch.Name, "MOAT-") {
			continue
		}
		if ch.Table.Family == gnft.TableFamilyIPv4 || ch.Table.Family == gnft.TableFamilyIPv6 {
			return true, nil
		}
	}
	return false, nil
}
