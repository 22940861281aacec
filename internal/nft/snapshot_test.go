package nft

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/lab"
)

// snapTable is a table as moat and an admin may leave it: a comment,
// interval policy sets (adjacent networks, the zero address, the top of
// the address space), ban sets with bans, a login set with an element
// that expires, base and regular chains, lookups, jumps, counters, a
// limit, comments, a rule adding to a ban set.
const snapTable = `table inet moat {
	comment "moat: managed"
	set ban4 { type ipv4_addr; flags dynamic,timeout; size 1048576; comment "bans"; }
	set ban6 { type ipv6_addr; flags dynamic,timeout; size 1048576; }
	set login4 { type ipv4_addr; flags dynamic,timeout; size 1048576; }
	set p4 { type ipv4_addr; flags interval; comment "policy"; elements = { 0.0.0.0/8, 192.0.2.0/25, 192.0.2.128/25, 198.51.100.7, 240.0.0.0/4 } }
	set p6 { type ipv6_addr; flags interval; elements = { 2001:db8::/48, 2001:db8:1::/48, ffff::/16 } }
	set empty4 { type ipv4_addr; flags interval; }
	chain input { type filter hook input priority filter; policy drop;
		ct state established,related accept comment "m1"
		ip saddr @ban4 counter drop
		ip6 saddr @ban6 drop
		ip saddr @p4 jump allowed
		ip6 saddr @p6 jump allowed
		tcp dport 22 limit rate 10/second accept comment "ssh"
		tcp dport 23 add @ban4 { ip saddr timeout 1h } drop
	}
	chain allowed { tcp dport { 80, 443 } accept; ip saddr @login4 accept; }
}
add element inet moat ban4 { 203.0.113.5 timeout 1h comment "guard", 203.0.113.6 timeout 2h }
add element inet moat ban6 { 2001:db8::5 timeout 1h }
add element inet moat login4 { 198.51.100.9 timeout 1h }
`

var expiresRe = regexp.MustCompile(` expires [0-9hms.]+`)

