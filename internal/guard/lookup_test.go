package guard

import (
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
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
	// No bound (the largest): read.
	if got, err := LookupHistory(dir, []netip.Addr{a, c}, math.MaxInt64); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("LookupHistory without a bound: %+v, %v", got, err)
	}
}

// lookupLikeLoadState checks LookupHistory against LoadState on a
// guard.json holding data: both refuse it, or LookupHistory gives
// LoadState's records of the addresses asked (all of LoadState's, and a
// few others alone: those it skips must be checked as LoadState checks
// them).
func lookupLikeLoadState(t *testing.T, data []byte) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, stateFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	st, lerr := LoadState(dir)
	few := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}
	all := slices.Clone(few)
	if lerr == nil {
		for a := range st.Bans {
			all = append(all, a)
		}
	}
	for _, addrs := range [][]netip.Addr{all, few} {
		got, err := LookupHistory(dir, addrs, int64(len(data)))
		if (err != nil) != (lerr != nil) {
			t.Fatalf("%q asking %v: LookupHistory's error %v, LoadState's %v", data, addrs, err, lerr)
		}
		if err != nil {
			continue
		}
		want := map[netip.Addr]*Record{}
		for _, a := range addrs {
			if r := st.Bans[a]; r != nil {
				want[a] = r
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q asking %v: LookupHistory %v, LoadState %v", data, addrs, got, want)
		}
	}
}

// Files LoadState reads as json.Unmarshal does, which LookupHistory read
// otherwise: an address twice (the last wins, null removes it), names in
// another case, a null object, an empty key, a record of the wrong type
// among those skipped, a file of exactly the bound.
func TestLookupHistoryOddFiles(t *testing.T) {
	for _, s := range []string{
		`{"bans":{"192.0.2.1":{"count":1},"192.0.2.1":null}}`,
		`{"bans":{"192.0.2.1":{"count":1},"192.0.2.1":{"reason":"x"}}}`,
		`{"Bans":{"192.0.2.1":{"count":1}}}`,
		`{"BANS":{"192.0.2.1":{"count":1}},"bans":{"2001:db8::1":{"count":2}}}`,
		`{"banſ":{"192.0.2.1":{"count":1}}}`,
		`null`,
		` null `,
		`{"bans":{"":{"count":1},"192.0.2.1":{"count":3}}}`,
		`{"bans":{"198.51.100.7":{"count":"x"},"192.0.2.1":{"count":3}}}`,
		`{"bans":{"198.51.100.7":5}}`,
		`{"bans":{"198.51.100.7":{"until":"yesterday"}}}`,
		`{"bans":{"192.0.2.1":{"count":3}},"journal_cursor":5}`,
		`{"bans":{"192.0.2.1":{"count":3}},"File":{"path":"x"},"file":{"inode":3}}`,
		`{"bans":null,"bans":{"192.0.2.1":{"count":3}}}`,
		`{"bans":{"192.0.2.1":{"count":3}}}   `,
		`{"bans":{"192.0.2.1":{"count":3}}} x`,
		`{"bans":{"192.0.2.1":{"count":3}}`,
		`{"bans":{"192.0.2.1":{"count":3}}}}`,
		`[]`,
		``,
	} {
		lookupLikeLoadState(t, []byte(s))
	}
}

// FuzzLookupHistory: LookupHistory is LoadState on any guard.json, and
// never panics.
func FuzzLookupHistory(f *testing.F) {
	for _, s := range []string{
		`{"bans":{"192.0.2.1":{"count":1,"last_ban":"2026-01-02T03:04:05Z","until":"2026-01-02T04:04:05Z","reason":"ssh"},"2001:db8::1":{"count":2}},"journal_cursor":"c","file":{"path":"/var/log/auth.log","inode":3,"offset":4},"folded_journal":{"id":"j","size":5}}`,
		`{"bans":{"192.0.2.1":{"count":1},"192.0.2.1":null}}`,
		`{"Bans":{"::ffff:192.0.2.1":{"count":1}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lookupLikeLoadState(t, data)
	})
}
