package setstore

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/moat-fw/moat/internal/ruleset"
)

// A saved set reads back as saved; a file cut short, changed, planted as
// a link or of another format is refused, never half used.
func TestDirRoundTripAndDamage(t *testing.T) {
	d := Dir{Path: t.TempDir(), Prefix: "x."}
	in := Set{Data: "abc", Ranges: "", Prefixes: []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"), netip.MustParsePrefix("198.18.0.0/32"),
		netip.MustParsePrefix("2001:db8::/64"), netip.MustParsePrefix("::ffff:0.0.0.0/96")}}
	if err := d.Save("s", in); err != nil {
		t.Fatal(err)
	}
	got, err := d.Load("s")
	if err != nil || got.Data != "abc" || got.Ranges != "" || !slices.Equal(got.Prefixes, in.Prefixes) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	data, _ := os.ReadFile(d.File("s"))
	for name, bad := range map[string][]byte{
		"cut":     data[:len(data)-5],
		"flipped": append(append([]byte{}, data[:30]...), append([]byte{data[30] ^ 1}, data[31:]...)...),
		"empty":   nil,
		"text":    []byte("moat-set-v2 abc - 1\n"),
	} {
		if err := os.WriteFile(d.File("s"), bad, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Load("s"); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
	if err := d.Save("s", Set{Data: "has space"}); err == nil {
		t.Error("a record with a space was saved")
	}
	_ = os.Remove(d.File("s"))
	if err := os.Symlink("/etc/passwd", d.File("s")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Load("s"); err == nil {
		t.Error("loaded through a link")
	}
	if err := d.Save("t", in); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.Path, ".x.t.123.tmp"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Keep([]string{"t"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(d.File("s")); !os.IsNotExist(err) {
		t.Errorf("Keep left s: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(d.Path, ".x.*")); len(left) != 0 {
		t.Errorf("Keep left temporary files: %v", left)
	}
	if err := d.Forget("t"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Load("t"); err == nil {
		t.Error("a forgotten set loaded")
	}
}

// A temporary file left by a write that was killed is removed by the next
// write of the same set, not only by Keep (which runs on a whole load
// only): a refresh killed again and again would otherwise pile up a copy
// of the set each time.
func TestSaveRemovesLeftTemporaryFiles(t *testing.T) {
	d := Dir{Path: t.TempDir(), Prefix: "x."}
	left := filepath.Join(d.Path, ".x.s.4242.tmp")
	other := filepath.Join(d.Path, ".x.s.other.4242.tmp")
	for _, f := range []string{left, other} {
		if err := os.WriteFile(f, []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Save("s", Set{Data: "abc", Prefixes: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(left); !os.IsNotExist(err) {
		t.Errorf("the killed write's temporary file is still there: %v", err)
	}
	if _, err := os.Lstat(other); err != nil {
		t.Errorf("another set's temporary file was removed: %v", err)
	}
	if got, err := d.Load("s"); err != nil || got.Data != "abc" {
		t.Errorf("%+v %v", got, err)
	}
}

// A count whose length in bytes wraps around (n*18 overflowing to the
// body's length) in a file whose checksum matches is refused, not a panic
// making a slice of 10^18 networks.
func TestLoadRefusesWrappedCount(t *testing.T) {
	d := Dir{Path: t.TempDir(), Prefix: "x."}
	// (2 + 2^64) / 18: times 18 it wraps to 2, the body's length.
	body := []byte("moat-set-v2 abc - 1024819115206086201\nxx")
	sum := sha256.Sum256(body)
	if err := os.WriteFile(d.File("s"), append(body, sum[:]...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Load("s"); err == nil {
		t.Error("loaded")
	}
}

// Load and Head never panic on a file of any contents; the body is given
// its checksum so that the parser behind it is reached.
func FuzzLoad(f *testing.F) {
	f.Add([]byte("moat-set-v2 abc - 1\n\xc0\x00\x02\x07\x00\x00\x00\x00\x00\x00\xff\xff\x00\x00\x00\x00\x04\x20"))
	f.Add([]byte("moat-set-v2 abc - 1024819115206086201\nxx"))
	f.Fuzz(func(t *testing.T, body []byte) {
		d := Dir{Path: t.TempDir(), Prefix: "x."}
		sum := sha256.Sum256(body)
		if err := os.WriteFile(d.File("s"), append(body, sum[:]...), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, _ = d.Head("s")
		s, err := d.Load("s")
		if err != nil {
			return
		}
		// What loads saves and loads back the same.
		if err := d.Save("s", s); err != nil {
			t.Fatalf("save back %+v: %v", s, err)
		}
		again, err := d.Load("s")
		if err != nil || again.Data != s.Data || again.Ranges != s.Ranges || !slices.Equal(again.Prefixes, s.Prefixes) {
			t.Fatalf("round trip: %+v -> %+v %v", s, again, err)
		}
	})
}

// Merge gives a merged list back as it is, in one copy: the walk (a sort
// and a pass) gives it back unchanged, and every list the walk makes is
// one that the shortcut takes.
func FuzzMergeMerged(f *testing.F) {
	f.Add([]byte{192, 0, 2, 0, 25, 192, 0, 2, 128, 25, 198, 51, 100, 7, 32})
	f.Add([]byte{192, 0, 2, 0, 32, 192, 0, 2, 2, 32, 0xfe, 0, 0, 0, 0, 64, 0xfe, 0, 0, 0, 1, 64})
	f.Fuzz(func(t *testing.T, data []byte) {
		var ps []netip.Prefix
		for len(data) >= 5 {
			if data[0] == 0xfe && len(data) >= 6 {
				var a [16]byte
				a[0], a[1], a[2], a[3] = 0x20, 0x01, 0x0d, 0xb8
				copy(a[4:8], data[1:5])
				ps = append(ps, netip.PrefixFrom(netip.AddrFrom16(a), int(data[5])%129))
				data = data[6:]
				continue
			}
			ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte(data[:4])), int(data[4])%33))
			data = data[5:]
		}
		if got, want := Merge(ps), mergeWalk(ps); !slices.Equal(got, want) {
			t.Fatalf("%v: Merge %v, the walk %v", ps, got, want)
		}
		m := mergeWalk(ps)
		if len(m) > 0 && !slices.Equal(mergeWalk(m), m) {
			t.Fatalf("the walk of its own result %v changes it", m)
		}
	})
}

// A merged list costs one copy: the sort and walk made two and compared
// every network with its neighbours through ranges.
func TestMergeMergedOneCopy(t *testing.T) {
	var ps []netip.Prefix
	for i := 0; i < 1000; i++ {
		ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, byte(i >> 7), byte(i&0x7f) * 2}), 32))
	}
	var got []netip.Prefix
	if n := testing.AllocsPerRun(10, func() { got = Merge(ps) }); n > 1 {
		t.Errorf("%v allocations for a merged list", n)
	}
	if !slices.Equal(got, ps) {
		t.Errorf("a merged list came out changed")
	}
}

// entriesHashBytes is EntriesHash as first written, one FNV-1a step a
// byte of the address.
func entriesHashBytes(entries []ruleset.SetEntry) string {
	var sum, xor uint64
	for _, e := range entries {
		a := e.Prefix.Addr().As16()
		h := uint64(14695981039346656037)
		for _, c := range a {
			h = (h ^ uint64(c)) * 1099511628211
		}
		h = (h ^ uint64(e.Prefix.Bits())) * 1099511628211
		sum += mix64(h)
		xor ^= mix64(h ^ 0x9e3779b97f4a7c15)
	}
	return fmt.Sprintf("%016x%016x", sum, xor)
}

// FuzzEntriesHash: the hash with runs of zero bytes folded gives the
// byte loop's value, for IPv4, IPv4-mapped and IPv6 addresses of any
// bytes (zeros anywhere, 0xff) and any length.
func FuzzEntriesHash(f *testing.F) {
	f.Add([]byte{192, 0, 2, 0, 24})
	f.Add([]byte{0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1, 128})
	f.Add([]byte{0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var entries []ruleset.SetEntry
		for len(data) > 0 {
			if len(data) >= 17 && data[0]&1 == 1 {
				a := netip.AddrFrom16([16]byte(data[:16]))
				entries = append(entries, ruleset.SetEntry{Prefix: netip.PrefixFrom(a, int(data[16])%129)})
				data = data[17:]
				continue
			}
			if len(data) < 5 {
				break
			}
			a := netip.AddrFrom4([4]byte(data[:4]))
			entries = append(entries, ruleset.SetEntry{Prefix: netip.PrefixFrom(a, int(data[4])%33)})
			data = data[5:]
		}
		if got, want := EntriesHash(entries), entriesHashBytes(entries); got != want {
			t.Fatalf("%v: %s, the byte loop %s", entries, got, want)
		}
	})
}

func BenchmarkEntriesHash(b *testing.B) {
	var entries []ruleset.SetEntry
	for i := range 50000 {
		entries = append(entries, ruleset.SetEntry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(i >> 15), byte(i >> 7), byte(2 * (i & 127))}), 32)})
		a := [16]byte{0x20, 0x01, 0x0d, 0xb8, 0xf0, byte(i >> 15), byte(i >> 7), byte(2 * (i & 127))}
		entries = append(entries, ruleset.SetEntry{Prefix: netip.PrefixFrom(netip.AddrFrom16(a), 64)})
	}
	b.Run("folded", func(b *testing.B) {
		for range b.N {
			EntriesHash(entries)
		}
	})
	b.Run("bytes", func(b *testing.B) {
		for range b.N {
			entriesHashBytes(entries)
		}
	})
}
