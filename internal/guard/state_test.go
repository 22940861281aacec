package guard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

func stateDir(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "state")
}

// appendRaw writes text at the end of the journal, as a crash or damage
// leaves it.
func appendRaw(t *testing.T, dir, text string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, journalFile), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(text)
	if err = errors.Join(err, f.Close()); err != nil {
		t.Fatal(err)
	}
}

func rec(count int, until time.Time) map[netip.Addr]*Record {
	return map[netip.Addr]*Record{netip.MustParseAddr("203.0.113.1"): {Count: count, LastBan: until.Add(-time.Hour), Until: until}}
}

// kill -9 while the guard appends leaves a torn last record: it is skipped
// when read, and the next append must not be glued onto it (which lost the
// next record too).
func TestJournalTornRecord(t *testing.T) {
	dir := stateDir(t)
	now := time.Now().Truncate(time.Second)
	if _, err := Append(dir, rec(1, now), "c1", nil); err != nil {
		t.Fatal(err)
	}
	appendRaw(t, dir, `{"bans":{"203.0.113.2":{"count":9,"la`) // the crash
	st, err := LoadState(dir)
	if err != nil || st.JournalCursor != "c1" || len(st.Bans) != 1 {
		t.Fatalf("after a torn record: %+v %v", st, err)
	}
	// The guard restarts and records more; the same fault again, then more.
	for i, c := range []string{"c2", "c3"} {
		if _, err := Append(dir, map[netip.Addr]*Record{netip.MustParseAddr("198.51.100.7"): {Count: i + 1, Until: now}}, c, nil); err != nil {
			t.Fatal(err)
		}
		appendRaw(t, dir, `{"cursor":"torn`)
	}
	st, err = LoadState(dir)
	if err != nil || st.JournalCursor != "c3" || st.Bans[netip.MustParseAddr("198.51.100.7")].Count != 2 {
		t.Fatalf("records after torn ones were lost: %+v %v", st, err)
	}
	// Folding heals the journal, and says so.
	var logbuf bytes.Buffer
	if err := updateState(dir, slog.New(slog.NewTextHandler(&logbuf, nil)), func(*State) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logbuf.String(), "records=3") {
		t.Errorf("damaged records not reported: %s", logbuf.String())
	}
	if st, err = LoadState(dir); err != nil || st.JournalCursor != "c3" || len(st.Bans) != 2 {
		t.Fatalf("after folding: %+v %v", st, err)
	}
}

// A journal record longer than any the guard writes is damage: skipped,
// not a guard that can never start again.
func TestJournalHugeLine(t *testing.T) {
	dir := stateDir(t)
	if _, err := Append(dir, nil, "c1", nil); err != nil {
		t.Fatal(err)
	}
	appendRaw(t, dir, strings.Repeat("x", maxJournalRecord+10)+"\n")
	if _, err := Append(dir, nil, "c2", nil); err != nil {
		t.Fatal(err)
	}
	if st, err := LoadState(dir); err != nil || st.JournalCursor != "c2" {
		t.Fatalf("%+v %v", st, err)
	}
}

