package ipt

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/rulesettest"
	"github.com/moat-fw/moat/internal/setstore"
)

var update = flag.Bool("update", false, "rewrite golden files")

// The same policy as the nftables golden test, so the two renderings can
// be read side by side.
func goldenRuleset(t *testing.T) *ruleset.Ruleset {
	return rulesettest.CompileFile(t, "../nft/testdata/golden.policy", "auth 113/tcp\n")
}

func TestGoldenScript(t *testing.T) {
	got, err := New().Script(goldenRuleset(t))
	if err != nil {
		t.Fatal(err)
	}
	const file = "testdata/golden.ipt"
	rulesettest.Golden(t, file, got, *update)
}

// TestGoldenPlainJumps: the layout before the jumps carried conditions
// (PlainJumps, what drift compares an upgraded kernel with) renders byte
// for byte what that moat loaded: testdata/golden-plainjumps.ipt is the
// golden file of the commit before, never rewritten. Its MOAT-GEN record
// then matches the earlier moat's too.
func TestGoldenPlainJumps(t *testing.T) {
	rs := goldenRuleset(t)
	rs.PlainJumps = true
	got, err := New().Script(rs)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/golden-plainjumps.ipt")
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("the earlier layout renders otherwise than the earlier moat:\n%s", got)
	}
}

// Each jump moat makes is read back as its own form (KnownJump); a jump
// by another condition (a hand change, another tool's) is read as a jump
// into moat's chain too, with its condition, not as moat's form: moat
// replaces it (MOAT-INPUT relies on its jump's condition).
func TestParseJump(t *testing.T) {
	for line, want := range map[string]string{
		"-A INPUT -j MOAT-INPUT": "",
		"-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT":     jumpNotEstablished,
		"-A PREROUTING ! -i lo -j MOAT-PREROUTING":                                jumpNotLoopback,
		"-A INPUT -m conntrack ! --ctstate NEW,RELATED,ESTABLISHED -j MOAT-INPUT": "-m conntrack ! --ctstate NEW,RELATED,ESTABLISHED",
		"-A INPUT -s 192.0.2.1/32 -j MOAT-INPUT":                                  "-s 192.0.2.1/32",
	} {
		if _, cond, ok := parseJump(line); !ok || cond != want || KnownJump(cond) != slices.Contains(jumpConds, want) {
			t.Errorf("%s: %q %v", line, cond, ok)
		}
	}
	for _, cond := range []string{"-s 192.0.2.1/32", "-m conntrack ! --ctstate NEW,RELATED,ESTABLISHED", "! -i lo "} {
		if KnownJump(cond) {
			t.Errorf("%q known as moat's", cond)
		}
	}
	for _, line := range []string{
		"-A INPUT -j MOAT-OUTPUT",
		"-A INPUT  -j MOAT-INPUT",
		"-A INPUT -j MOAT-INPUTX",
		"-A INPUT ! -i lo -j MOAT-INPUT -m comment --comment x",
		"-A MOAT-INPUT -j MOAT-MOAT-INPUT",
		"-I INPUT 1 -j MOAT-INPUT",
	} {
		if _, _, ok := parseJump(line); ok {
			t.Errorf("%s read as moat's jump", line)
		}
	}
}

// call is one program run seen through the Runner seam.
type call struct {
	args  string
	stdin string
}

type fakeHost struct {
	calls []call
	save  map[string]string
	sets  string
}

func (f *fakeHost) run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	f.calls = append(f.calls, call{name + " " + strings.Join(args, " "), string(stdin)})
	switch name {
	case "iptables-save", "ip6tables-save":
		return []byte(f.save[name]), nil
	case "ipset":
		if len(args) > 0 && args[0] == "list" {
			return []byte(f.sets), nil
		}
	}
	return nil, nil
}

