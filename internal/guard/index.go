package guard

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/moat-fw/moat/internal/statedir"
)

// indexFile lists, for every address in guard.json, when its ban ends: 24
// bytes an address (16 of address, 8 of Unix nanoseconds), after a header
// naming the guard.json it was made from (inode, size, mtime). 'moat
// status' counts active bans from it and the journal in milliseconds,
// where decoding a guard.json of 200,000 addresses takes seconds. An index
// that does not match guard.json is ignored.
const indexFile = "guard.index"

var indexMagic = []byte("MOATIDX1")

const indexHeader = 8 + 3*8

// fileKey identifies one version of a file: a rename gives a new inode.
func fileKey(fi os.FileInfo) [3]uint64 {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return [3]uint64{ino, uint64(fi.Size()), uint64(fi.ModTime().UnixNano())}
}

// writeIndex writes the index of st, just written as guard.json.
func writeIndex(dir string, st *State) error {
	fi, err := os.Lstat(dir + "/" + stateFile)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	b.Grow(indexHeader + 24*len(st.Bans))
	b.Write(indexMagic)
	for _, v := range fileKey(fi) {
		_ = binary.Write(&b, binary.BigEndian, v) // a bytes.Buffer does not fail
	}
	for a, r := range st.Bans {
		a16 := a.As16()
		b.Write(a16[:])
		var until int64
		if !r.Until.IsZero() {
			until = r.Until.UnixNano()
		}
		_ = binary.Write(&b, binary.BigEndian, until)
	}
	return statedir.WriteFile(dir, indexFile, b.Bytes())
}

var errStaleIndex = errors.New("guard index does not match guard.json")

// countFromIndex counts active bans from the index plus the journal.
func countFromIndex(dir string, now time.Time) (int, error) {
	fi, err := os.Lstat(dir + "/" + stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return 0, errStaleIndex // no guard.json: the journal alone, the slow way is fast
	}
	if err != nil {
		return 0, err
	}
	data, err := statedir.ReadFile(dir, indexFile)
	if err != nil {
		return 0, err
	}
	if len(data) < indexHeader || !bytes.Equal(data[:8], indexMagic) || (len(data)-indexHeader)%24 != 0 {
		return 0, errStaleIndex
	}
	key := fileKey(fi)
	for i, v := range key {
		if binary.BigEndian.Uint64(data[8+8*i:]) != v {
			return 0, errStaleIndex
		}
	}
	over, err := journalUntils(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	nowNS := now.UnixNano()
	for p := indexHeader; p < len(data); p += 24 {
		a := netip.AddrFrom16([16]byte(data[p : p+16])).Unmap()
		if _, ok := over[a]; ok {
			continue
		}
		if until := int64(binary.BigEndian.Uint64(data[p+16:])); until > nowNS {
			n++
		}
	}
	for _, until := range over {
		if until.After(now) {
			n++
		}
	}
	return n, nil
}

// journalUntils replays the journal for when each address's ban ends.
func journalUntils(dir string) (map[netip.Addr]time.Time, error) {
	out := map[netip.Addr]time.Time{}
	f, err := statedir.OpenFile(dir, journalFile, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read guard journal: %w", err)
	}
	defer func() { _ = f.Close() }() // read only
	lr := newLineReader(f, maxJournalRecord)
	for {
		line, _, tooLong, err := lr.next()
		var j journalRecord
		if !tooLong && len(line) > 0 && json.Unmarshal(line, &j) == nil {
			for a, r := range j.Bans {
				if r != nil && a.IsValid() {
					out[a] = r.Until
				}
			}
			for _, m := range j.Manual {
				if m.Addr.IsValid() {
					out[m.Addr] = m.Until
				}
			}
			for _, a := range j.Unbans {
				out[a] = time.Time{}
			}
		}
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read guard journal: %w", err)
		}
	}
}
