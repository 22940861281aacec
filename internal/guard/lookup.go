package guard

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/moat-fw/moat/internal/boundedfile"
	"github.com/moat-fw/moat/internal/statedir"
)

// LookupHistory reads the history of a few addresses (addrs) from
// guard.json and the journal, as LoadState would give them, without
// holding the whole history: guard.json is decoded as a stream and only
// the records of addrs are kept, and a guard.json of more than max bytes
// is refused unread (a *boundedfile.TooLargeError). A damaged guard.json
// is a *CorruptError. A rollback reads the records of the bans it lifted
// this way: the history may hold 200,000 addresses (35 MB), and the
// state directory's files are read as hostile.
func LookupHistory(dir string, addrs []netip.Addr, max int64) (map[netip.Addr]*Record, error) {
	want := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		want[a] = true
	}
	var st *State
	err := readAgainWhileFolded(dir, func() (err error) {
		if st, err = readStateWanted(dir, want, max); err != nil {
			return err
		}
		if afterStateRead != nil {
			afterStateRead()
		}
		_, _, err = replayJournal(dir, st)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Addr]*Record, len(addrs))
	for a, r := range st.Bans {
		if want[a] && r != nil {
			out[a] = r
		}
	}
	return out, nil
}

// readStateWanted is readStateFile keeping only the records of want, and
// reading at most max bytes.
func readStateWanted(dir string, want map[netip.Addr]bool, max int64) (*State, error) {
	st := &State{Bans: map[netip.Addr]*Record{}}
	f, err := statedir.OpenFile(dir, stateFile, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read guard state: %w", err)
	}
	defer func() { _ = f.Close() }() // read only
	path := filepath.Join(dir, stateFile)
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		return nil, fmt.Errorf("read guard state %s: %w", path, &boundedfile.TooLargeError{Size: fi.Size(), Max: max})
	}
	// One byte more than max is read, so that a file of max bytes ends
	// (EOF) where one that grew past max is seen to.
	lr := &limitReader{r: bufio.NewReaderSize(f, 64<<10), left: max + min(1, math.MaxInt64-max)}
	if err := decodeWanted(json.NewDecoder(lr), st, want); err != nil {
		if lr.over {
			return nil, fmt.Errorf("read guard state %s: %w", path, &boundedfile.TooLargeError{Size: -1, Max: max})
		}
		return nil, &CorruptError{Path: path, Err: err}
	}
	return st, nil
}

// limitReader reads at most left bytes of r; over says it was asked for
// more (the file grew past the bound while read).
type limitReader struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		l.over = true
		return 0, errors.New("file too large")
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	if l.left <= 0 {
		l.over = true
		return 0, errors.New("file too large")
	}
	return n, err
}

// decodeWanted decodes guard.json's object from dec into st as
// json.Unmarshal does (the names of its fields in any case, a field twice
// decoded twice, null for the whole), keeping of its bans only those of
// want; one record at a time is decoded.
func decodeWanted(dec *json.Decoder, st *State, want map[netip.Addr]bool) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); tok != nil && (!ok || d != '{') {
		return fmt.Errorf("%v where an object was expected", tok)
	}
	for tok != nil && dec.More() {
		key, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := key.(string)
		switch {
		case strings.EqualFold(k, "bans"):
			if err := decodeBansWanted(dec, st, want); err != nil {
				return fmt.Errorf("bans: %w", err)
			}
		case strings.EqualFold(k, "journal_cursor"):
			err = dec.Decode(&st.JournalCursor)
		case strings.EqualFold(k, "file"):
			err = dec.Decode(&st.File)
		case strings.EqualFold(k, "folded_journal"):
			err = dec.Decode(&st.Folded)
		default:
			var skip json.RawMessage
			err = dec.Decode(&skip)
		}
		if err != nil {
			return fmt.Errorf("%v: %w", k, err)
		}
	}
	if tok != nil {
		if err := expectDelim(dec, '}'); err != nil {
			return err
		}
	}
	// Nothing after the object (as json.Unmarshal).
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the state's object")
	}
	for a, r := range st.Bans {
		if r == nil || !a.IsValid() {
			delete(st.Bans, a)
		}
	}
	return nil
}

// decodeBansWanted decodes the "bans" object (null empties it, as
// json.Unmarshal sets the map to nil). Every record is decoded (a record
// of the wrong type is damage, whoever it is of), and kept only when of
// want: the last one of an address twice, null included.
func decodeBansWanted(dec *json.Decoder, st *State, want map[netip.Addr]bool) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		clear(st.Bans)
		return nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("%v where an object was expected", tok)
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := key.(string)
		var a netip.Addr // as json.Unmarshal reads a key: "" is the zero address
		if err := a.UnmarshalText([]byte(k)); err != nil {
			return fmt.Errorf("key %q: %w", k, err)
		}
		var r *Record
		if err := dec.Decode(&r); err != nil {
			return fmt.Errorf("%s: %w", a, err)
		}
		if want[a] {
			st.Bans[a] = r
		}
	}
	return expectDelim(dec, '}')
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("%v where %v was expected", tok, want)
	}
	return nil
}