// Apply runs one restore per family and no per-rule commands, adds the
// jumps only where missing, replaces a jump of an earlier form where it
// stands (INPUT's second rule here, after another tool's), and removes
// only moat's stale ipsets.
func TestApplyCommands(t *testing.T) {
	host := &fakeHost{
		save: map[string]string{
			"iptables-save":  "*filter\n:INPUT ACCEPT [0:0]\n:MOAT-INPUT - [0:0]\n-A INPUT -j DOCKER-USER\n-A INPUT -j MOAT-INPUT\n-A OUTPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-OUTPUT\nCOMMIT\n",
			"ip6tables-save": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n",
		},
		// moat-3fa9c1b2d4e5: a set named by an earlier moat (a hash of its contents).
		sets: "moat-3fa9c1b2d4e5\nmoat-input_old_9\nmoat-ban4\nmoat-ban6\ndocker-set\n",
	}
	b := &Backend{Run: host.run}
	if err := b.Apply(context.Background(), goldenRuleset(t)); err != nil {
		t.Fatal(err)
	}
	var cmds []string
	for _, c := range host.calls {
		cmds = append(cmds, c.args)
	}
	want := []string{
		"iptables-save ", "ip6tables-save ", "ipset list -n",
		"ipset -exist restore",
		"iptables-restore -w 5 --noflush", "ip6tables-restore -w 5 --noflush",
		"ipset restore",
	}
	if strings.Join(cmds, "\n") != strings.Join(want, "\n") {
		t.Fatalf("commands:\n%s\nwant:\n%s", strings.Join(cmds, "\n"), strings.Join(want, "\n"))
	}
	v4, v6 := host.calls[4].stdin, host.calls[5].stdin
	if !strings.Contains(v4, "\n-D INPUT -j MOAT-INPUT\n-I INPUT 2 -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n") ||
		strings.Contains(v4, "-I INPUT 1") || strings.Contains(v4, "DOCKER") || strings.Contains(v4, "OUTPUT 1") || !strings.Contains(v4, "-I FORWARD 1 -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-FORWARD\n") ||
		!strings.Contains(v4, "*raw\n:MOAT-PREROUTING - [0:0]\n") || !strings.Contains(v4, "-I PREROUTING 1 -m set --match-set moat-early4 src -j MOAT-PREROUTING\nCOMMIT\n*filter\n") {
		t.Errorf("IPv4 jumps wrong (INPUT has one of the earlier form, OUTPUT one of this form):\n%s", v4)
	}
	if !strings.Contains(v6, "-I INPUT 1 -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n") {
		t.Errorf("IPv6 jump missing:\n%s", v6)
	}
	if strings.Contains(v6, "203.0.113") || strings.Contains(v4, "2001:db8") {
		t.Errorf("a family got the other's addresses")
	}
	sets := host.calls[3].stdin
	names := SetNames(goldenRuleset(t))
	v4set := names["input_deny_src4_3"]
	if !strings.Contains(sets, "rename "+tmpSetName(v4set)+" "+v4set+"\n") || strings.Contains(sets, "create moat-ban") {
		t.Errorf("set load:\n%s", sets)
	}
	if !strings.Contains(v4, "--match-set "+v4set+" src") {
		t.Errorf("IPv4 rules do not use the new set %s", v4set)
	}
	if !strings.HasSuffix(sets, "create moat-early4 list:set size 64\nadd moat-early4 moat-ban4\ncreate moat-early6 list:set size 64\nadd moat-early6 moat-ban6\n") {
		t.Errorf("the early lists are not made with the sets:\n%s", sets)
	}
	if got := host.calls[6].stdin; got != "create moatnew-early4 list:set size 64\nadd moatnew-early4 moat-ban4\nswap moatnew-early4 moat-early4\ndestroy moatnew-early4\n"+
		"create moatnew-early6 list:set size 64\nadd moatnew-early6 moat-ban6\nswap moatnew-early6 moat-early6\ndestroy moatnew-early6\n"+
		"destroy moat-3fa9c1b2d4e5\ndestroy moat-input_old_9\n" {
		t.Errorf("stale sets: %q (docker-set must stay)", got)
	}
}

