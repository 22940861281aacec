package guard

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/moat-fw/moat/internal/statedir"
)

// indexFile lists, for every address in guard.json, when its ban ends
// and how often it was banned: 28 bytes an address (16 of address, 8 of
// Unix nanoseconds, 4 of count), after a header naming the guard.json it
// was made from (inode, size, mtime), and ends with the CRC-32C of all
// that. 'moat status' counts active bans from it and the journal in
// milliseconds, and 'moat bans' reads the ban counts, where decoding a
// guard.json of 200,000 addresses takes seconds. An index that does not
// match guard.json, or its checksum (a damaged disk, a hand edit), is
// ignored, and the reader that decoded guard.json instead writes it
// again. Versions 1 and 2 (written by older moats, without a checksum)
// are not trusted either: the first reader replaces them.
const indexFile = "guard.index"

var indexMagic = []byte("MOATIDX3")

const (
	indexHeader = 8 + 3*8
	indexEntry  = 28
	indexSum    = 4 // the CRC-32C trailer
)

// castagnoliTable is made on first use: crc32.MakeTable(Castagnoli)
// builds the SSE 4.2 folding tables, about 0.2 ms of CPU that every moat
// command paid at start-up (the package's initialisation) though only the
// guard's index uses it.
var castagnoliTable = sync.OnceValue(func() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) })

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
	return statedir.WriteFile(dir, indexFile, indexBytes(fi, st))
}

// indexBytes is the index of st, read from or written as the guard.json
// fi.
func indexBytes(fi os.FileInfo, st *State) []byte {
	var b bytes.Buffer
	b.Grow(indexHeader + indexEntry*len(st.Bans) + indexSum)
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
		_ = binary.Write(&b, binary.BigEndian, uint32(min(max(r.Count, 0), math.MaxUint32)))
	}
	_ = binary.Write(&b, binary.BigEndian, crc32.Checksum(b.Bytes(), castagnoliTable()))
	return b.Bytes()
}

var errStaleIndex = errors.New("guard index does not match guard.json")

// readIndex reads the index if it matches guard.json and its checksum,
// without its checksum.
func readIndex(dir string) (data []byte, err error) {
	fi, err := os.Lstat(dir + "/" + stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, errStaleIndex // no guard.json: the journal alone, the slow way is fast
	}
	if err != nil {
		return nil, err
	}
	data, err = statedir.ReadFile(dir, indexFile)
	if err != nil {
		return nil, err
	}
	if len(data) < indexHeader+indexSum || !bytes.Equal(data[:8], indexMagic) || (len(data)-indexHeader-indexSum)%indexEntry != 0 {
		return nil, errStaleIndex
	}
	body := data[:len(data)-indexSum]
	if crc32.Checksum(body, castagnoliTable()) != binary.BigEndian.Uint32(data[len(body):]) {
		return nil, errStaleIndex
	}
	key := fileKey(fi)
	for i, v := range key {
		if binary.BigEndian.Uint64(data[8+8*i:]) != v {
			return nil, errStaleIndex
		}
	}
	return body, nil
}

// countsFromIndex gives how often each address was banned (only those of
// want; all when want is nil), from an index with counts plus the
// journal: what the history's Record.Count says.
func countsFromIndex(dir string, want map[netip.Addr]bool) (map[netip.Addr]int, error) {
	data, err := readIndex(dir)
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]int{}
	for p := indexHeader; p < len(data); p += indexEntry {
		a := netip.AddrFrom16([16]byte(data[p : p+16])).Unmap()
		if want == nil || want[a] {
			out[a] = int(binary.BigEndian.Uint32(data[p+24:]))
		}
	}
	err = eachJournalRecord(dir, func(j *journalRecord) {
		for a, r := range j.Bans {
			if r != nil && a.IsValid() && (want == nil || want[a]) {
				out[a] = r.Count
			}
		}
		for _, m := range j.Manual {
			if m.Addr.IsValid() && (want == nil || want[m.Addr]) {
				out[m.Addr]++
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// countFromIndex counts active bans from the index plus the journal.
func countFromIndex(dir string, now time.Time) (int, error) {
	data, err := readIndex(dir)
	if err != nil {
		return 0, err
	}
	over, err := journalUntils(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	nowNS := now.UnixNano()
	for p := indexHeader; p < len(data); p += indexEntry {
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
	err := eachJournalRecord(dir, func(j *journalRecord) {
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
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// eachJournalRecord calls fn with each record of the journal that decodes, in
// order (damaged ones are skipped, as the fold skips them).
func eachJournalRecord(dir string, fn func(*journalRecord)) error {
	f, err := statedir.OpenFile(dir, journalFile, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read guard journal: %w", err)
	}
	defer func() { _ = f.Close() }() // read only
	lr := newLineReader(f, maxJournalRecord)
	for {
		line, _, tooLong, err := lr.next()
		var j journalRecord
		if !tooLong && len(line) > 0 && json.Unmarshal(line, &j) == nil {
			fn(&j)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read guard journal: %w", err)
		}
	}
}

// RecordedBans reads from the history the addresses whose ban had not
// ended by since (those that may be banned now) and how often every
// address was banned (BanCounts' answer for all of them), in one read:
// guard.index and the journal when the index matches guard.json, else
// the whole history. Nothing recorded (no history, or one that does not
// read): none. 'moat bans --all' looks these addresses up in the kernel
// instead of dumping the ban sets.
func RecordedBans(dir string, since time.Time) (active []netip.Addr, counts map[netip.Addr]int) {
	type rec struct {
		until int64 // Unix nanoseconds, 0: lifted or none
		count int
	}
	var recs map[netip.Addr]rec
	if data, err := readIndex(dir); err == nil {
		recs = make(map[netip.Addr]rec, (len(data)-indexHeader)/indexEntry)
		for p := indexHeader; p < len(data); p += indexEntry {
			a := netip.AddrFrom16([16]byte(data[p : p+16])).Unmap()
			recs[a] = rec{until: int64(binary.BigEndian.Uint64(data[p+16:])), count: int(binary.BigEndian.Uint32(data[p+24:]))}
		}
		err = eachJournalRecord(dir, func(j *journalRecord) {
			for a, r := range j.Bans {
				if r != nil && a.IsValid() {
					recs[a] = rec{until: unixNano(r.Until), count: r.Count}
				}
			}
			for _, m := range j.Manual {
				if m.Addr.IsValid() {
					recs[m.Addr] = rec{until: unixNano(m.Until), count: recs[m.Addr].count + 1}
				}
			}
			for _, a := range j.Unbans {
				if r, ok := recs[a]; ok {
					r.until = 0
					recs[a] = r
				}
			}
		})
		if err != nil {
			recs = nil
		}
	}
	if recs == nil {
		st, err := loadIndexing(dir)
		if err != nil {
			return nil, map[netip.Addr]int{}
		}
		recs = make(map[netip.Addr]rec, len(st.Bans))
		for a, r := range st.Bans {
			recs[a] = rec{until: unixNano(r.Until), count: r.Count}
		}
	}
	counts = make(map[netip.Addr]int, len(recs))
	s := since.UnixNano()
	for a, r := range recs {
		counts[a] = r.count
		if r.until > s {
			active = append(active, a)
		}
	}
	return active, counts
}

// unixNano is t in Unix nanoseconds, 0 for the zero time.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}
