// Package setstore keeps, outside the kernel, what moat loaded into each
// policy set (nftables interval sets, ipsets), so that a change of a set
// can be sent as its difference without reading the set back from the
// kernel (a dump of 100,000 networks costs about 0.3 s). An entry is used
// only while the backend's record in the kernel names the same contents
// (Set.Data); otherwise the backend loads the set whole.
package setstore

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go4.org/netipx"

	"github.com/moat-fw/moat/internal/netmerge"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/statedir"
)

// Store keeps what moat loaded into each policy set.
type Store interface {
	// Load returns the networks saved for a set with the entries hash
	// they were saved for, and the hash of their address ranges.
	Load(set string) (Set, error)
	// Save records what a set was loaded with.
	Save(set string, s Set) error
	// Keep removes the entries of sets not named.
	Keep(sets []string) error
	// Forget removes a set's entry.
	Forget(set string) error
	// Head is the Data and Ranges of a set's entry, read from its header
	// alone (not checked against the file's checksum).
	Head(set string) (data, ranges string, err error)
}

// Set is what moat loaded into one policy set.
type Set struct {
	// Data identifies the contents as the backend's record in the kernel
	// names them (nftables: the entries hash in moat_sync; iptables: the
	// set's content hash in MOAT-GEN).
	Data string
	// Prefixes are the set's networks, merged and sorted, as sent.
	Prefixes []netip.Prefix
	// Ranges is a hash of the address ranges the networks cover.
	Ranges string
}

// Dir is a Store in files of a state directory, one a set (Prefix +
// set name): a header line (format, entries hash, ranges hash, count),
// 18 bytes a network (address as 16 bytes, family 4 or 6, prefix length),
// and a SHA-256 of all that before it, so a file cut short or changed is
// not used.
type Dir struct {
	Path   string
	Prefix string // "nft-set.", "ipset."
}

const storeMagic = "moat-set-v2"

func (d Dir) name(set string) string { return d.Prefix + set }

// Load reads a set's file.
func (d Dir) Load(set string) (Set, error) {
	f, err := statedir.OpenFile(d.Path, d.name(set), os.O_RDONLY, 0)
	if err != nil {
		return Set{}, err
	}
	defer func() { _ = f.Close() }() // read only
	fi, err := f.Stat()
	if err != nil {
		return Set{}, err
	}
	if fi.Size() > 64<<20 {
		return Set{}, fmt.Errorf("%s: too large", d.name(set))
	}
	data := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return Set{}, fmt.Errorf("%s: %w", d.name(set), err)
	}
	if len(data) < sha256.Size {
		return Set{}, fmt.Errorf("%s: cut short", d.name(set))
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if want := sha256.Sum256(body); !bytes.Equal(want[:], sum) {
		return Set{}, fmt.Errorf("%s: checksum does not match", d.name(set))
	}
	head, rest, ok := bytes.Cut(body, []byte{'\n'})
	fields := strings.Fields(string(head))
	var n int
	if !ok || len(fields) != 4 || fields[0] != storeMagic {
		return Set{}, fmt.Errorf("%s: not a set record of this moat", d.name(set))
	}
	if _, err := fmt.Sscanf(fields[3], "%d", &n); err != nil || n < 0 || n > len(rest)/18 || n*18 != len(rest) {
		return Set{}, fmt.Errorf("%s: bad length", d.name(set))
	}
	s := Set{Data: fields[1], Ranges: strings.TrimPrefix(fields[2], "-"), Prefixes: make([]netip.Prefix, n)}
	for i := range n {
		rec := rest[i*18 : i*18+18]
		a := netip.AddrFrom16([16]byte(rec[:16]))
		bits := int(rec[17])
		switch rec[16] {
		case 4:
			if !a.Is4In6() {
				return Set{}, fmt.Errorf("%s: bad network %d", d.name(set), i)
			}
			a = a.Unmap()
		case 6:
		default:
			return Set{}, fmt.Errorf("%s: bad network %d", d.name(set), i)
		}
		p, err := a.Prefix(bits)
		if err != nil || p.Addr() != a {
			return Set{}, fmt.Errorf("%s: bad network %d", d.name(set), i)
		}
		s.Prefixes[i] = p
	}
	return s, nil
}

