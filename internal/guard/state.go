package guard

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/statedir"
)

// Record is an address's ban history, kept for escalation.
type Record struct {
	Count   int       `json:"count"`
	LastBan time.Time `json:"last_ban"`
	Until   time.Time `json:"until"`
	Reason  string    `json:"reason"`
}

// ended is when the record's last ban ended (or was lifted).
func (r *Record) ended() time.Time {
	if r.LastBan.After(r.Until) {
		return r.LastBan
	}
	return r.Until
}

// FilePos is where the file source stopped reading.
type FilePos struct {
	Path   string `json:"path"`
	Inode  uint64 `json:"inode"`
	Offset int64  `json:"offset"`
}

// State is what the guard keeps across restarts, in STATE/guard.json.
type State struct {
	Bans          map[netip.Addr]*Record `json:"bans"`
	JournalCursor string                 `json:"journal_cursor,omitempty"`
	File          *FilePos               `json:"file,omitempty"`
	// Folded is the journal this state folded in: a fold cut short
	// (kill -9) after guard.json was written leaves that journal, and
	// its first Size bytes are then not replayed again ('moat ban'
	// records count one more ban each: replayed twice, twice counted).
	Folded *Folded `json:"folded_journal,omitempty"`
}

// Folded names a folded journal: the ID of its first record and how many
// of its bytes were folded.
type Folded struct {
	ID   string `json:"id"`
	Size int64  `json:"size"`
}

const (
	stateFile   = "guard.json"
	journalFile = "guard.journal"
	// stateLockFile serializes changes of guard.json and the journal
	// (the guard, 'moat ban', 'moat unban'); held for milliseconds.
	stateLockFile = "guard.state.lock"
	// corruptKeep is how many corrupt state files are kept aside.
	corruptKeep = 5
	// maxJournalRecord bounds one journal record (a batch of at most
	// maxBatch bans is about 150 KB); a longer line is damage, skipped.
	maxJournalRecord = 64 << 20
)

// journalRecord is one appended change: bans made, or the read position.
// Appending costs the size of the change, not of the whole history, so the
// guard can record every batch of bans at once (and a crash loses none);
// UpdateState folds the journal into guard.json.
type journalRecord struct {
	Bans   map[netip.Addr]*Record `json:"bans,omitempty"`
	Cursor string                 `json:"cursor,omitempty"`
	File   *FilePos               `json:"file,omitempty"`
	// Manual bans ('moat ban') count one more ban each; Unbans lift
	// bans and keep the counts. They are changes, not whole records, so
	// the ban commands append without reading the history.
	Manual []manualBan  `json:"manual,omitempty"`
	Unbans []netip.Addr `json:"unbans,omitempty"`
	// Journal, in a journal's first record alone, is a random ID of that
	// journal (State.Folded).
	Journal string `json:"journal,omitempty"`
}

type manualBan struct {
	Addr   netip.Addr `json:"addr"`
	At     time.Time  `json:"at"`
	Until  time.Time  `json:"until"`
	Reason string     `json:"reason,omitempty"`
}

func (st *State) apply(j journalRecord) {
	for a, r := range j.Bans {
		if r != nil && a.IsValid() {
			st.Bans[a] = r
		}
	}
	for _, m := range j.Manual {
		if !m.Addr.IsValid() {
			continue
		}
		r := st.Bans[m.Addr]
		if r == nil {
			r = &Record{}
			st.Bans[m.Addr] = r
		}
		r.Count++
		r.LastBan, r.Until, r.Reason = m.At, m.Until, m.Reason
	}
	for _, a := range j.Unbans {
		if r := st.Bans[a]; r != nil {
			r.Until = time.Time{}
		}
	}
	if j.Cursor != "" {
		st.JournalCursor = j.Cursor
	}
	if j.File != nil {
		st.File = j.File
	}
}

// Prune forgets addresses whose last ban ended more than keep ago (the
// guard passes bantime-max): escalation only looks that far back, and the
// history must not grow with every address ever banned. It returns how
// many it forgot.
func (st *State) Prune(now time.Time, keep time.Duration) int {
	return pruneHistory(st.Bans, now, keep)
}

func pruneHistory(h map[netip.Addr]*Record, now time.Time, keep time.Duration) int {
	if keep <= 0 {
		return 0
	}
	cutoff := now.Add(-keep)
	n := 0
	for a, r := range h {
		if r.ended().Before(cutoff) {
			delete(h, a)
			n++
		}
	}
	return n
}

