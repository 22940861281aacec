package ipt

import (
	"context"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// A snapshot file is state on disk: a damaged line in a family's section
// (one word, no chain) is refused or skipped, never a panic, and the
// chains of the snapshot are still restored in their tables.
func TestRestoreDamagedSnapshotLine(t *testing.T) {
	host := &fakeHost{save: map[string]string{}}
	b := &Backend{Run: host.run}
	snap := secV4 + "\n" +
		"garbage\n" +
		":MOAT-INPUT - [0:0]\n" +
		"-A MOAT-INPUT -j RETURN\n" +
		"-A INPUT -j MOAT-INPUT\n" +
		":MOAT-PREROUTING - [0:0]\n" +
		"-A PREROUTING -j MOAT-PREROUTING\n" +
		secV6 + "\n-A\n"
	if err := b.Restore(context.Background(), []byte(snap)); err != nil {
		t.Fatal(err)
	}
	v4 := host.lastInput("iptables-restore")
	for _, want := range []string{"*raw\n:MOAT-PREROUTING - [0:0]\n-I PREROUTING 1 -j MOAT-PREROUTING\nCOMMIT\n", "*filter\n:MOAT-INPUT - [0:0]\n-A MOAT-INPUT -j RETURN\n-I INPUT 1 -j MOAT-INPUT\nCOMMIT\n"} {
		if !strings.Contains(v4, want) {
			t.Errorf("IPv4 restore lacks %q:\n%s", want, v4)
		}
	}
	if strings.Contains(v4, "garbage") {
		t.Errorf("the damaged line was sent:\n%s", v4)
	}
}

// lastInput is what the last run of prog read on its standard input.
func (h *fakeHost) lastInput(prog string) string {
	in := ""
	for _, c := range h.calls {
		if strings.HasPrefix(c.args, prog+" ") {
			in = c.stdin
		}
	}
	return in
}

// A snapshot holds moat's chains of raw and filter only: a MOAT-* chain of
// mangle (someone else's) was taken, and Restore put its rules into raw.
func TestSnapshotOtherTables(t *testing.T) {
	save := "*mangle\n:PREROUTING ACCEPT [0:0]\n:MOAT-PREROUTING - [0:0]\n-A MOAT-PREROUTING -s 198.51.100.7/32 -j DROP\nCOMMIT\n" +
		"*raw\n:PREROUTING ACCEPT [0:0]\n:MOAT-PREROUTING - [0:0]\n-A PREROUTING -j MOAT-PREROUTING\nCOMMIT\n" +
		"*filter\n:INPUT ACCEPT [0:0]\n:MOAT-INPUT - [0:0]\n-A INPUT -j MOAT-INPUT\nCOMMIT\n"
	host := &fakeHost{save: map[string]string{"iptables-save": save, "ip6tables-save": ""}}
	snap, err := (&Backend{Run: host.run}).Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(snap), "198.51.100.7") || !strings.Contains(string(snap), "-A PREROUTING -j MOAT-PREROUTING\n") {
		t.Errorf("snapshot:\n%s", snap)
	}
}

// A temporary set left by a moat killed while it filled it (moatnew-*)
// is destroyed and made again by the snapshot's set restore, which swaps
// it away: it is not destroyed a second time (ipset then failed the
// whole undo with "The set with the given name does not exist"); a
// leftover temporary set of a set the snapshot lacks is removed.
func TestRestoreLeftoverTemporarySet(t *testing.T) {
	host := &fakeHost{save: map[string]string{}, sets: "moat-a\nmoatnew-a\nmoatnew-gone\n"}
	b := &Backend{Run: host.run}
	snap := secSets + "\ncreate moat-a hash:net family inet maxelem 65536\nadd moat-a 192.0.2.0/24\n" +
		secV4 + "\n:MOAT-INPUT - [0:0]\n-A INPUT -j MOAT-INPUT\n"
	if err := b.Restore(context.Background(), []byte(snap)); err != nil {
		t.Fatal(err)
	}
	destroyed := map[string]int{}
	for _, c := range host.calls {
		if c.args == "ipset restore" {
			for _, l := range strings.Split(c.stdin, "\n") {
				if name, ok := strings.CutPrefix(l, "destroy "); ok {
					destroyed[name]++
				}
			}
		}
	}
	if destroyed["moatnew-a"] != 2 || destroyed["moatnew-gone"] != 1 || destroyed["moat-a"] != 0 {
		t.Errorf("destroyed %v, want moatnew-a twice in the set restore (before and after the swap), moatnew-gone once, moat-a never", destroyed)
	}
}

