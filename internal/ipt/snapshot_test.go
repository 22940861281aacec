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