func TestCounters(t *testing.T) {
	out := map[string]ruleset.Counter{}
	data := []byte(`*filter
:INPUT ACCEPT [10:600]
[5:300] -A INPUT -j MOAT-INPUT
[3:180] -A MOAT-INPUT -p tcp -m tcp --dport 22 -m comment --comment "L6 admins" -j RETURN
[1:60] -A MOAT-INPUT -p tcp -m tcp --dport 8080 -m comment --comment L13 -j LOG --log-prefix "[moat L13 allow] "
[1:60] -A MOAT-INPUT -p tcp -m tcp --dport 8080 -m comment --comment L13 -j RETURN
[2:120] -A MOAT-INPUT -m comment --comment default:input -j DROP
COMMIT
`)
	if err := addCounters(out, data); err != nil {
		t.Fatal(err)
	}
	if out["L6"].Packets != 3 || out["L13"].Packets != 1 || out["default:input"].Bytes != 120 || len(out) != 3 {
		t.Fatalf("%+v", out)
	}
}

// A second apply of the same ruleset finds every set (by the hash of its
// contents) and both families' generation in place, and sends nothing; a
// host where only IPv4 has the new generation (an apply cut between the
// families) gets only IPv6 rewritten, and Split reports it before.
func TestApplyNothingChanged(t *testing.T) {
	rs := goldenRuleset(t)
	names := SetNames(rs)
	gen := Generation(rs, names)
	save := func(g string) map[string]string {
		return kernelSave(rs, g, rulesHash(rs, names), contentsOf(rs, names))
	}
	var sets []string
	for _, n := range names {
		sets = append(sets, n)
	}
	host := &fakeHost{save: save(gen), sets: strings.Join(sets, "\n")}
	b := &Backend{Run: host.run}
	if split, err := b.Split(context.Background()); split != "" || err != nil {
		t.Fatalf("split %q %v", split, err)
	}
	host.calls = nil
	if err := b.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	for _, c := range host.calls {
		if c.stdin != "" {
			t.Errorf("sent %s:\n%s", c.args, c.stdin)
		}
	}
	host.save["ip6tables-save"] = save("0123456789abcdef")["ip6tables-save"]
	split, err := b.Split(context.Background())
	if err != nil || !strings.Contains(split, "IPv6 rules generation 0123456789abcdef") {
		t.Errorf("split not reported: %q %v", split, err)
	}
	host.calls = nil
	if err := b.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	var sent []string
	for _, c := range host.calls {
		if c.stdin != "" {
			sent = append(sent, c.args)
		}
	}
	if strings.Join(sent, ",") != "ip6tables-restore -w 5 --noflush" {
		t.Errorf("repairing a split sent %v", sent)
	}
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }

// kernelSave is iptables-save output of moat's chains (empty) with rs's
// jumps, and its MOAT-GEN record.
func kernelSave(rs *ruleset.Ruleset, gen, rules string, c contents) map[string]string {
	return map[string]string{"iptables-save": kernelSaveOf(rs, policy.FamilyV4, gen, rules, c), "ip6tables-save": kernelSaveOf(rs, policy.FamilyV6, gen, rules, c)}
}

func kernelSaveOf(rs *ruleset.Ruleset, fam policy.Family, gen, rules string, c contents) string {
	jump := func(h ruleset.Hook) string {
		cond, _ := jumpCond(rs, rs.Chain(h), fam, SetNames(rs))
		return "-A " + builtinChain[h] + " " + jumpSpec(builtinChain[h], cond) + "\n"
	}
	return "*raw\n:PREROUTING ACCEPT [0:0]\n:MOAT-PREROUTING - [0:0]\n" + jump(ruleset.Prerouting) + "COMMIT\n" +
		"*filter\n:INPUT ACCEPT [0:0]\n:MOAT-INPUT - [0:0]\n:MOAT-OUTPUT - [0:0]\n:MOAT-FORWARD - [0:0]\n" +
		genChainRules(gen, rules, c) + jump(ruleset.Input) + jump(ruleset.Output) + jump(ruleset.Forward) + "COMMIT\n"
}

