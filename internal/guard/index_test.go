package guard

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// indexed makes a history of three addresses (one banned three times,
// one lifted, one whose ban ran out), folded so that guard.index
// matches guard.json, plus one ban in the journal on top.
func indexed(t *testing.T, now time.Time) string {
	t.Helper()
	dir := stateDir(t)
	a := netip.MustParseAddr
	for range 3 {
		if err := RecordManualBans(dir, []ruleset.Ban{{Addr: a("198.51.100.7"), Timeout: time.Hour}}, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := RecordManualBans(dir, []ruleset.Ban{{Addr: a("2001:db8::8"), Timeout: time.Hour}}, now); err != nil {
		t.Fatal(err)
	}
	if err := RecordUnbans(dir, []netip.Addr{a("2001:db8::8")}); err != nil {
		t.Fatal(err)
	}
	if err := RecordManualBans(dir, []ruleset.Ban{{Addr: a("203.0.113.9"), Timeout: time.Hour}}, now.Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := UpdateState(dir, func(*State) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := RecordManualBans(dir, []ruleset.Ban{{Addr: a("192.0.2.10"), Timeout: time.Hour}}, now); err != nil {
		t.Fatal(err)
	}
	if _, err := countFromIndex(dir, now); err != nil {
		t.Fatalf("the fresh index is not usable: %v", err)
	}
	return dir
}

// truth is what the history says, decoded the slow way.
func truth(t *testing.T, dir string, now time.Time) (int, map[netip.Addr]int) {
	t.Helper()
	st, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[netip.Addr]int{}
	for a, r := range st.Bans {
		counts[a] = r.Count
	}
	return activeBans(st.Bans, now), counts
}

// guard.index's body had no checksum: a damaged byte in an address, a
// ban's end or a count was read as truth ('moat status' counted bans
// that were not, 'moat bans' showed wrong counts). Every byte of every
// region (magic, guard.json's key, address, end, count, checksum) is
// damaged in turn: the index is refused, the answers are the
// history's, and the reader writes a good index again, which the next
// reader uses.
func TestIndexDamageDetected(t *testing.T) {
	now := time.Now()
	dir := indexed(t, now)
	good, err := os.ReadFile(filepath.Join(dir, indexFile))
	if err != nil {
		t.Fatal(err)
	}
	wantActive, wantCounts := truth(t, dir, now)
	if wantActive != 2 {
		t.Fatalf("the history counts %d active bans, want 2", wantActive)
	}
	region := func(p int) string {
		switch {
		case p < 8:
			return "magic"
		case p < indexHeader:
			return "key"
		case p >= len(good)-indexSum:
			return "checksum"
		}
		switch (p - indexHeader) % indexEntry {
		case 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15:
			return "address"
		case 16, 17, 18, 19, 20, 21, 22, 23:
			return "end"
		}
		return "count"
	}
	seen := map[string]int{}
	for p := range good {
		for _, flip := range []byte{0x01, 0x80} {
			t.Run(fmt.Sprintf("%s/byte%d^%#x", region(p), p, flip), func(t *testing.T) {
				seen[region(p)]++
				bad := append([]byte(nil), good...)
				bad[p] ^= flip
				if err := os.WriteFile(filepath.Join(dir, indexFile), bad, 0o600); err != nil {
					t.Fatal(err)
				}
				if _, err := countFromIndex(dir, now); err == nil {
					t.Fatalf("the damaged index was used")
				}
				if _, err := countsFromIndex(dir, nil); err == nil {
					t.Fatalf("the damaged index's counts were used")
				}
				if n, err := ActiveBans(dir, now); err != nil || n != wantActive {
					t.Errorf("ActiveBans: %d %v, want %d", n, err, wantActive)
				}
				got := BanCounts(dir, nil)
				for a, c := range wantCounts {
					if got[a] != c {
						t.Errorf("BanCounts: %s %d, want %d", a, got[a], c)
					}
				}
				// The reader wrote the index again: used, and right.
				if n, err := countFromIndex(dir, now); err != nil || n != wantActive {
					t.Errorf("the index written again: %d %v, want %d", n, err, wantActive)
				}
				if got, err := countsFromIndex(dir, nil); err != nil || got[netip.MustParseAddr("198.51.100.7")] != 3 {
					t.Errorf("the index written again: counts %v %v", got, err)
				}
			})
		}
	}
	for _, r := range []string{"magic", "key", "address", "end", "count", "checksum"} {
		if seen[r] == 0 {
			t.Errorf("no byte of region %s was damaged", r)
		}
	}
	// Cut short (a torn write), or with bytes added: refused too.
	for _, bad := range [][]byte{good[:len(good)-1], good[:len(good)-indexSum], good[:indexHeader], append(append([]byte(nil), good...), 0)} {
		if err := os.WriteFile(filepath.Join(dir, indexFile), bad, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := countFromIndex(dir, now); err == nil {
			t.Errorf("an index of %d bytes (of %d) was used", len(bad), len(good))
		}
	}
}

func crcOf(b []byte) uint32 { return crc32.Checksum(b, castagnoliTable()) }

// A damaged index whose checksum was made to match (a hostile edit by
// root, not damage) is still a well-formed index: what it says is
// counted. This test only shows the checksum covers the whole body.
func TestIndexChecksumCoversBody(t *testing.T) {
	now := time.Now()
	dir := indexed(t, now)
	data, err := os.ReadFile(filepath.Join(dir, indexFile))
	if err != nil {
		t.Fatal(err)
	}
	body := data[:len(data)-indexSum]
	// Every entry's end moved into the future, the checksum made again.
	for p := indexHeader; p < len(body); p += indexEntry {
		binary.BigEndian.PutUint64(body[p+16:], uint64(now.Add(time.Hour).UnixNano()))
	}
	sum := binary.BigEndian.AppendUint32(nil, crcOf(body))
	if err := os.WriteFile(filepath.Join(dir, indexFile), append(body, sum...), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := countFromIndex(dir, now); err != nil || n != 4 {
		t.Errorf("a well-formed index: %d %v, want 4 (3 in it, 1 in the journal)", n, err)
	}
}

// An index of an older moat (versions 1 and 2: no checksum) is not
// trusted: the first reader decodes guard.json and writes version 3.
func TestOldIndexReplaced(t *testing.T) {
	now := time.Now()
	for _, old := range []struct {
		magic string
		entry int
	}{{"MOATIDX1", 24}, {"MOATIDX2", 28}} {
		t.Run(old.magic, func(t *testing.T) {
			dir := indexed(t, now)
			data, err := os.ReadFile(filepath.Join(dir, indexFile))
			if err != nil {
				t.Fatal(err)
			}
			v := append([]byte(old.magic), data[8:indexHeader]...)
			for p := indexHeader; p+indexEntry <= len(data)-indexSum; p += indexEntry {
				v = append(v, data[p:p+old.entry]...)
			}
			if err := os.WriteFile(filepath.Join(dir, indexFile), v, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := countFromIndex(dir, now); err == nil {
				t.Fatalf("an index without a checksum was used")
			}
			want, counts := truth(t, dir, now)
			if n, err := ActiveBans(dir, now); err != nil || n != want {
				t.Errorf("ActiveBans: %d %v, want %d", n, err, want)
			}
			if got := BanCounts(dir, nil); got[netip.MustParseAddr("198.51.100.7")] != counts[netip.MustParseAddr("198.51.100.7")] {
				t.Errorf("BanCounts: %v, want %v", got, counts)
			}
			if _, err := countsFromIndex(dir, nil); err != nil {
				t.Errorf("the old index was not replaced: %v", err)
			}
		})
	}
}

// A reader that finds the index unusable ('moat status', 'moat bans')
// writes it again only when it can take the guard's state lock at once:
// it used to wait for it as long as the guard held it (a fold of a large
// history, a journal write stuck on a slow disk), and the status of the
// firewall waited with it. With the lock held by another, the answers
// are the history's, at once, and the index is left for the next reader.
func TestStaleIndexReaderDoesNotWaitForTheGuard(t *testing.T) {
	now := time.Now()
	dir := indexed(t, now)
	wantActive, wantCounts := truth(t, dir, now)
	if err := os.WriteFile(filepath.Join(dir, indexFile), []byte("damaged"), 0o600); err != nil {
		t.Fatal(err)
	}
	unlock, err := lockState(dir) // the guard, in the middle of a fold
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	type answer struct {
		active int
		err    error
		counts map[netip.Addr]int
	}
	done := make(chan answer, 1)
	go func() {
		n, err := ActiveBans(dir, now)
		done <- answer{n, err, BanCounts(dir, []netip.Addr{netip.MustParseAddr("198.51.100.7")})}
	}()
	select {
	case got := <-done:
		if got.err != nil || got.active != wantActive {
			t.Errorf("active bans %d (%v), want %d", got.active, got.err, wantActive)
		}
		if a := netip.MustParseAddr("198.51.100.7"); got.counts[a] != wantCounts[a] {
			t.Errorf("count of %s: %d, want %d", a, got.counts[a], wantCounts[a])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reader waits for the guard's state lock")
	}
	if data, _ := os.ReadFile(filepath.Join(dir, indexFile)); string(data) != "damaged" {
		t.Errorf("the index was written without the lock")
	}
}

// RecordedBans answers as the history decoded the slow way: the
// addresses whose ban had not ended (a lifted one and one run out are
// not), how often every address was banned; from the index and the
// journal, and from the history alone when the index is damaged. An
// unban in the journal after the fold, and a ban after the unban, count.
func TestRecordedBans(t *testing.T) {
	now := time.Now()
	dir := indexed(t, now)
	a := netip.MustParseAddr
	if err := RecordUnbans(dir, []netip.Addr{a("198.51.100.7")}); err != nil {
		t.Fatal(err)
	}
	if err := RecordManualBans(dir, []ruleset.Ban{{Addr: a("2001:db8::8"), Timeout: time.Hour}}, now); err != nil {
		t.Fatal(err)
	}
	check := func(what string) {
		t.Helper()
		active, counts := RecordedBans(dir, now)
		st, err := LoadState(dir)
		if err != nil {
			t.Fatal(err)
		}
		var want []netip.Addr
		for ad, r := range st.Bans {
			if r.Until.After(now) {
				want = append(want, ad)
			}
		}
		slices.SortFunc(active, netip.Addr.Compare)
		slices.SortFunc(want, netip.Addr.Compare)
		if !slices.Equal(active, want) || len(want) != 2 {
			t.Errorf("%s: active %v, want %v (192.0.2.10 and 2001:db8::8)", what, active, want)
		}
		_, wantCounts := truth(t, dir, now)
		if !maps.Equal(counts, wantCounts) {
			t.Errorf("%s: counts %v, want %v", what, counts, wantCounts)
		}
		if !maps.Equal(counts, BanCounts(dir, nil)) {
			t.Errorf("%s: counts %v, BanCounts %v", what, counts, BanCounts(dir, nil))
		}
	}
	check("index")
	if err := os.WriteFile(filepath.Join(dir, indexFile), []byte("MOATIDX3 damaged"), 0o600); err != nil {
		t.Fatal(err)
	}
	check("damaged index")
	if active, counts := RecordedBans(t.TempDir(), now); len(active) != 0 || len(counts) != 0 {
		t.Errorf("no history: %v %v", active, counts)
	}
}
