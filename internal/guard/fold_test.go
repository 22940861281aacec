package guard

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// A fold of the journal into guard.json cut short (kill -9) after
// guard.json is written and before the journal is removed must not count
// the journal's bans twice: 'moat ban' records "one more ban", and the
// next reader (moat bans, status, the guard's next fold) replayed the
// folded journal over the guard.json that holds it already. Records
// appended after the cut still count, once; a later fold keeps the
// counts.
func TestFoldCutBeforeJournalRemoved(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	a, b := netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("2001:db8::9")
	ban := func(addrs ...netip.Addr) {
		t.Helper()
		var bans []ruleset.Ban
		for _, x := range addrs {
			bans = append(bans, ruleset.Ban{Addr: x, Timeout: time.Hour, Reason: "manual: x"})
		}
		if err := RecordManualBans(dir, bans, now); err != nil {
			t.Fatal(err)
		}
	}
	ban(a)
	ban(a, b)
	if err := UpdateState(dir, func(*State) error { return nil }); err != nil {
		t.Fatal(err)
	}
	ban(a)
	if err := RecordUnbans(dir, []netip.Addr{b}); err != nil {
		t.Fatal(err)
	}
	killed := errors.New("killed")
	foldKill = func(step string) error {
		if step == "state-written" {
			return killed
		}
		return nil
	}
	err := UpdateState(dir, func(*State) error { return nil })
	foldKill = nil
	if !errors.Is(err, killed) {
		t.Fatalf("no kill: %v", err)
	}
	check := func(when string, wantA, wantB int) {
		t.Helper()
		counts := BanCounts(dir, nil)
		if counts[a] != wantA || counts[b] != wantB {
			t.Errorf("%s: BanCounts = %v, want %s %d, %s %d", when, counts, a, wantA, b, wantB)
		}
		sub := BanCounts(dir, []netip.Addr{a})
		if sub[a] != wantA {
			t.Errorf("%s: BanCounts of %s = %d, want %d", when, a, sub[a], wantA)
		}
		st, err := LoadState(dir)
		if err != nil {
			t.Fatal(err)
		}
		if st.Bans[a].Count != wantA || st.Bans[b].Count != wantB {
			t.Errorf("%s: LoadState counts %d %d, want %d %d", when, st.Bans[a].Count, st.Bans[b].Count, wantA, wantB)
		}
		if n, err := ActiveBans(dir, now); err != nil || n != 1 {
			t.Errorf("%s: ActiveBans = %d %v, want 1 (%s; %s unbanned)", when, n, err, a, b)
		}
	}
	check("after the cut", 3, 1)
	ban(a) // appended after the cut, to the journal the cut left
	check("a ban after the cut", 4, 1)
	if err := UpdateState(dir, func(*State) error { return nil }); err != nil {
		t.Fatal(err)
	}
	check("folded again", 4, 1)
	ban(a)
	check("a new journal", 5, 1)
}