// A change of a policy set's networks keeps the set: with a record of
// what it holds, the networks added and then those deleted go in one
// ipset restore, after IPv4's MOAT-GEN stopped naming the set's
// contents and its record was forgotten, and only MOAT-GEN is rewritten
// after; killed half way, Split says so; without a record (forgotten:
// moat died half way), the set is filled whole and swapped in, even when
// MOAT-GEN names the wanted contents. Fails before:
// a refresh re-sent every network under a new set name and rewrote both
// families' rules.
func TestApplySetDiff(t *testing.T) {
	head := "default deny incoming\nallow 22/tcp\n"
	var deny strings.Builder
	for i := range 200 {
		fmt.Fprintf(&deny, "deny from 198.18.%d.%d\n", i/100, 2*(i%100))
	}
	before, after := compileText(t, head+deny.String()), compileText(t, head+strings.Replace(deny.String(), "deny from 198.18.0.0\n", "deny from 203.0.113.0/24\n", 1))
	names := SetNames(after)
	set := names["input_deny_src4_3"]
	store := setstore.Dir{Path: t.TempDir(), Prefix: "ipset."}
	var old []netip.Prefix
	for _, s := range before.Sets {
		if s.Name == "input_deny_src4_3" {
			old = s.Prefixes()
		}
	}
	cb := contentsOf(before, SetNames(before))
	if err := store.Save(set, setstore.Set{Data: cb[set], Prefixes: old}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"moat-protect4", "moat-protect6"} {
		if err := store.Save(n, setstore.Set{Data: cb[n]}); err != nil {
			t.Fatal(err)
		}
	}
	kernel := kernelSave(before, generation(before, SetNames(before), cb), rulesHash(before, SetNames(before)), cb)
	host := &fakeHost{save: maps.Clone(kernel), sets: set + "\nmoat-ban4\nmoat-ban6\nmoat-login4\nmoat-login6\nmoat-protect4\nmoat-protect6\n"}
	b := &Backend{Run: host.run, Elements: store}
	if err := b.Apply(context.Background(), after); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range host.calls {
		if c.stdin != "" {
			got = append(got, c.args+"\n"+c.stdin)
		}
	}
	ca := contentsOf(after, names)
	// The protected sets stay as they are: MOAT-GEN keeps naming them.
	keep := contents{"moat-protect4": cb["moat-protect4"], "moat-protect6": cb["moat-protect6"]}
	want := []string{
		"iptables-restore -w 5 --noflush\n*filter\n" + genChainRules(dirty, rulesHash(before, SetNames(before)), keep) + "COMMIT\n",
		"ipset -exist restore\nadd " + set + " 203.0.113.0/24\ndel " + set + " 198.18.0.0/32\n",
		"iptables-restore -w 5 --noflush\n*filter\n" + genChainRules(generation(after, names, ca), rulesHash(after, names), ca) + "COMMIT\n",
		"ip6tables-restore -w 5 --noflush\n*filter\n" + genChainRules(generation(after, names, ca), rulesHash(after, names), ca) + "COMMIT\n",
	}
	if strings.Join(got, "--\n") != strings.Join(want, "--\n") {
		t.Fatalf("sent:\n%s\nwant:\n%s", strings.Join(got, "--\n"), strings.Join(want, "--\n"))
	}
	if s, err := store.Load(set); err != nil || s.Data != ca[set] {
		t.Errorf("record after the change: %+v %v", s.Data, err)
	}

	// moat killed after the set changed, before MOAT-GEN did: the entry
	// is gone, MOAT-GEN names the old contents. The next apply (here: back
	// to those very contents) fills the set whole.
	_ = store.Forget(set)
	host.save = maps.Clone(kernel)
	host.calls = nil
	if err := b.Apply(context.Background(), before); err != nil {
		t.Fatal(err)
	}
	var sets string
	for _, c := range host.calls {
		if strings.HasPrefix(c.args, "ipset -exist restore") {
			sets = c.stdin
		}
	}
	if !strings.Contains(sets, "swap "+tmpSetName(set)+" "+set+"\n") || strings.Count(sets, "\nadd ") != 200 {
		t.Errorf("after an interrupted change the set is not refilled whole:\n%.600s", sets)
	}

	// Killed while the set changed: IPv4's MOAT-GEN says so, and Split too.
	dirtyKernel := kernelSave(before, dirty, rulesHash(before, SetNames(before)), contents{})
	host.save = map[string]string{"iptables-save": dirtyKernel["iptables-save"], "ip6tables-save": kernel["ip6tables-save"]}
	if split, err := b.Split(context.Background()); err != nil || !strings.Contains(split, "changing its ipsets") {
		t.Errorf("an interrupted set change is not reported: %q %v", split, err)
	}

	// A corrupted entry: refilled whole too.
	kernel = kernelSave(before, generation(before, SetNames(before), contentsOf(before, SetNames(before))), rulesHash(before, SetNames(before)), contentsOf(before, SetNames(before)))
	host.save = maps.Clone(kernel)
	data, _ := os.ReadFile(store.File(set))
	data[len(data)/2] ^= 0x40
	_ = os.WriteFile(store.File(set), data, 0o600)
	host.calls = nil
	if err := b.Apply(context.Background(), after); err != nil {
		t.Fatal(err)
	}
	sets = ""
	for _, c := range host.calls {
		if strings.HasPrefix(c.args, "ipset -exist restore") {
			sets = c.stdin
		}
	}
	if !strings.Contains(sets, "swap "+tmpSetName(set)+" "+set+"\n") {
		t.Errorf("a corrupted record was used:\n%.600s", sets)
	}
}

