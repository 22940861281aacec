package ipt

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// Runner runs a program with arguments and standard input and returns its
// standard output. It is the seam tests use to see exact commands.
type Runner func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)

// ExecRunner runs programs for real (never through a shell).
func ExecRunner(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return nil, fmt.Errorf("%s: %w: %s", name, err, msg)
	}
	return stdout.Bytes(), nil
}

// Backend programs moat's iptables chains and ipsets.
type Backend struct {
	Run Runner
}

// New returns the iptables backend.
func New() *Backend { return &Backend{Run: ExecRunner} }

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

// Available reports whether the iptables tools and ipset can be run here.
func (b *Backend) Available() error {
	for _, prog := range []string{"iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore", "ipset"} {
		if _, err := exec.LookPath(prog); err != nil {
			return fmt.Errorf("iptables backend: %s not found: %w", prog, err)
		}
	}
	if _, err := b.Run(context.Background(), nil, "iptables-save", "-t", "filter"); err != nil {
		return fmt.Errorf("iptables backend: %w", err)
	}
	return nil
}

// Script is what Apply loads into a host that has no moat chains yet.
func (b *Backend) Script(rs *ruleset.Ruleset) (string, error) {
	var s strings.Builder
	if sets := RenderSets(rs, nil); sets != "" {
		s.WriteString("# ipset restore\n")
		s.WriteString(sets)
	}
	for _, f := range families {
		fmt.Fprintf(&s, "# %s --noflush\n", f.restore)
		s.WriteString(Render(rs, f.fam, nil))
	}
	return s.String(), nil
}

// state is what Apply needs to know of the host first.
type state struct {
	jumps map[policy.Family]map[string]bool // built-in chain → jumps to moat's
	has   map[policy.Family]map[string]bool // moat chains present
	sets  map[string]bool                   // ipsets present
}

func (b *Backend) read(ctx context.Context) (*state, error) {
	st := &state{jumps: map[policy.Family]map[string]bool{}, has: map[policy.Family]map[string]bool{}, sets: map[string]bool{}}
	for _, f := range families {
		out, err := b.Run(ctx, nil, f.save, "-t", "filter")
		if err != nil {
			return nil, fmt.Errorf("read %s rules: %w", f.fam, err)
		}
		st.jumps[f.fam], st.has[f.fam] = parseSave(out)
	}
	out, err := b.Run(ctx, nil, "ipset", "list", "-n")
	if err != nil {
		return nil, fmt.Errorf("list ipsets: %w", err)
	}
	for _, name := range strings.Fields(string(out)) {
		if strings.HasPrefix(name, SetPrefix) || strings.HasPrefix(name, "moatnew-") {
			st.sets[name] = true
		}
	}
	return st, nil
}

// parseSave finds in iptables-save output which built-in chains jump to a
// moat chain, and which moat chains exist.
func parseSave(out []byte) (jumps, chains map[string]bool) {
	jumps, chains = map[string]bool{}, map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, ":MOAT-") {
			name, _, _ := strings.Cut(line[1:], " ")
			chains[name] = true
		}
		f := strings.Fields(line)
		if len(f) == 4 && f[0] == "-A" && f[2] == "-j" && f[3] == "MOAT-"+f[1] {
			jumps[f[1]] = true
		}
	}
	return jumps, chains
}

// Check loads the rules with --test (nothing changes). Sets cannot be
// tested without creating them, so rules using sets are checked against
// the sets only when they exist.
func (b *Backend) Check(ctx context.Context, rs *ruleset.Ruleset) error {
	st, err := b.read(ctx)
	if err != nil {
		return err
	}
	for _, f := range families {
		script := Render(rs, f.fam, st.jumps[f.fam])
		if len(rs.Sets) > 0 {
			continue
		}
		if _, err := b.Run(ctx, []byte(script), f.restore, "-w", "5", "--noflush", "--test"); err != nil {
			return fmt.Errorf("iptables check (%s): %w", f.fam, err)
		}
	}
	return nil
}

// Apply loads rs: sets first (swapped in whole), then one restore per
// family (atomic per family), then the sets the rules no longer use go.
func (b *Backend) Apply(ctx context.Context, rs *ruleset.Ruleset) error {
	st, err := b.read(ctx)
	if err != nil {
		return err
	}
	if sets := RenderSets(rs, st.sets); sets != "" {
		if _, err := b.Run(ctx, []byte(sets), "ipset", "restore"); err != nil {
			return fmt.Errorf("load ipsets: %w", err)
		}
	}
	for _, f := range families {
		script := Render(rs, f.fam, st.jumps[f.fam])
		if _, err := b.Run(ctx, []byte(script), f.restore, "-w", "5", "--noflush"); err != nil {
			return fmt.Errorf("load %s rules: %w", f.fam, err)
		}
	}
	want := map[string]bool{}
	for _, s := range rs.Sets {
		want[IPSetName(s.Name)] = true
	}
	var stale []string
	for name := range st.sets {
		if !want[name] {
			stale = append(stale, name)
		}
	}
	return b.destroySets(ctx, stale)
}

func (b *Backend) destroySets(ctx context.Context, names []string) error {
	if len(names) == 0 {
		return nil
	}
	var s strings.Builder
	for _, n := range names {
		fmt.Fprintf(&s, "destroy %s\n", n)
	}
	if _, err := b.Run(ctx, []byte(s.String()), "ipset", "restore"); err != nil {
		return fmt.Errorf("remove unused ipsets: %w", err)
	}
	return nil
}

// Active reports whether moat's chains are loaded.
func (b *Backend) Active(ctx context.Context) (bool, error) {
	out, err := b.Run(ctx, nil, "iptables-save", "-t", "filter")
	if err != nil {
		return false, fmt.Errorf("read iptables rules: %w", err)
	}
	_, chains := parseSave(out)
	return len(chains) > 0, nil
}

// Remove deletes moat's jumps, chains and ipsets, and nothing else.
func (b *Backend) Remove(ctx context.Context) error {
	st, err := b.read(ctx)
	if err != nil {
		return err
	}
	for _, f := range families {
		if len(st.has[f.fam]) == 0 && len(st.jumps[f.fam]) == 0 {
			continue
		}
		var s strings.Builder
		s.WriteString("*filter\n")
		for name := range st.has[f.fam] {
			fmt.Fprintf(&s, ":%s - [0:0]\n", name)
		}
		for builtin := range st.jumps[f.fam] {
			fmt.Fprintf(&s, "-D %s -j MOAT-%s\n", builtin, builtin)
		}
		for name := range st.has[f.fam] {
			fmt.Fprintf(&s, "-X %s\n", name)
		}
		s.WriteString("COMMIT\n")
		if _, err := b.Run(ctx, []byte(s.String()), f.restore, "-w", "5", "--noflush"); err != nil {
			return fmt.Errorf("remove %s rules: %w", f.fam, err)
		}
	}
	var names []string
	for n := range st.sets {
		names = append(names, n)
	}
	return b.destroySets(ctx, names)
}

// Counters reads the counters of moat's rules, summed by origin ID over
// both families.
func (b *Backend) Counters(ctx context.Context) (map[string]ruleset.Counter, error) {
	out := map[string]ruleset.Counter{}
	for _, f := range families {
		data, err := b.Run(ctx, nil, f.save, "-c", "-t", "filter")
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
		tag := commentOf(line)
		if tag == "" || strings.Contains(line, "-j LOG") {
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

// commentOf extracts the --comment argument of an iptables-save line.
func commentOf(line string) string {
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