// A corrupt guard.json is loud, moved aside, and the guard (or 'moat ban')
// goes on with an empty history instead of failing for good; the same
// fault twice keeps both copies.
func TestCorruptStateKeptAside(t *testing.T) {
	dir := stateDir(t)
	now := time.Now()
	if err := RecordManualBans(dir, []ruleset.Ban{{Addr: netip.MustParseAddr("203.0.113.5"), Timeout: time.Hour}}, now); err != nil {
		t.Fatal(err)
	}
	if err := UpdateState(dir, func(*State) error { return nil }); err != nil { // into guard.json
		t.Fatal(err)
	}
	for round := 1; round <= 2; round++ {
		garbage := []byte("{\"bans\": {\"203.0.113.5\": {\"count\": 1, tr")
		if err := os.WriteFile(filepath.Join(dir, stateFile), garbage, 0o600); err != nil {
			t.Fatal(err)
		}
		var ce *CorruptError
		if _, err := LoadState(dir); !errors.As(err, &ce) || !strings.Contains(err.Error(), filepath.Join(dir, stateFile)) {
			t.Fatalf("round %d: corrupt state not reported as such: %v", round, err)
		}
		var logbuf bytes.Buffer
		err := updateState(dir, slog.New(slog.NewTextHandler(&logbuf, nil)), func(st *State) error {
			if len(st.Bans) != 0 {
				t.Errorf("history from a corrupt file: %v", st.Bans)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if !strings.Contains(logbuf.String(), "level=ERROR") || !strings.Contains(logbuf.String(), "corrupt") {
			t.Errorf("round %d: not loud: %s", round, logbuf.String())
		}
		kept, _ := filepath.Glob(filepath.Join(dir, stateFile+".corrupt-*"))
		if len(kept) != round {
			t.Fatalf("round %d: kept %v", round, kept)
		}
		if data, _ := os.ReadFile(kept[round-1]); !bytes.Equal(data, garbage) {
			t.Errorf("the corrupt file was not kept as it was: %q", data)
		}
		if _, err := LoadState(dir); err != nil {
			t.Fatalf("round %d: still unreadable: %v", round, err)
		}
	}
}

func TestPrune(t *testing.T) {
	now := time.Now()
	st := &State{Bans: map[netip.Addr]*Record{
		netip.MustParseAddr("203.0.113.1"): {Count: 3, LastBan: now.Add(-30 * 24 * time.Hour), Until: now.Add(-29 * 24 * time.Hour)}, // old
		netip.MustParseAddr("203.0.113.2"): {Count: 3, LastBan: now.Add(-8 * 24 * time.Hour), Until: now.Add(-6 * 24 * time.Hour)},   // ended 6d ago
		netip.MustParseAddr("203.0.113.3"): {Count: 1, LastBan: now.Add(-time.Minute), Until: now.Add(time.Hour)},                    // active
		netip.MustParseAddr("203.0.113.4"): {Count: 2, LastBan: now.Add(-10 * 24 * time.Hour)},                                       // unbanned long ago
		netip.MustParseAddr("203.0.113.5"): {Count: 2, LastBan: now.Add(-time.Hour)},                                                 // unbanned recently
	}}
	if n := st.Prune(now, 7*24*time.Hour); n != 2 {
		t.Fatalf("pruned %d, want 2", n)
	}
	for _, a := range []string{"203.0.113.2", "203.0.113.3", "203.0.113.5"} {
		if st.Bans[netip.MustParseAddr(a)] == nil {
			t.Errorf("%s forgotten", a)
		}
	}
}

type fakeBanner struct {
	mu   sync.Mutex
	bans []ruleset.Ban
}

func (f *fakeBanner) Ban(_ context.Context, b []ruleset.Ban) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bans = append(f.bans, b...)
	return nil
}

func (f *fakeBanner) Bans(context.Context) ([]ruleset.Ban, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ruleset.Ban(nil), f.bans...), nil
}

type chanSource chan Line

func (c chanSource) Run(ctx context.Context, out chan<- Line) error {
	for {
		select {
		case l := <-c:
			out <- l
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// runUntilBanned runs svc on src until it has banned (or wait has
// passed), stops it, and returns its bans.
func runUntilBanned(svc *Service, src Source, wait time.Duration) []ruleset.Ban {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, src) }()
	for deadline := time.Now().Add(wait); ; time.Sleep(10 * time.Millisecond) {
		if bans, _ := svc.Bans.Bans(ctx); len(bans) > 0 || time.Now().After(deadline) {
			break
		}
	}
	cancel()
	<-done
	bans, _ := svc.Bans.Bans(context.Background())
	return bans
}

func newService(dir string, log *slog.Logger) *Service {
	return &Service{Cfg: testGuard(), Bans: &fakeBanner{}, StateDir: dir, Log: log, Metrics: newTestMetrics(), SaveEvery: 20 * time.Millisecond}
}

// A second guard on the same state directory refuses to start and names
// the first one's PID; once the first stops, it can start.
func TestSecondGuardRefused(t *testing.T) {
	dir := stateDir(t)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	first := newService(dir, log)
	first.Ready = func() { close(ready) }
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx, make(chanSource)) }()
	<-ready
	err := newService(dir, log).Run(context.Background(), make(chanSource))
	var running *AlreadyRunningError
	if !errors.As(err, &running) || running.PID != os.Getpid() || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second guard: %v", err)
	}
	cancel()
	<-done
	ctx2, cancel2 := context.WithCancel(context.Background())
	second := newService(dir, log)
	second.Ready = cancel2
	if err := second.Run(ctx2, make(chanSource)); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("after the first stopped: %v", err)
	}
}