// Append records a change in the journal (under the lock, fsynced) and
// returns the journal's size in bytes. A torn last record (a crash
// mid-write) is closed off first, so it cannot swallow this one.
func Append(dir string, bans map[netip.Addr]*Record, cursor string, file *FilePos) (int64, error) {
	return appendRecord(dir, journalRecord{Bans: bans, Cursor: cursor, File: file})
}

func appendRecord(dir string, rec journalRecord) (int64, error) {
	unlock, err := lockState(dir)
	if err != nil {
		return 0, err
	}
	defer unlock()
	data, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	f, err := statedir.OpenFile(dir, journalFile, os.O_CREATE|os.O_RDWR|os.O_APPEND, statedir.Perm)
	if err != nil {
		return 0, fmt.Errorf("guard journal: %w", err)
	}
	defer func() { _ = f.Close() }() // after Sync, closing loses nothing
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("guard journal: %w", err)
	}
	if fi.Size() == 0 {
		// A new journal starts with its ID (State.Folded).
		var id [12]byte
		if _, err := rand.Read(id[:]); err != nil {
			return 0, fmt.Errorf("guard journal: %w", err)
		}
		data = append([]byte(`{"journal":"`+hex.EncodeToString(id[:])+"\"}\n"), data...)
	}
	if size := fi.Size(); size > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, size-1); err != nil {
			return 0, fmt.Errorf("guard journal: %w", err)
		}
		if last[0] != '\n' {
			data = append([]byte{'\n'}, data...)
		}
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		return 0, fmt.Errorf("guard journal: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("guard journal: %w", err)
	}
	return fi.Size() + int64(len(data)) + 1, nil
}

func lockState(dir string) (func(), error) {
	l, err := statedir.WaitLock(dir, stateLockFile, nil)
	if err != nil {
		return nil, fmt.Errorf("guard state: %w", err)
	}
	removeLeftTemps(dir)
	return l.Unlock, nil
}

// removeLeftTemps removes the temporary files a kill left beside
// guard.json and guard.index (written under stateLockFile, which the
// caller holds: none is being written now). The engine's repair leaves
// them to the guard. A file that cannot be removed is hidden and
// harmless: only logged.
func removeLeftTemps(dir string) {
	err := atomicfile.RemovePrepared(dir, func(name string) bool { return name == stateFile || name == indexFile })
	if err != nil {
		slog.Warn("files left by an interrupted write of the guard's state", "err", err)
	}
}

// CorruptError says guard.json cannot be read as a state.
type CorruptError struct {
	Path string
	Err  error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("guard state %s is corrupt: %v", e.Path, e.Err)
}
func (e *CorruptError) Unwrap() error { return e.Err }

// LoadState reads the guard's state (guard.json, then the journal); a
// missing file is an empty state, an unreadable guard.json a
// *CorruptError. It changes nothing on disk and takes no lock: when
// guard.json was replaced while it read (a fold renames the new one in,
// then removes the journal it folded), it reads again, as the journal
// it found may not be the one the guard.json it read goes with.
func LoadState(dir string) (*State, error) {
	var st *State
	err := readAgainWhileFolded(dir, func() (err error) {
		st, _, _, err = loadState(dir)
		return err
	})
	return st, err
}

// readAgainWhileFolded runs read (of guard.json, then of the journal)
// again while guard.json was replaced under it (a fold renamed a new one
// in: the journal read may not be the one the guard.json read goes
// with), three times at most; read's last error.
func readAgainWhileFolded(dir string, read func() error) error {
	path := filepath.Join(dir, stateFile)
	for try := 1; ; try++ {
		before, berr := os.Lstat(path)
		err := read()
		after, aerr := os.Lstat(path)
		same := errors.Is(berr, os.ErrNotExist) && errors.Is(aerr, os.ErrNotExist) ||
			berr == nil && aerr == nil && fileKey(before) == fileKey(after)
		if same || try == 3 {
			return err
		}
	}
}

// loadState also returns how many journal lines were damaged (skipped),
// and the journal as read (replayJournal).
func loadState(dir string) (*State, int, Folded, error) {
	st, err := readStateFile(dir)
	if err != nil {
		return nil, 0, Folded{}, err
	}
	if afterStateRead != nil {
		afterStateRead()
	}
	bad, read, err := replayJournal(dir, st)
	return st, bad, read, err
}

// afterStateRead, set by tests, runs between the reads of guard.json and
// of the journal.
var afterStateRead func()