// A snapshot holds the ban sets' definitions, not their bans. Restored
// keeping the ban sets, the rules and policy sets are the snapshot's and
// the bans are those in force (one made meanwhile stays, one lifted stays
// lifted); restored whole, the ban sets come back empty (the rollback
// then puts back the bans in force). With a ban set missing, nothing is
// done by the keeping restore.
func TestKernelSnapshotKeepsBanSets(t *testing.T) {
	ctx := context.Background()
	b := kernelBackend(t)
	head := "default deny incoming\nallow 22/tcp\n"
	if err := b.Apply(ctx, compile(t, head+denyList(20, -1))); err != nil {
		t.Fatal(err)
	}
	ban := func(a string) {
		t.Helper()
		if err := b.Ban(ctx, []ruleset.Ban{{Addr: netipMust(a), Timeout: time.Hour, Reason: "r"}}); err != nil {
			t.Fatal(err)
		}
	}
	ban("203.0.113.9")
	ban("203.0.113.10")
	saved := func() string {
		t.Helper()
		var out []byte
		for _, prog := range []string{"iptables-save", "ip6tables-save"} {
			o, err := b.Run(ctx, nil, prog)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, o...)
		}
		o, err := b.Run(ctx, nil, "ipset", "save")
		if err != nil {
			t.Fatal(err)
		}
		var keep []string
		for _, l := range strings.Split(string(out)+string(o), "\n") {
			if strings.HasPrefix(l, "#") || strings.HasPrefix(l, "add moat-ban") || strings.HasPrefix(l, "create") {
				continue // times, bans, hash sizes and seeds
			}
			keep = append(keep, regexp.MustCompile(`\[\d+:\d+\]`).ReplaceAllString(l, ""))
		}
		return strings.Join(keep, "\n")
	}
	want := saved()
	snap, err := b.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(snap), "203.0.113.9") || !strings.Contains(string(snap), "create "+IPSetName(ruleset.BanSet4)+" hash:ip") {
		t.Fatalf("snapshot:\n%s", snap)
	}
	change := func() {
		t.Helper()
		if err := b.Apply(ctx, compile(t, head+"allow 80/tcp\n"+denyList(25, 3))); err != nil {
			t.Fatal(err)
		}
		ban("192.0.2.3")
		if err := b.Unban(ctx, []netip.Addr{netipMust("203.0.113.10")}); err != nil {
			t.Fatal(err)
		}
	}
	change()
	kept, err := b.RestoreKeepingBans(ctx, snap)
	if err != nil || !kept {
		t.Fatalf("RestoreKeepingBans: %v %v", kept, err)
	}
	if got := saved(); got != want {
		t.Fatalf("restored:\n%s\nwant:\n%s", got, want)
	}
	banned := func() map[string]bool {
		bans, err := b.Bans(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, x := range bans {
			m[x.Addr.String()] = true
		}
		return m
	}
	if m := banned(); !m["203.0.113.9"] || !m["192.0.2.3"] || m["203.0.113.10"] {
		t.Errorf("bans after the restore keeping them: %v", m)
	}

	// Restored whole: the ban sets empty.
	change()
	if err := b.Restore(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if got := saved(); got != want {
		t.Fatalf("restored:\n%s\nwant:\n%s", got, want)
	}
	if m := banned(); len(m) != 0 {
		t.Errorf("bans after the whole restore: %v", m)
	}

	// A ban set redefined: nothing done.
	if _, err := b.Run(ctx, nil, "iptables", "-F", "MOAT-INPUT"); err != nil {
		t.Fatal(err)
	}
	before := saved()
	var lines []string
	for _, l := range strings.Split(string(snap), "\n") {
		if strings.HasPrefix(l, "create "+IPSetName(ruleset.BanSet4)+" ") {
			l = strings.Replace(l, " maxelem ", " maxelem 1", 1)
		}
		lines = append(lines, l)
	}
	snap2 := strings.Join(lines, "\n")
	if snap2 == string(snap) {
		t.Fatal("no ban set definition in the snapshot")
	}
	if kept, err := b.RestoreKeepingBans(ctx, []byte(snap2)); err != nil || kept {
		t.Fatalf("RestoreKeepingBans with a ban set redefined: %v %v", kept, err)
	}
	if got := saved(); got != before {
		t.Fatalf("changed:\n%s", got)
	}
}

// A restore leaves each built-in chain one jump, the snapshot's first of
// moat's forms, where the kernel's first jump stood: every jump there is
// deleted once (a snapshot with two jump lines deleted the kernel's
// second jump twice, and iptables-restore failed the whole undo), one
// made by hand included, and one made by hand in the snapshot is not put
// back.
func TestRestoreJumpsWhereTheyStood(t *testing.T) {
	save := "*filter\n:INPUT ACCEPT [0:0]\n:MOAT-INPUT - [0:0]\n-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\n" +
		"-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n-A INPUT -j MOAT-INPUT\n-A INPUT -s 192.0.2.9/32 -j MOAT-INPUT\nCOMMIT\n"
	host := &fakeHost{save: map[string]string{"iptables-save": save, "ip6tables-save": ""}}
	b := &Backend{Run: host.run}
	snap := secV4 + "\n:MOAT-INPUT - [0:0]\n-A MOAT-INPUT -j RETURN\n-A INPUT -s 198.51.100.0/24 -j MOAT-INPUT\n-A INPUT -j MOAT-INPUT\n-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n"
	if err := b.Restore(context.Background(), []byte(snap)); err != nil {
		t.Fatal(err)
	}
	v4 := host.lastInput("iptables-restore")
	want := "-D INPUT -s 192.0.2.9/32 -j MOAT-INPUT\n-D INPUT -j MOAT-INPUT\n-D INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n-I INPUT 2 -j MOAT-INPUT\nCOMMIT\n"
	if !strings.HasSuffix(v4, want) || strings.Count(v4, "-D ") != 3 || strings.Count(v4, "-I ") != 1 {
		t.Errorf("IPv4 restore:\n%s\nwant it to end with:\n%s", v4, want)
	}
}
