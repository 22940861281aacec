package blocklist

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// allocated is how many bytes fn allocates.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// A list file is read into one buffer of its size: io.ReadAll alone grew
// its buffer by copies, 3.5 times the file's size (9 MB for a 2.7 MB
// list of 100,000 lines). The cap still holds, and the file's end is
// still what ends the read.
func TestReadCappedOneBuffer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "list")
	data := bytes.Repeat([]byte("198.51.100.0/24 ; SBL123\n"), 100_000)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var got []byte
	var err error
	n := allocated(func() { got, err = readCapped(path) })
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("readCapped: %d bytes, %v", len(got), err)
	}
	if n > uint64(len(data))*5/4 {
		t.Errorf("reading %d bytes allocated %d", len(data), n)
	}
	if err := os.WriteFile(path, make([]byte, MaxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readCapped(path); err == nil {
		t.Errorf("a file over the cap was read")
	}
}

// The canonical form is written into one buffer: its first guess (20
// bytes a network) was short for IPv6 and the buffer grew by copies.
func TestCanonicalOneBuffer(t *testing.T) {
	l := &List{}
	for i := 0; i < 50_000; i++ {
		l.V4 = append(l.V4, netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", i>>8, i&0xff)))
		l.V6 = append(l.V6, netip.MustParsePrefix(fmt.Sprintf("2001:db8:ffff:%x:1234:5678::/96", i)))
	}
	l.V6 = append(l.V6, netip.MustParsePrefix("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"))
	var out []byte
	n := allocated(func() { out = Canonical("big", l) })
	if n > uint64(len(out))*2 {
		t.Errorf("a %d-byte canonical form allocated %d", len(out), n)
	}
	if max := 128 + len("big") + 19*len(l.V4) + 44*len(l.V6); len(out) > max {
		t.Errorf("%d bytes, more than the %d reserved", len(out), max)
	}
}