// listNoBans is `nft list table` without the ban sets' elements, counters
// and times left.
func listNoBans(t *testing.T, r *recorder) string {
	t.Helper()
	out, err := r.run(context.Background(), nil, "nft", "list", "table", "inet", TableName)
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	inBan, inElems := false, false
	for _, l := range strings.Split(expiresRe.ReplaceAllString(string(out), ""), "\n") {
		tl := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(tl, "set ban"):
			inBan = true
		case inBan && strings.HasPrefix(tl, "elements = {"):
			inElems = !strings.HasSuffix(tl, "}")
			continue
		case inElems:
			inElems = !strings.HasSuffix(tl, "}")
			continue
		case tl == "}":
			inBan = false
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// A --confirm snapshot read over netlink restores the table exactly (the
// rules, the policy sets and their elements, the login exemptions with
// their time left), with the ban sets defined and empty (the rollback
// puts back the bans in force): the same table as `nft list table`
// showed, in one transaction whatever the change made meanwhile.
func TestNetlinkSnapshotRestoresTable(t *testing.T) {
	ctx := context.Background()
	r, ns, b := newSnapRig(t, snapTable)
	want := listNoBans(t, r)
	snap := takeSnap(t, ns, b)
	if !bytes.HasPrefix(snap, []byte(netlinkSnapMagic)) {
		t.Fatalf("snapshot not read over netlink: %.80q", snap)
	}
	if bytes.Contains(snap, []byte("guard")) {
		t.Error("the snapshot holds the ban sets' elements")
	}
	// The change: another table altogether, a set gone, one more.
	if _, err := r.run(ctx, []byte("delete table inet moat\ntable inet moat { set ban4 { type ipv4_addr; flags dynamic,timeout; }\nset x { type ipv4_addr; }\nchain input { type filter hook input priority filter; policy accept; ip saddr @x accept; }\n}\n"), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	for range 2 { // restoring twice gives the same table
		if err := ns.Do(func() error { return b.Restore(ctx, snap) }); err != nil {
			t.Fatal(err)
		}
		if got := listNoBans(t, r); got != want {
			t.Fatalf("restored table:\n%s\nwant:\n%s", got, want)
		}
		out, err := r.run(ctx, nil, "nft", "list", "set", "inet", TableName, "ban4")
		if err != nil || strings.Contains(string(out), "203.0.113") {
			t.Fatalf("ban set after the restore: %s %v (want empty: the rollback puts back the bans in force)", out, err)
		}
		out, err = r.run(ctx, nil, "nft", "list", "set", "inet", TableName, "login4")
		if err != nil || !strings.Contains(string(out), "198.51.100.9 timeout 1h expires") {
			t.Fatalf("login set after the restore: %s %v", out, err)
		}
	}
	// Without moat's table, the restore makes it.
	if _, err := r.run(ctx, nil, "nft", "delete", "table", "inet", TableName); err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(func() error { return b.Restore(ctx, snap) }); err != nil {
		t.Fatal(err)
	}
	if got := listNoBans(t, r); got != want {
		t.Fatalf("restored table:\n%s\nwant:\n%s", got, want)
	}
}

// A table holding what a netlink snapshot does not copy (a named counter
// made by hand) is snapshotted by nft, whole.
func TestNetlinkSnapshotFallsBackToNft(t *testing.T) {
	_, ns, b := newSnapRig(t, snapTable+"add counter inet moat hand\n")
	snap := takeSnap(t, ns, b)
	if !bytes.HasPrefix(snap, []byte("table inet moat {")) || !bytes.Contains(snap, []byte("counter hand")) {
		t.Fatalf("snapshot: %.200q", snap)
	}
}

// A damaged netlink snapshot is refused whole and the table is left as it
// is (the rollback then loads the previous policy).
func TestNetlinkSnapshotCorrupt(t *testing.T) {
	ctx := context.Background()
	r, ns, b := newSnapRig(t, snapTable)
	snap := takeSnap(t, ns, b)
	before := listNoBans(t, r)
	other := bytes.Replace(snap, []byte("moat\x00"), []byte("mo0t\x00"), 1)
	for name, bad := range map[string][]byte{
		"cut":         snap[:len(snap)-3],
		"cut header":  snap[:len(netlinkSnapMagic)+3],
		"other table": other,
		"no objects":  []byte(netlinkSnapMagic),
		"huge length": append([]byte(netlinkSnapMagic), 0, 1, 0xff, 0xff, 0xff, 0xff),
	} {
		if err := ns.Do(func() error { return b.Restore(ctx, bad) }); err == nil {
			t.Errorf("%s: restored", name)
		}
		if got := listNoBans(t, r); got != before {
			t.Fatalf("%s: the table changed:\n%s", name, got)
		}
	}
}

// FuzzParseNetlinkSnapshot: no input panics the parser.
func FuzzParseNetlinkSnapshot(f *testing.F) {
	f.Add([]byte(netlinkSnapMagic))
	f.Add(append([]byte(netlinkSnapMagic), 0, 0, 0, 0, 0, 4, 4, 0, 1, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = parseNetlinkSnapshot(data)
		_, _ = parseNetlinkSnapshot(append([]byte(netlinkSnapMagic), data...))
	})
}

// With the ban sets defined as in the snapshot, the restore leaves them
// as they are: a ban made while the change waited stays, one lifted stays
// lifted, the others keep their time left; the rest of the table is the
// snapshot's. With a ban set redefined (or no table), nothing is done
// and kept is false (the rollback then restores and refills them).
func TestNetlinkRestoreKeepsBanSets(t *testing.T) {
	ctx := context.Background()
	r, ns, b := newSnapRig(t, snapTable)
	want := listNoBans(t, r)
	snap := takeSnap(t, ns, b)
	// The change: a rule more, a policy set gone, a set more; meanwhile
	// a ban made and one lifted.
	change := `flush chain inet moat input
delete chain inet moat allowed
delete set inet moat p6
add set inet moat x { type ipv4_addr; }
add rule inet moat input ip saddr @x accept
add rule inet moat input ip saddr @ban4 drop
add element inet moat ban4 { 203.0.113.7 timeout 3h comment "meanwhile" }
delete element inet moat ban4 { 203.0.113.6 }
`
	if _, err := r.run(ctx, []byte(change), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	var kept bool
	if err := ns.Do(func() (err error) { kept, err = b.RestoreKeepingBans(ctx, snap); return err }); err != nil || !kept {
		t.Fatalf("RestoreKeepingBans: %v, %v", kept, err)
	}
	if got := listNoBans(t, r); got != want {
		t.Fatalf("restored table:\n%s\nwant:\n%s", got, want)
	}
	out, err := r.run(ctx, nil, "nft", "list", "set", "inet", TableName, "ban4")
	if err != nil || !strings.Contains(string(out), `203.0.113.7 timeout 3h expires`) || !strings.Contains(string(out), `203.0.113.5 timeout 1h expires`) ||
		strings.Contains(string(out), "203.0.113.6") {
		t.Fatalf("ban set after the restore: %s %v", out, err)
	}
	if out, err := r.run(ctx, nil, "nft", "list", "set", "inet", TableName, "ban6"); err != nil || !strings.Contains(string(out), "2001:db8::5") {
		t.Fatalf("ban6 after the restore: %s %v", out, err)
	}

	// A ban set redefined by the change: nothing done.
	if _, err := r.run(ctx, []byte("delete table inet moat\n"+strings.Replace(snapTable, "set ban6 { type ipv6_addr; flags dynamic,timeout; size 1048576; }", "set ban6 { type ipv6_addr; flags dynamic,timeout; size 65536; }", 1)), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	before := listNoBans(t, r)
	if err := ns.Do(func() (err error) { kept, err = b.RestoreKeepingBans(ctx, snap); return err }); err != nil || kept {
		t.Fatalf("RestoreKeepingBans with ban6 redefined: %v, %v", kept, err)
	}
	if got := listNoBans(t, r); got != before {
		t.Fatalf("the table changed:\n%s", got)
	}
	// No table: nothing done.
	if _, err := r.run(ctx, nil, "nft", "delete", "table", "inet", TableName); err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(func() (err error) { kept, err = b.RestoreKeepingBans(ctx, snap); return err }); err != nil || kept {
		t.Fatalf("RestoreKeepingBans without a table: %v, %v", kept, err)
	}
}

// A chain made by hand between the keeping restore's read of the table
// and its commit does not survive it: the commit is for the generation
// read, so it is refused and the restore reads the table again.
func TestNetlinkRestoreKeepingBansRaced(t *testing.T) {
	ctx := context.Background()
	r, ns, b := newSnapRig(t, snapTable)
	want := listNoBans(t, r)
	snap := takeSnap(t, ns, b)
	tries := 0
	beforeKeepSend = func() {
		tries++
		if tries == 1 {
			if _, err := r.run(ctx, nil, "nft", "add", "chain", "inet", TableName, "hand"); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(func() { beforeKeepSend = nil })
	var kept bool
	if err := ns.Do(func() (err error) { kept, err = b.RestoreKeepingBans(ctx, snap); return err }); err != nil || !kept {
		t.Fatalf("RestoreKeepingBans: %v, %v", kept, err)
	}
	if got := listNoBans(t, r); got != want || tries != 2 {
		t.Fatalf("after %d tries:\n%s\nwant:\n%s", tries, got, want)
	}
}

// newSnapRig is a namespace whose moat table is table (loaded by nft), and
// a netlink backend in it.
func newSnapRig(t *testing.T, table string) (*recorder, *lab.NS, *Backend) {
	t.Helper()
	r, ns := kernelNS(t)
	b := &Backend{Run: r.run, Netlink: true}
	if _, err := r.run(context.Background(), []byte(table), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	return r, ns, b
}

// takeSnap is b's snapshot of the table in ns, failing the test if it
// cannot be taken.
func takeSnap(t *testing.T, ns *lab.NS, b *Backend) []byte {
	t.Helper()
	var snap []byte
	if err := ns.Do(func() (err error) { snap, err = b.Snapshot(context.Background()); return err }); err != nil {
		t.Fatal(err)
	}
	return snap
}