// readStateFile reads guard.json alone (an empty state when missing).
func readStateFile(dir string) (*State, error) {
	st := &State{Bans: map[netip.Addr]*Record{}}
	data, err := statedir.ReadFile(dir, stateFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read guard state: %w", err)
	default:
		if err := json.Unmarshal(data, st); err != nil {
			return nil, &CorruptError{Path: filepath.Join(dir, stateFile), Err: err}
		}
		if st.Bans == nil {
			st.Bans = map[netip.Addr]*Record{}
		}
		for a, r := range st.Bans {
			if r == nil || !a.IsValid() {
				delete(st.Bans, a)
			}
		}
	}
	return st, nil
}

// loadIndexing is LoadState for a reader that found the index unusable
// (damaged, stale, of an older version): guard.json is decoded anyway,
// so its index is written again, under the state lock (no fold renames
// guard.json meanwhile), unless a fold cut short left the journal it
// folded in (the readers of the index replay the whole journal: its
// bans would count twice; the guard's next fold writes it). Without the
// lock (a reader that may not take it, or another holds it) nothing is
// written.
func loadIndexing(dir string) (*State, error) {
	if _, err := os.Lstat(filepath.Join(dir, stateFile)); err != nil {
		return LoadState(dir) // no guard.json: nothing to index
	}
	// Only when the lock is free at once: a status must not wait for the
	// guard (a fold of a large history, a journal write on a slow disk).
	l, err := statedir.TryLock(dir, stateLockFile)
	if err != nil {
		return LoadState(dir)
	}
	defer l.Unlock()
	removeLeftTemps(dir)
	before, err := os.Lstat(filepath.Join(dir, stateFile))
	if err != nil {
		return LoadState(dir)
	}
	st, err := readStateFile(dir)
	if err != nil {
		return nil, err
	}
	idx := indexBytes(before, st)
	_, read, err := replayJournal(dir, st)
	if err != nil {
		return nil, err
	}
	after, serr := os.Lstat(filepath.Join(dir, stateFile))
	if serr == nil && fileKey(after) == fileKey(before) && (st.Folded == nil || read.ID != st.Folded.ID) {
		_ = statedir.WriteFile(dir, indexFile, idx) // a shortcut: without it the next reader decodes guard.json again
	}
	return st, nil
}

// replayJournal applies the journal's records, but not those st folded
// in already (st.Folded: the same journal, left by a fold cut short). A
// damaged record (a torn last line after a crash mid-write, or worse) is
// skipped and counted. read is the journal as read: its ID and size,
// what a fold of st records in st.Folded.
func replayJournal(dir string, st *State) (bad int, read Folded, err error) {
	f, err := statedir.OpenFile(dir, journalFile, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, read, nil
	}
	if err != nil {
		return 0, read, fmt.Errorf("read guard journal: %w", err)
	}
	defer func() { _ = f.Close() }() // read only
	lr := newLineReader(f, maxJournalRecord)
	var skip int64 // the bytes st folded in already
	for first := true; ; first = false {
		line, n, tooLong, err := lr.next()
		at := read.Size
		read.Size += int64(n)
		if tooLong {
			bad++
		} else if len(line) > 0 {
			var j journalRecord
			if json.Unmarshal(line, &j) == nil {
				if first && j.Journal != "" {
					read.ID = j.Journal
					if st.Folded != nil && st.Folded.ID == j.Journal {
						skip = st.Folded.Size
					}
				}
				if at >= skip {
					st.apply(j)
				}
			} else if at >= skip {
				bad++
			}
		}
		if errors.Is(err, io.EOF) {
			return bad, read, nil
		}
		if err != nil {
			return bad, read, fmt.Errorf("read guard journal: %w", err)
		}
	}
}

// quarantine moves a corrupt guard.json aside (guard.json.corrupt-TIME),
// keeping the newest few, and returns where it went.
func quarantine(dir string) (string, error) {
	name := stateFile + ".corrupt-" + time.Now().UTC().Format("20060102T150405.000000000")
	if err := os.Rename(filepath.Join(dir, stateFile), filepath.Join(dir, name)); err != nil {
		return "", fmt.Errorf("move corrupt guard state aside: %w", err)
	}
	entries, _ := os.ReadDir(dir)
	var old []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), stateFile+".corrupt-") {
			old = append(old, e.Name())
		}
	}
	sort.Strings(old)
	for len(old) > corruptKeep {
		_ = statedir.Remove(dir, old[0]) // only a bound on kept copies
		old = old[1:]
	}
	return filepath.Join(dir, name), nil
}

