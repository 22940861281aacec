package guard

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/ruleset"
)

// Record is an address's ban history, kept for escalation.
type Record struct {
	Count   int       `json:"count"`
	LastBan time.Time `json:"last_ban"`
	Until   time.Time `json:"until"`
	Reason  string    `json:"reason"`
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
}

const (
	stateFile     = "guard.json"
	journalFile   = "guard.journal"
	stateLockFile = "guard.lock"
)

// journalEntry is one appended change: bans made, or the read position.
// Appending costs the size of the change, not of the whole history, so the
// guard can record every batch of bans at once (and a crash loses none);
// UpdateState folds the journal into guard.json.
type journalRecord struct {
	Bans   map[netip.Addr]*Record `json:"bans,omitempty"`
	Cursor string                 `json:"cursor,omitempty"`
	File   *FilePos               `json:"file,omitempty"`
}

func (st *State) apply(j journalRecord) {
	for a, r := range j.Bans {
		st.Bans[a] = r
	}
	if j.Cursor != "" {
		st.JournalCursor = j.Cursor
	}
	if j.File != nil {
		st.File = j.File
	}
}

// Append records a change in the journal (under the lock, fsynced) and
// returns how many records the journal holds.
func Append(dir string, bans map[netip.Addr]*Record, cursor string, file *FilePos) (int, error) {
	unlock, err := lockState(dir)
	if err != nil {
		return 0, err
	}
	defer unlock()
	data, err := json.Marshal(journalRecord{Bans: bans, Cursor: cursor, File: file})
	if err != nil {
		return 0, err
	}
	f, err := os.OpenFile(filepath.Join(dir, journalFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("guard journal: %w", err)
	}
	defer func() { _ = f.Close() }() // after Sync, closing loses nothing
	if _, err := f.Write(append(data, '\n')); err != nil {
		return 0, fmt.Errorf("guard journal: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("guard journal: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return int(fi.Size()), nil
}

func lockState(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("guard state: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, stateLockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("guard state lock: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return nil, errors.Join(fmt.Errorf("guard state lock: %w", err), lf.Close())
	}
	// Closing the only descriptor releases the lock.
	return func() { _ = lf.Close() }, nil
}

// LoadState reads the guard's state; a missing file is an empty state.
func LoadState(dir string) (*State, error) {
	st := &State{Bans: map[netip.Addr]*Record{}}
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, replayJournal(dir, st)
	}
	if err != nil {
		return nil, fmt.Errorf("read guard state: %w", err)
	}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("read guard state %s: %w", filepath.Join(dir, stateFile), err)
	}
	if st.Bans == nil {
		st.Bans = map[netip.Addr]*Record{}
	}
	return st, replayJournal(dir, st)
}

// replayJournal applies the journal's records; a torn last line (a crash
// mid-write) is ignored.
func replayJournal(dir string, st *State) error {
	f, err := os.Open(filepath.Join(dir, journalFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read guard journal: %w", err)
	}
	defer func() { _ = f.Close() }() // read only
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	for sc.Scan() {
		var j journalRecord
		if json.Unmarshal(sc.Bytes(), &j) == nil {
			st.apply(j)
		}
	}
	return sc.Err()
}

// UpdateState changes the state under a lock (the service and the ban
// commands share it), writes it atomically (temp file, fsync, rename) with
// the journal folded in, and empties the journal.
func UpdateState(dir string, fn func(*State) error) error {
	unlock, err := lockState(dir)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := LoadState(dir)
	if err != nil {
		return err
	}
	if err := fn(st); err != nil {
		return err
	}
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, stateFile), data, 0o600); err != nil {
		return fmt.Errorf("guard state: %w", err)
	}
	if err := os.Remove(filepath.Join(dir, journalFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("fold guard journal: %w", err)
	}
	return nil
}

// RecordManualBans adds bans made by 'moat ban' to the history.
func RecordManualBans(dir string, bans []ruleset.Ban, now time.Time) error {
	return UpdateState(dir, func(st *State) error {
		for _, b := range bans {
			r := st.Bans[b.Addr]
			if r == nil {
				r = &Record{}
				st.Bans[b.Addr] = r
			}
			r.Count++
			r.LastBan, r.Until, r.Reason = now, now.Add(b.Timeout), b.Reason
		}
		return nil
	})
}

// RecordUnbans marks lifted bans (the history of counts stays).
func RecordUnbans(dir string, addrs []netip.Addr) error {
	return UpdateState(dir, func(st *State) error {
		for _, a := range addrs {
			if r := st.Bans[a]; r != nil {
				r.Until = time.Time{}
			}
		}
		return nil
	})
}

// BanCounts reads how often each address was banned (empty if unknown).
func BanCounts(dir string) map[netip.Addr]int {
	out := map[netip.Addr]int{}
	st, err := LoadState(dir)
	if err != nil {
		return out
	}
	for a, r := range st.Bans {
		out[a] = r.Count
	}
	return out
}