func compileText(t *testing.T, text string) *ruleset.Ruleset {
	t.Helper()
	p, err := policy.NewDocument("moat.conf", []byte(text)).Policy(policy.ParseServices([]byte("ssh 22/tcp\n")))
	if err != nil {
		t.Fatal(err)
	}
	return ruleset.Compile(p)
}

// A full apply fills moat's existing policy sets anew and swaps them in
// (an address added by hand goes), but never touches the ban sets.
func TestRenderSetsRefill(t *testing.T) {
	rs := goldenRuleset(t)
	names := SetNames(rs)
	existing := map[string]bool{}
	var policySet string
	for _, s := range rs.Sets {
		existing[names.of(s.Name)] = true
		if !s.Bans && s.ScanWindow == 0 && policySet == "" {
			policySet = names.of(s.Name)
		}
	}
	if policySet == "" {
		t.Fatal("the golden policy has no policy set")
	}
	if got := renderSets(rs, existing, names, func(string) bool { return false }); got != "" {
		t.Errorf("a partial apply re-sent existing sets:\n%s", got)
	}
	got := renderSets(rs, existing, names, func(string) bool { return true })
	tmp := tmpSetName(policySet)
	if !strings.Contains(got, "create "+tmp+" ") || !strings.Contains(got, "swap "+tmp+" "+policySet+"\ndestroy "+tmp+"\n") {
		t.Errorf("a full apply does not refill %s:\n%s", policySet, got)
	}
	if strings.Contains(got, "moat-ban4") || strings.Contains(got, "rename ") {
		t.Errorf("a full apply touches the ban sets or renames over an existing set:\n%s", got)
	}
}

// Banned asks ipset about one address; "is NOT in set" is a no, any other
// failure an error.
func TestBannedIpsetTest(t *testing.T) {
	var args []string
	answer := func(out string, err error) *Backend {
		return &Backend{Run: func(_ context.Context, _ []byte, name string, a ...string) ([]byte, error) {
			args = append([]string{name}, a...)
			return []byte(out), err
		}}
	}
	ok, err := answer("", nil).Banned(context.Background(), netip.MustParseAddr("::ffff:192.0.2.7"))
	if !ok || err != nil || strings.Join(args, " ") != "ipset test moat-ban4 192.0.2.7" {
		t.Errorf("banned: %v %v %q", ok, err, args)
	}
	ok, err = answer("", errors.New("exit status 1: 2001:db8::7 is NOT in set moat-ban6.")).Banned(context.Background(), netip.MustParseAddr("2001:db8::7"))
	if ok || err != nil || args[2] != "moat-ban6" {
		t.Errorf("not banned: %v %v %q", ok, err, args)
	}
	if _, err = answer("", errors.New("exit status 1: The set with the given name does not exist")).Banned(context.Background(), netip.MustParseAddr("192.0.2.7")); err == nil {
		t.Error("a missing set passed for not banned")
	}
}