// Overlong and untrusted lines are counted, move the read position, and
// the guard goes on banning.
func TestServiceSkips(t *testing.T) {
	dir := stateDir(t)
	svc := newService(dir, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	src := make(chanSource, 16)
	src <- Line{Skip: SkipTooLong, Cursor: "c1"}
	src <- Line{Skip: SkipUntrusted, Cursor: "c2"}
	// Through syslog without sshd's tag and PID: 'logger -t sshd'.
	for i := 0; i < 5; i++ {
		src <- Line{Text: "Nov 25 11:40:01 srv sshd: Failed password for root from 203.0.113.9 port 22 ssh2"}
	}
	for i := 0; i < 3; i++ {
		src <- Line{Text: "Nov 25 11:40:01 srv sshd[12]: Failed password for root from 203.0.113.10 port 22 ssh2", Cursor: "c3"}
	}
	bans := runUntilBanned(svc, src, 5*time.Second)
	if len(bans) != 1 || bans[0].Addr != netip.MustParseAddr("203.0.113.10") {
		t.Fatalf("bans %v", bans)
	}
	for reason, want := range map[string]float64{SkipTooLong: 1, SkipUntrusted: 6} {
		if got := metricValue(svc.Metrics.Skipped.WithLabelValues(reason)); got != want {
			t.Errorf("skipped %s = %v, want %v", reason, got, want)
		}
	}
	if st, err := LoadState(dir); err != nil || st.JournalCursor != "c3" {
		t.Errorf("cursor %+v %v", st, err)
	}
}

// 'moat ban' and 'moat unban' append changes: counts add up, an unban
// keeps the count, and folding keeps it all.
func TestManualBansJournaled(t *testing.T) {
	dir := stateDir(t)
	a := netip.MustParseAddr("2001:db8::5")
	now := time.Now().Truncate(time.Second)
	for i := 0; i < 2; i++ {
		if err := RecordManualBans(dir, []ruleset.Ban{{Addr: a, Timeout: time.Hour, Reason: "manual: x"}}, now); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := ActiveBans(dir, now); err != nil || n != 1 {
		t.Fatalf("active %d %v", n, err)
	}
	if err := RecordUnbans(dir, []netip.Addr{a}); err != nil {
		t.Fatal(err)
	}
	for _, fold := range []bool{false, true} {
		if fold {
			if err := UpdateState(dir, func(*State) error { return nil }); err != nil {
				t.Fatal(err)
			}
		}
		st, err := LoadState(dir)
		if err != nil {
			t.Fatal(err)
		}
		r := st.Bans[a]
		if r == nil || r.Count != 2 || !r.Until.IsZero() || r.Reason != "manual: x" || !r.LastBan.Equal(now) {
			t.Errorf("fold=%v: %+v", fold, r)
		}
		if n, _ := ActiveBans(dir, now); n != 0 {
			t.Errorf("fold=%v: %d active after the unban", fold, n)
		}
	}
}

// The ban index counts what the whole history counts, through bans,
// unbans, guard appends and folds in any order; an index that does not
// match guard.json (edited by hand, damaged) is not used.
func TestIndexCountsLikeHistory(t *testing.T) {
	dir := stateDir(t)
	now := time.Now()
	slow := func() int {
		st, err := LoadState(dir)
		if err != nil {
			t.Fatal(err)
		}
		return activeBans(st.Bans, now)
	}
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}) }
	rnd := uint32(7)
	next := func(n int) int { rnd = rnd*1103515245 + 12345; return int(rnd>>16) % n }
	for step := 0; step < 300; step++ {
		a := addr(next(40))
		switch next(5) {
		case 0:
			if err := RecordManualBans(dir, []ruleset.Ban{{Addr: a, Timeout: time.Duration(next(3)-1) * time.Hour}}, now); err != nil {
				t.Fatal(err)
			}
		case 1:
			if err := RecordUnbans(dir, []netip.Addr{a}); err != nil {
				t.Fatal(err)
			}
		case 2:
			if _, err := Append(dir, map[netip.Addr]*Record{a: {Count: 1, LastBan: now, Until: now.Add(time.Duration(next(3)-1) * time.Hour)}}, "", nil); err != nil {
				t.Fatal(err)
			}
		case 3:
			if err := UpdateState(dir, func(*State) error { return nil }); err != nil {
				t.Fatal(err)
			}
		case 4:
			continue
		}
		fast, err := ActiveBans(dir, now)
		if err != nil {
			t.Fatal(err)
		}
		if want := slow(); fast != want {
			t.Fatalf("step %d: index counts %d, history %d", step, fast, want)
		}
		// How often each address was banned: the index and journal say
		// what the history says, for all addresses and for some.
		st, err := LoadState(dir)
		if err != nil {
			t.Fatal(err)
		}
		if counts, err := countsFromIndex(dir, nil); err == nil {
			for a, r := range st.Bans {
				if counts[a] != r.Count {
					t.Fatalf("step %d: %s banned %d times by the index, %d by the history", step, a, counts[a], r.Count)
				}
			}
		}
		some := []netip.Addr{addr(next(40)), addr(next(40))}
		got := BanCounts(dir, some)
		for _, a := range some {
			want := 0
			if r := st.Bans[a]; r != nil {
				want = r.Count
			}
			if got[a] != want {
				t.Fatalf("step %d: BanCounts(%s) = %d, history %d", step, a, got[a], want)
			}
		}
	}
	if _, err := countsFromIndex(dir, nil); err != nil {
		t.Fatalf("the index's counts were never usable: %v", err)
	}
	if _, err := countFromIndex(dir, now); err != nil {
		t.Fatalf("the index was never usable: %v", err)
	}
	// guard.json changed behind moat's back: the index is stale.
	if err := os.WriteFile(filepath.Join(dir, stateFile), []byte(`{"bans":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := countFromIndex(dir, now); !errors.Is(err, errStaleIndex) {
		t.Errorf("a stale index was used: %v", err)
	}
	if n, err := ActiveBans(dir, now); err != nil || n != slow() {
		t.Errorf("fallback: %d %v, want %d", n, err, slow())
	}
	// A damaged index is not used either.
	if err := UpdateState(dir, func(*State) error { return nil }); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, indexFile))
	if err := os.WriteFile(filepath.Join(dir, indexFile), data[:len(data)-5], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := countFromIndex(dir, now); err == nil {
		t.Error("a truncated index was used")
	}
}

// Whatever the journal holds (a crash, a disk error, a hostile edit by
// root), reading it neither panics nor fails: damaged records are skipped,
// and the index count agrees with the history.
func FuzzJournalReplay(f *testing.F) {
	f.Add([]byte(`{"bans":{"203.0.113.1":{"count":1,"until":"2030-01-01T00:00:00Z"}},"cursor":"c"}` + "\n"))
	f.Add([]byte(`{"manual":[{"addr":"2001:db8::1","until":"2030-01-01T00:00:00Z"}]}` + "\n" + `{"unbans":["2001:db8::1"]}` + "\n"))
	f.Add([]byte(`{"bans":{"x":null},"manual":[{"addr":""}],"unbans":[""]}` + "\n{\"cur"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := filepath.Join(t.TempDir(), "state")
		if _, err := Append(dir, nil, "start", nil); err != nil {
			t.Fatal(err)
		}
		appendRaw(t, dir, string(data))
		st, err := LoadState(dir)
		if err != nil {
			t.Fatalf("%v", err)
		}
		now := time.Now()
		over, err := journalUntils(dir)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, u := range over {
			if u.After(now) {
				n++
			}
		}
		if want := activeBans(st.Bans, now); n != want {
			t.Errorf("journal count %d, history %d", n, want)
		}
	})
}

// LoadState takes no lock (the engine reads the history while the guard
// runs): a fold between its read of guard.json and its read of the
// journal (the guard renames the new guard.json in, then removes the
// journal it folded) left it with the guard.json of before and no
// journal, so the bans of the journal were missing, and a rollback
// finished after a cut lifted an address the guard had banned again
// (engine.bannedSince). It reads again when guard.json changed under it.
// Also the first fold, which makes guard.json.
func TestLoadStateDuringFold(t *testing.T) {
	for _, first := range []bool{false, true} {
		t.Run(fmt.Sprint("first fold ", first), func(t *testing.T) { loadStateDuringFold(t, first, LoadState) })
		// LookupHistory (a rollback's bannedSince) reads again as well.
		t.Run(fmt.Sprint("lookup, first fold ", first), func(t *testing.T) {
			loadStateDuringFold(t, first, func(dir string) (*State, error) {
				bans, err := LookupHistory(dir, []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8::9")}, 1<<20)
				return &State{Bans: bans}, err
			})
		})
	}
}

func loadStateDuringFold(t *testing.T, first bool, load func(dir string) (*State, error)) {
	dir := stateDir(t)
	now := time.Now()
	a := netip.MustParseAddr
	if err := RecordManualBans(dir, []ruleset.Ban{{Addr: a("198.51.100.7"), Timeout: time.Hour}}, now); err != nil {
		t.Fatal(err)
	}
	if !first {
		if err := UpdateState(dir, func(*State) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if err := RecordManualBans(dir, []ruleset.Ban{{Addr: a("2001:db8::9"), Timeout: time.Hour}}, now); err != nil {
		t.Fatal(err)
	}
	folded := false
	afterStateRead = func() {
		if !folded {
			folded = true
			if err := UpdateState(dir, func(*State) error { return nil }); err != nil {
				t.Error(err)
			}
		}
	}
	defer func() { afterStateRead = nil }()
	st, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !folded {
		t.Fatal("no fold happened during the read")
	}
	for _, want := range []string{"198.51.100.7", "2001:db8::9"} {
		if r := st.Bans[a(want)]; r == nil || !r.Until.After(now) {
			t.Errorf("%s missing from the history read during a fold: %+v", want, st.Bans)
		}
	}
}

// A kill (of the guard folding its journal, or of a status writing the
// index) while guard.json or guard.index is written leaves its hidden
// temporary file; nothing removed it (the engine's repair keeps the
// guard's files: they are written under the guard's own lock), so it
// stayed for good, one more each kill. The next writer under that lock
// ('moat ban', the guard) and a reader that takes it (status, 'moat bans')
// remove them; other files stay.
func TestKillLeftTempsRemoved(t *testing.T) {
	for _, next := range []string{"append", "update", "index"} {
		t.Run(next, func(t *testing.T) {
			dir := stateDir(t)
			now := time.Now().Truncate(time.Second)
			if _, err := Append(dir, rec(1, now.Add(time.Hour)), "c1", nil); err != nil {
				t.Fatal(err)
			}
			if err := UpdateState(dir, func(*State) error { return nil }); err != nil {
				t.Fatal(err)
			}
			left := []string{"." + stateFile + ".123.tmp", "." + indexFile + ".456.tmp"}
			kept := []string{"." + stateFile + ".x.tmp", ".other.789.tmp"}
			for _, name := range append(left, kept...) {
				if err := os.WriteFile(filepath.Join(dir, name), []byte("{"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var err error
			switch next {
			case "append":
				_, err = Append(dir, rec(2, now.Add(time.Hour)), "c2", nil)
			case "update":
				err = UpdateState(dir, func(*State) error { return nil })
			case "index":
				// No index: the count reads guard.json and writes one.
				if err := os.Remove(filepath.Join(dir, indexFile)); err != nil {
					t.Fatal(err)
				}
				_, err = ActiveBans(dir, now)
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range left {
				if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("left: %s (%v)", name, err)
				}
			}
			for _, name := range kept {
				if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
					t.Errorf("removed: %s (%v)", name, err)
				}
			}
		})
	}
}