// Head reads the Data and Ranges of a set's file from its header alone
// (the networks are not read, the checksum not checked: for "is there an
// entry for these contents" and "which ranges", not for the networks).
func (d Dir) Head(set string) (data, ranges string, err error) {
	f, err := statedir.OpenFile(d.Path, d.name(set), os.O_RDONLY, 0)
	if err != nil {
		return "", "", err
	}
	defer func() { _ = f.Close() }() // read only
	buf := make([]byte, 256)
	n, _ := io.ReadFull(f, buf)
	head, _, ok := bytes.Cut(buf[:n], []byte{'\n'})
	fields := strings.Fields(string(head))
	if !ok || len(fields) != 4 || fields[0] != storeMagic {
		return "", "", fmt.Errorf("%s: not a set record of this moat", d.name(set))
	}
	return fields[1], strings.TrimPrefix(fields[2], "-"), nil
}

// Save writes a set's file (atomically: a new file renamed over the old).
func (d Dir) Save(set string, s Set) error {
	var b bytes.Buffer
	b.Grow(64 + 18*len(s.Prefixes) + sha256.Size)
	ranges := s.Ranges
	if ranges == "" {
		ranges = "-"
	}
	if s.Data == "" || strings.ContainsAny(s.Data+ranges, " \n") {
		return fmt.Errorf("%s: bad record %q %q", d.name(set), s.Data, s.Ranges)
	}
	fmt.Fprintf(&b, "%s %s %s %d\n", storeMagic, s.Data, ranges, len(s.Prefixes))
	for _, p := range s.Prefixes {
		a := p.Addr().As16()
		b.Write(a[:])
		fam := byte(6)
		if p.Addr().Is4() {
			fam = 4
		}
		b.WriteByte(fam)
		b.WriteByte(byte(p.Bits()))
	}
	sum := sha256.Sum256(b.Bytes())
	b.Write(sum[:])
	return d.replace(d.name(set), b.Bytes())
}

// replace writes a file beside name and renames it over name, without
// fsync (an entry is a cache: after a crash the kernel's sets are gone as
// well, the next boot loads them whole and writes the entries again, and
// a file the crash left damaged fails its checksum). The fsyncs of
// statedir.WriteFile cost 5 to 40 ms for a 100,000-network set.
func (d Dir) replace(name string, data []byte) error {
	if err := statedir.Ensure(d.Path); err != nil {
		return err
	}
	d.removeLeftTemps(name)
	tmp, err := os.CreateTemp(d.Path, "."+name+".*.tmp")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(d.Path, name))
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// removeLeftTemps removes the temporary files of name that writes killed
// half way left (".NAME.<digits>.tmp"; writes happen under the state
// lock, so none is being written now). Keep removes those of every set,
// but runs only when the whole table is loaded; a change of a set that is
// killed again and again would otherwise leave a copy of it each time.
func (d Dir) removeLeftTemps(name string) {
	entries, err := os.ReadDir(d.Path)
	if err != nil {
		return
	}
	for _, e := range entries {
		mid, ok := strings.CutPrefix(e.Name(), "."+name+".")
		if !ok {
			continue
		}
		if mid, ok = strings.CutSuffix(mid, ".tmp"); ok && mid != "" && strings.Trim(mid, "0123456789") == "" {
			_ = statedir.Remove(d.Path, e.Name())
		}
	}
}