// Protect adds to the login ipsets with the timeout; -exist refreshes it.
func TestProtectIpset(t *testing.T) {
	var stdin string
	b := &Backend{Run: func(_ context.Context, in []byte, _ string, _ ...string) ([]byte, error) {
		stdin = string(in)
		return nil, nil
	}}
	if err := b.Protect(context.Background(), []netip.Addr{netip.MustParseAddr("::ffff:192.0.2.7"), netip.MustParseAddr("2001:db8::9")}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if want := "add moat-login4 192.0.2.7 timeout 3600 -exist\nadd moat-login6 2001:db8::9 timeout 3600 -exist\n"; stdin != want {
		t.Errorf("protect:\n%s\nwant:\n%s", stdin, want)
	}
}

// A temporary set left by a moat killed while filling it is destroyed and
// made again by the next apply's ipset restore, and not destroyed a second
// time afterwards (ipset fails on a set that does not exist, and the
// apply after a kill failed so: TestKillDuringKernelApply).
func TestApplyLeftoverTemporarySet(t *testing.T) {
	host := &fakeHost{
		save: map[string]string{"iptables-save": "*filter\nCOMMIT\n", "ip6tables-save": "*filter\nCOMMIT\n"},
		sets: "moat-ban4\nmoat-ban6\nmoatnew-protect4\nmoatnew-gone\n",
	}
	if err := (&Backend{Run: host.run}).Apply(context.Background(), goldenRuleset(t)); err != nil {
		t.Fatal(err)
	}
	var restores []string
	for _, c := range host.calls {
		if c.args == "ipset restore" || c.args == "ipset -exist restore" {
			restores = append(restores, c.stdin)
		}
	}
	if len(restores) != 2 || !strings.Contains(restores[0], "destroy moatnew-protect4\ncreate moatnew-protect4 ") || !strings.HasSuffix(restores[1], "\ndestroy moatnew-gone\n") {
		t.Errorf("ipset restores:\n%s", strings.Join(restores, "--\n"))
	}
}

// hash:net holds no /0: networks merging into the whole space are its
// two halves.
func TestMergedWholeSpace(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"0.0.0.0/1 128.0.0.0/1", "0.0.0.0/1 128.0.0.0/1"},
		{"0.0.0.0/1 128.0.0.0/2 192.0.0.0/2", "0.0.0.0/1 128.0.0.0/1"},
		{"::/1 8000::/1", "::/1 8000::/1"},
		{"0.0.0.0/2 128.0.0.0/1", "0.0.0.0/2 128.0.0.0/1"},
	} {
		s := &ruleset.Set{}
		for _, f := range strings.Fields(c.in) {
			s.Entries = append(s.Entries, ruleset.SetEntry{Prefix: netip.MustParsePrefix(f)})
		}
		var got []string
		for _, p := range merged(s) {
			got = append(got, p.String())
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("merged(%s) = %v, want %s", c.in, got, c.want)
		}
	}
}

// A set whose record is gone (moat killed between forgetting it and
// changing MOAT-GEN, or a state dir emptied) while MOAT-GEN still names
// the wanted contents is refilled whole: IPv4's MOAT-GEN says "changing"
// meanwhile, and must name the generation again after, though the
// generation did not change. Before, the family was skipped as
// unchanged and stayed "changing": status reported a moat stopped half
// way after a clean apply.
func TestApplyRefillEndsChanging(t *testing.T) {
	rs := compileText(t, "default deny incoming\ndeny from 198.18.0.0\ndeny from 198.18.0.2\n")
	names := SetNames(rs)
	c := contentsOf(rs, names)
	kernel := kernelSave(rs, generation(rs, names, c), rulesHash(rs, names), c)
	var sets strings.Builder
	for _, n := range sortedKeys(c) {
		sets.WriteString(n + "\n")
	}
	sets.WriteString("moat-ban4\nmoat-ban6\nmoat-login4\nmoat-login6\n")
	host := &fakeHost{save: maps.Clone(kernel), sets: sets.String()}
	b := &Backend{Run: host.run, Elements: setstore.Dir{Path: t.TempDir(), Prefix: "ipset."}}
	if err := b.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	last := ""
	for _, call := range host.calls {
		if strings.HasPrefix(call.args, "iptables-restore") {
			last = call.stdin
		}
	}
	if !strings.Contains(last, genTag+" "+generation(rs, names, c)) {
		t.Errorf("IPv4's MOAT-GEN is left as:\n%s", last)
	}
}