// UpdateState changes the state under a lock (the service and the ban
// commands share it), writes it atomically (temp file, fsync, rename) with
// the journal folded in, and empties the journal. A corrupt guard.json is
// moved aside (logged loudly to slog's default logger) and the state starts
// over from the journal: losing escalation history is better than a guard
// or a ban command that can never run again.
func UpdateState(dir string, fn func(*State) error) error {
	return updateState(dir, slog.Default(), fn)
}

func updateState(dir string, log *slog.Logger, fn func(*State) error) error {
	unlock, err := lockState(dir)
	if err != nil {
		return err
	}
	defer unlock()
	st, bad, read, err := loadState(dir)
	var corrupt *CorruptError
	if errors.As(err, &corrupt) {
		aside, qerr := quarantine(dir)
		if qerr != nil {
			return errors.Join(err, qerr)
		}
		log.Error("the guard's state was corrupt: moved aside, starting with an empty ban history (bans in the kernel stay)",
			"file", corrupt.Path, "kept_as", aside, "err", corrupt.Err)
		st, bad, read, err = loadState(dir)
	}
	if err != nil {
		return err
	}
	if bad > 0 {
		log.Warn("skipped damaged records in the guard's journal (a crash mid-write)", "file", filepath.Join(dir, journalFile), "records", bad)
	}
	if err := fn(st); err != nil {
		return err
	}
	st.Folded = nil
	if read.ID != "" {
		st.Folded = &read
	}
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := statedir.WriteFile(dir, stateFile, data); err != nil {
		return fmt.Errorf("guard state: %w", err)
	}
	if foldKill != nil {
		if err := foldKill("state-written"); err != nil {
			return err
		}
	}
	if err := statedir.Remove(dir, journalFile); err != nil {
		return fmt.Errorf("fold guard journal: %w", err)
	}
	// The index after the journal's removal: readers of the index replay
	// the journal without guard.json's Folded, and an index that matches
	// guard.json while the folded journal is still there would count its
	// bans twice. Until it is written the index does not match guard.json
	// and readers decode guard.json.
	if err := writeIndex(dir, st); err != nil {
		// Only a shortcut for counting: without it, status decodes
		// guard.json.
		log.Warn("could not write the guard's ban index", "err", err)
	}
	return nil
}

// RecordManualBans adds bans made by 'moat ban' to the history: one
// appended journal record, whatever the size of the history.
func RecordManualBans(dir string, bans []ruleset.Ban, now time.Time) error {
	rec := journalRecord{}
	for _, b := range bans {
		rec.Manual = append(rec.Manual, manualBan{Addr: b.Addr, At: now, Until: now.Add(b.Timeout), Reason: b.Reason})
	}
	_, err := appendRecord(dir, rec)
	return err
}

// RecordUnbans marks lifted bans (the history of counts stays).
func RecordUnbans(dir string, addrs []netip.Addr) error {
	_, err := appendRecord(dir, journalRecord{Unbans: addrs})
	return err
}

// ActiveBans counts the bans the history says are in force: what 'moat
// status' shows. It reads guard.index and the journal when the index
// matches guard.json, else the whole history. Listing the kernel's sets instead costs seconds with
// 100,000 bans (the kernel walks a set from its start for every part of a
// dump); the guard puts back any ban the kernel lost when it starts.
func ActiveBans(dir string, now time.Time) (int, error) {
	if n, err := countFromIndex(dir, now); err == nil {
		return n, nil
	}
	st, err := loadIndexing(dir)
	if err != nil {
		return 0, err
	}
	return activeBans(st.Bans, now), nil
}

// BanCounts reads how often each address was banned (empty if unknown):
// only those of addrs (all when addrs is nil). It reads guard.index and
// the journal when the index matches guard.json (milliseconds), else the
// whole history (seconds with 200,000 addresses).
func BanCounts(dir string, addrs []netip.Addr) map[netip.Addr]int {
	var want map[netip.Addr]bool
	if addrs != nil {
		want = make(map[netip.Addr]bool, len(addrs))
		for _, a := range addrs {
			want[a.Unmap()] = true
		}
	}
	if out, err := countsFromIndex(dir, want); err == nil {
		return out
	}
	out := map[netip.Addr]int{}
	st, err := loadIndexing(dir)
	if err != nil {
		return out
	}
	for a, r := range st.Bans {
		out[a] = r.Count
	}
	return out
}

// foldKill, set by tests, stops a fold at a step as kill -9 would.
var foldKill func(step string) error
