package guard

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// LookupHistory gives the records LoadState gives for the addresses asked
// (from guard.json and from the journal not folded yet), and none of the
// others.
func TestLookupHistoryLikeLoadState(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("198.51.100.3")
	if err := RecordManualBans(dir, []ruleset.Ban{{Addr: a, Timeout: time.Hour, Reason: "one"}, {Addr: b, Timeout: 2 * time.Hour}}, now); err != nil {
		t.Fatal(err)
	}
	// Folded into guard.json, then one more in the journal.
	if err := UpdateState(dir, func(*State) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := RecordManualBans(dir, []ruleset.Ban{{Addr: c, Timeout: 3 * time.Hour}, {Addr: a, Timeout: 4 * time.Hour, Reason: "again"}}, now); err != nil {
		t.Fatal(err)
	}
	st, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LookupHistory(dir, []netip.Addr{a, c, netip.MustParseAddr("203.0.113.9")}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr]*Record{a: st.Bans[a], c: st.Bans[c]}
	if !reflect.DeepEqual(got, want) || got[a].Count != 2 {
		t.Errorf("LookupHistory: %+v, want %+v", got, want)
	}
	if _, err := LookupHistory(dir, []netip.Addr{a}, 10); err == nil {
		t.Error("a guard.json past the bound was read")
	}
}