// Keep removes the files of sets not named.
func (d Dir) Keep(sets []string) error {
	keep := map[string]bool{}
	for _, s := range sets {
		keep[d.name(s)] = true
	}
	entries, err := os.ReadDir(d.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs error
	for _, e := range entries {
		stale := strings.HasPrefix(e.Name(), d.Prefix) && !keep[e.Name()]
		// A write cut short by a kill leaves its temporary file.
		stale = stale || strings.HasPrefix(e.Name(), "."+d.Prefix) && strings.HasSuffix(e.Name(), ".tmp")
		if stale {
			errs = errors.Join(errs, statedir.Remove(d.Path, e.Name()))
		}
	}
	return errs
}

// File is the path of a set's file.
func (d Dir) File(set string) string { return filepath.Join(d.Path, d.name(set)) }

// Forget removes a set's entry (before the set is changed in a way that
// may not complete: an entry must never outlive the contents it names).
func (d Dir) Forget(set string) error { return statedir.Remove(d.Path, d.name(set)) }

// Merge is the smallest list of networks that covers the same
// addresses as ps, sorted: what netipx's IPSet.Prefixes gives, in a
// quarter of its time (one sort, one pass).
func Merge(ps []netip.Prefix) []netip.Prefix {
	// A set compiled from a blocklist is merged already (in order,
	// disjoint, no two in a row the halves of one network): the walk
	// below would give it back as it is (FuzzMergeMerged).
	if netmerge.IsMerged(ps) {
		return slices.Clone(ps)
	}
	return mergeWalk(ps)
}

// mergeWalk is Merge's sort and walk.
func mergeWalk(ps []netip.Prefix) []netip.Prefix {
	sorted := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		sorted[i] = p.Masked()
	}
	slices.SortFunc(sorted, ComparePrefix)
	out := make([]netip.Prefix, 0, len(sorted))
	for i := 0; i < len(sorted); {
		from, to := sorted[i].Addr(), LastAddr(sorted[i])
		for i++; i < len(sorted); i++ {
			a := sorted[i].Addr()
			if a.BitLen() != from.BitLen() {
				break
			}
			// to at the top of the address space covers all that follows.
			if next := to.Next(); next.IsValid() && next.Less(a) {
				break
			}
			if last := LastAddr(sorted[i]); to.Less(last) {
				to = last
			}
		}
		r := netipx.IPRangeFrom(from, to)
		if p, ok := r.Prefix(); ok {
			out = append(out, p)
		} else {
			out = r.AppendPrefixes(out)
		}
	}
	return out
}

// ComparePrefix orders networks by address, then length.
func ComparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// LastAddr is the last address of a network.
func LastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As16()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	for i := bits; i < 128; i++ {
		a[i/8] |= 1 << (7 - i%8)
	}
	out := netip.AddrFrom16(a)
	if p.Addr().Is4() {
		return out.Unmap()
	}
	return out
}

// EntriesHash identifies a set's entries cheaply (no merge, no text) and
// whatever their order: each entry is hashed on its own (FNV-1a of
// address and length, then a 64-bit mixer) and the hashes summed and
// xored, so the same entries in any order give the same value.
//
// The FNV-1a of an address takes fewer steps than one a byte, with the
// same result: a zero byte only multiplies by the prime (xor with 0
// changes nothing), so a run of k zero bytes is one multiplication by
// the prime's k-th power, and an IPv4 address (As16: ten zero bytes, two
// of 0xff, then its four) starts from the hash of its first twelve bytes,
// computed once (an IPv6 /64 has eight zero bytes at its end). For
// 50,000 IPv4 addresses and 50,000 IPv6 /64s it takes 0.6 of the byte
// loop's time (BenchmarkEntriesHash); FuzzEntriesHash compares the two.
func EntriesHash(entries []ruleset.SetEntry) string {
	var sum, xor uint64
	for _, e := range entries {
		h := fnvAddr(e.Prefix.Addr())
		h = (h ^ uint64(e.Prefix.Bits())) * fnvPrime
		sum += mix64(h)
		xor ^= mix64(h ^ 0x9e3779b97f4a7c15)
	}
	return fmt.Sprintf("%016x%016x", sum, xor)
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// fnvPow[k] is fnvPrime to the k-th power (modulo 2^64).
var fnvPow = func() (p [17]uint64) {
	p[0] = 1
	for k := 1; k < len(p); k++ {
		p[k] = p[k-1] * fnvPrime
	}
	return p
}()

// fnvAddr is the FNV-1a (64 bits) of a.As16().
func fnvAddr(a netip.Addr) uint64 {
	b := a.As16()
	h, i := uint64(fnvOffset), 0
	if a.Is4() {
		// Its first twelve bytes: ten zeros, then 0xff twice.
		h = ((uint64(fnvOffset)*fnvPow[10])^0xff)*fnvPrime ^ 0xff
		h *= fnvPrime
		i = 12
	}
	zeros := 0
	for ; i < 16; i++ {
		if b[i] == 0 {
			zeros++
			continue
		}
		h = (h * fnvPow[zeros]) ^ uint64(b[i])
		h *= fnvPrime
		zeros = 0
	}
	return h * fnvPow[zeros]
}

// mix64 is splitmix64's finalizer.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}