// iptables-save lists every table: a MOAT-* chain, a jump to it and a
// generation record in a table moat does not use (mangle) are not moat's.
func TestParseSaveOtherTables(t *testing.T) {
	out := "*mangle\n:PREROUTING ACCEPT [0:0]\n:MOAT-GEN - [0:0]\n:MOAT-PREROUTING - [0:0]\n-A PREROUTING -j MOAT-PREROUTING\n" +
		"-A MOAT-GEN -m comment --comment \"moat:gen forged\" -j RETURN\n-A MOAT-PREROUTING -j DROP\nCOMMIT\n" +
		"*filter\n:INPUT ACCEPT [0:0]\n:MOAT-INPUT - [0:0]\n-A INPUT -j MOAT-INPUT\nCOMMIT\n"
	sv := parseSave([]byte(out))
	_, pre := sv.jumps["PREROUTING"]
	_, in := sv.jumps["INPUT"]
	if sv.gen != "" || sv.chains["MOAT-PREROUTING"] || sv.chains["MOAT-GEN"] || pre || !sv.chains["MOAT-INPUT"] || !in {
		t.Errorf("read %+v", sv)
	}
	for _, l := range sv.lines {
		if strings.Contains(l, "PREROUTING") {
			t.Errorf("mangle's line taken for moat's: %s", l)
		}
	}
}

// A chain that does not start with the plain established accept keeps
// the plain jump and the rule: 'logging high' logs every packet first,
// established ones too, so they must still enter MOAT-INPUT. The raw
// chain keeps its condition (nothing there logs).
func TestJumpConditionOnlyBehindEstablished(t *testing.T) {
	rs := compileText(t, "default deny incoming\nallow 22/tcp\nlogging high\n")
	v4 := Render(rs, policy.FamilyV4, nil)
	for _, want := range []string{"-I INPUT 1 -j MOAT-INPUT\n", `-A MOAT-INPUT -m conntrack --ctstate ESTABLISHED,RELATED -m comment --comment "builtin:established" -j RETURN`,
		"-I PREROUTING 1 -m set --match-set moat-early4 src -j MOAT-PREROUTING\n"} {
		if !strings.Contains(v4, want) {
			t.Errorf("lacks %q:\n%s", want, v4)
		}
	}
	if i, j := strings.Index(v4, `"logging:all:input"`), strings.Index(v4, `"builtin:established"`); i < 0 || j < i {
		t.Errorf("the audit log rule is not first in MOAT-INPUT:\n%s", v4)
	}
	plain := compileText(t, "default deny incoming\nallow 22/tcp\n")
	v4 = Render(plain, policy.FamilyV4, nil)
	if !strings.Contains(v4, "-I INPUT 1 -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n") || strings.Contains(v4, `"builtin:established"`) {
		t.Errorf("the plain policy's input jump:\n%s", v4)
	}
}

// A jump read back is written back to the letter: the "-D CHAIN ..." moat
// sends for a jump it read (writeJump, Remove) names that rule and no
// other, whatever the line holds.
func FuzzParseJump(f *testing.F) {
	for _, s := range []string{"-A INPUT -j MOAT-INPUT", "-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT",
		"-A PREROUTING ! -i lo -j MOAT-PREROUTING", "-A INPUT -s 192.0.2.1/32 -j MOAT-INPUT", "-A INPUT  -j MOAT-INPUT", "-A  -j MOAT-",
		`-A INPUT -m comment --comment "x -j MOAT-INPUT" -j MOAT-INPUT`, "-A INPUT x\n-A INPUT -j MOAT-INPUT"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		builtin, cond, ok := parseJump(line)
		if !ok {
			return
		}
		if got := "-A " + builtin + " " + jumpSpec(builtin, cond); got != line {
			t.Fatalf("%q read as %q %q, written back %q", line, builtin, cond, got)
		}
		if strings.ContainsAny(line, "\r\n") || strings.ContainsAny(builtin, " ") || strings.HasPrefix(builtin, "MOAT-") || cond != strings.TrimSpace(cond) {
			t.Fatalf("%q read as %q %q", line, builtin, cond)
		}
	})
}
