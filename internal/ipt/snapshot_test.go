package ipt

import (
	"context"
	"strings"
	"testing"
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
	var v4 string
	for _, c := range host.calls {
		if strings.HasPrefix(c.args, "iptables-restore") {
			v4 = c.stdin
		}
	}
	for _, want := range []string{"*raw\n:MOAT-PREROUTING - [0:0]\n-I PREROUTING 1 -j MOAT-PREROUTING\nCOMMIT\n", "*filter\n:MOAT-INPUT - [0:0]\n-A MOAT-INPUT -j RETURN\n-I INPUT 1 -j MOAT-INPUT\nCOMMIT\n"} {
		if !strings.Contains(v4, want) {
			t.Errorf("IPv4 restore lacks %q:\n%s", want, v4)
		}
	}
	if strings.Contains(v4, "garbage") {
		t.Errorf("the damaged line was sent:\n%s", v4)
	}
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
