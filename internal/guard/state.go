package guard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

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
	stateLockFile = "guard.lock"
)

// LoadState reads the guard's state; a missing file is an empty state.
func LoadState(dir string) (*State, error) {
	st := &State{Bans: map[netip.Addr]*Record{}}
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
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
	return st, nil
}

// UpdateState changes the state under a lock (the service and the ban
// commands share it) and writes it atomically: temp file, fsync, rename.
func UpdateState(dir string, fn func(*State) error) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("guard state: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, stateLockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("guard state lock: %w", err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("guard state lock: %w", err)
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
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
	tmp, err := os.CreateTemp(dir, "."+stateFile+".*")
	if err != nil {
		return fmt.Errorf("write guard state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write guard state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write guard state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write guard state: %w", err)
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, stateFile))
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
