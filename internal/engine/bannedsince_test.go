package engine

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// bannedSince (a rollback finished after a cut: the bans lifted while the
// change waited and made again since) reads the guard's history, which
// may be huge or not what the guard wrote. It keeps only the records it
// looks up, refuses a guard.json past its bound unread, and says so: a
// 300 MB guard.json was read whole into memory before (and decoded whole
// when valid), a corrupt one gives a warning and no bans, never a panic.
func TestBannedSinceBoundedHistory(t *testing.T) {
	r := enabledRig(t)
	path := filepath.Join(r.dir, "guard.json")
	began := r.now.Add(-time.Hour)
	want := netip.MustParseAddr("203.0.113.7")
	lookup := func() ([]string, string) {
		r.warnings = nil
		var ms0, ms1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		bans := r.eng.bannedSince([]netip.Addr{want, netip.MustParseAddr("2001:db8::7")}, began)
		runtime.ReadMemStats(&ms1)
		var out []string
		for _, b := range bans {
			out = append(out, fmt.Sprintf("%s %s %s", b.Addr, b.Timeout, b.Reason))
		}
		if d := ms1.TotalAlloc - ms0.TotalAlloc; d > 64<<20 {
			t.Errorf("the lookup allocated %d MB", d>>20)
		}
		return out, strings.Join(r.warnings, "\n")
	}

	// A valid history of 100,000 addresses: the one looked up is found.
	var b strings.Builder
	b.WriteString(`{"bans":{`)
	for i := range 100000 {
		fmt.Fprintf(&b, `"10.%d.%d.%d":{"count":1,"last_ban":"2026-01-02T02:30:00Z","until":"2026-01-02T05:00:00Z","reason":"x"},`, i>>16, (i>>8)&255, i&255)
	}
	b.WriteString(`"203.0.113.7":{"count":3,"last_ban":"2026-01-02T02:34:05Z","until":"2026-01-02T05:04:05Z","reason":"sshd: 5 failures"}},"journal_cursor":"c"}`)
	r.must(os.WriteFile(path, []byte(b.String()), 0o600))
	got, w := lookup()
	if len(got) != 1 || got[0] != "203.0.113.7 2h0m0s sshd: 5 failures" || w != "" {
		t.Errorf("a valid history: %q, warnings %q", got, w)
	}

	// Past the bound: refused unread, said.
	r.must(os.Truncate(path, 300<<20)) // sparse: no disk used
	got, w = lookup()
	if len(got) != 0 || !strings.Contains(w, "cannot read the guard's history") || !strings.Contains(w, "more than") {
		t.Errorf("a 300 MB guard.json: %q, warnings %q", got, w)
	}

	// Corrupt or hostile: a warning naming the file, no bans.
	for _, bad := range []string{
		`{"bans":{"203.0.113.7":{"count":3,"last_ban":"2026-01-02T02:34:05Z","until":`,
		`{"bans":{"not an address":{}}}`,
		`{"bans":{"203.0.113.7":{"count":"three"}}}`,
		`{"bans":[1,2,3]}`,
		`[]`,
		`{"bans":{}} {"bans":{}}`,
		strings.Repeat("[", 100000),
	} {
		r.must(os.WriteFile(path, []byte(bad), 0o600))
		got, w = lookup()
		if len(got) != 0 || !strings.Contains(w, "cannot read the guard's history") || !strings.Contains(w, "guard.json") {
			t.Errorf("guard.json %.40q: %q, warnings %q", bad, got, w)
		}
	}
	// A record far in the future: capped, not overflowed.
	r.must(os.WriteFile(path, []byte(`{"bans":{"203.0.113.7":{"count":1,"last_ban":"2026-01-02T03:00:00Z","until":"9999-01-01T00:00:00Z","reason":"\u001b[2J"}}}`), 0o600))
	got, _ = lookup()
	if len(got) != 1 || !strings.HasPrefix(got[0], "203.0.113.7 876000h0m0s") || strings.Contains(got[0], "\x1b") {
		t.Errorf("a hostile record: %q", got)
	}
}
