package blocklist

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/boundedfile"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/statedir"
)

// Dir is the directory under moat's state directory that keeps the lists.
const Dir = "blocklists"

// LockFile, in the state directory, keeps two updates apart; an update
// saves its lists' copies holding it (and not moat's state lock).
const LockFile = "blocklist.lock"

// UpdatingMarker, in the state directory, names the lists of an update
// that changes the kernel and saves their copies (written and removed
// holding LockFile alone).
const UpdatingMarker = "blocklist-update.pending"

// RemoveLeftTemps removes the temporary files that writes of the lists'
// copies and metadata, and of UpdatingMarker, killed half way left. The
// caller holds LockFile and moat's state lock: no write is in progress.
func RemoveLeftTemps(stateDir string) error {
	return errors.Join(RemoveMarkerTemps(stateDir), atomicfile.RemovePrepared(listDir(stateDir), func(name string) bool {
		return strings.HasSuffix(name, ".list") || strings.HasSuffix(name, ".json")
	}))
}

// RemoveMarkerTemps removes the temporary files of UpdatingMarker a
// killed update left. The caller holds LockFile.
func RemoveMarkerTemps(stateDir string) error {
	return atomicfile.RemovePrepared(stateDir, func(name string) bool { return name == UpdatingMarker })
}

// MaxFileSize bounds a list file (and a download).
const MaxFileSize = 64 << 20

// Meta is what moat knows about a list besides its contents.
type Meta struct {
	Name   string `json:"name"`
	Source string `json:"source"` // "url" or "file"
	Where  string `json:"where"`  // the URL or path the contents came from
	// ETag and LastModified come from the server, for conditional requests.
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	// Updated is when the contents last changed; Checked when the source
	// was last read successfully (a 304 counts); Attempted when it was
	// last tried.
	Updated   time.Time `json:"updated"`
	Checked   time.Time `json:"checked"`
	Attempted time.Time `json:"attempted"`
	LastError string    `json:"last_error,omitempty"`
	Networks  int       `json:"networks"`
	V4        int       `json:"ipv4"`
	V6        int       `json:"ipv6"`
	Lines     int       `json:"entries_as_written"`
	SHA256    string    `json:"sha256"` // of the cached list file
	// Saving is the checksum of a list being saved where no metadata
	// vouched for a copy of this source yet (its first save): written
	// before the list, it vouches for the list if the save is killed
	// before the metadata that follows it (writeCacheData; an update
	// writes it before the kernel takes the list: SaveFirstBefore).
	Saving string `json:"saving,omitempty"`
}

func listDir(stateDir string) string        { return filepath.Join(stateDir, Dir) }
func listPath(stateDir, name string) string { return filepath.Join(stateDir, Dir, name+".list") }
func metaPath(stateDir, name string) string { return filepath.Join(stateDir, Dir, name+".json") }

// ReadMeta reads a list's metadata; a missing file is a zero Meta.
func ReadMeta(stateDir, name string) (Meta, error) {
	data, err := statedir.ReadFile(listDir(stateDir), name+".json")
	if errors.Is(err, os.ErrNotExist) {
		return Meta{Name: name}, nil
	}
	if err != nil {
		return Meta{Name: name}, fmt.Errorf("blocklist %s: %w", name, err)
	}
	var m Meta
	if err := json.Unmarshal(data, &m); err != nil || m.Name != name {
		return Meta{Name: name}, fmt.Errorf("blocklist %s: %s is damaged; it is rewritten at the next update", name, metaPath(stateDir, name))
	}
	return m, nil
}

// WriteMeta saves a list's metadata atomically.
func WriteMeta(stateDir string, m Meta) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := statedir.Ensure(stateDir); err != nil {
		return err
	}
	if err := statedir.WriteFile(listDir(stateDir), m.Name+".json", data); err != nil {
		return fmt.Errorf("blocklist %s: %w", m.Name, err)
	}
	return nil
}

// Canonical writes merged prefixes as a list file: one network a line.
func Canonical(name string, l *List) []byte {
	var b bytes.Buffer
	// At most 19 bytes a line for IPv4 (255.255.255.255/32) and 44 for
	// IPv6: one allocation, never grown by copies.
	b.Grow(128 + len(name) + 19*len(l.V4) + 44*len(l.V6))
	fmt.Fprintf(&b, "# moat blocklist %s: %s, merged\n", name, Describe(l))
	var buf []byte
	for _, ps := range [][]netip.Prefix{l.V4, l.V6} {
		for _, p := range ps {
			buf = p.AppendTo(buf[:0])
			buf = append(buf, '\n')
			b.Write(buf)
		}
	}
	return b.Bytes()
}

// readCacheData reads the last good copy of a list as it was saved. ok is
// false when there is none (or it does not match its recorded checksum:
// then err says so).
func readCacheData(stateDir, name string, m Meta) (data []byte, ok bool, err error) {
	path := listPath(stateDir, name)
	data, err = statedir.ReadFile(listDir(stateDir), name+".list")
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	sum := sha256.Sum256(data)
	if m.SHA256 != "" && hex.EncodeToString(sum[:]) != m.SHA256 {
		return nil, false, fmt.Errorf("blocklist %s: the saved copy %s does not match its checksum; it is ignored", name, path)
	}
	return data, true, nil
}

// parseCache parses a saved copy read by readCacheData.
func parseCache(stateDir, name string, data []byte) (*List, error) {
	l, err := ParseBytes(data, listPath(stateDir, name))
	if err != nil {
		return nil, fmt.Errorf("blocklist %s: the saved copy is damaged, ignored: %w", name, err)
	}
	return l, nil
}

// ReadCache reads the last good copy of a list. ok is false when there is
// none (or it does not match its recorded checksum: then err says so).
func ReadCache(stateDir, name string, m Meta) (l *List, ok bool, err error) {
	data, ok, err := readCacheData(stateDir, name, m)
	if !ok {
		return nil, false, err
	}
	l, err = parseCache(stateDir, name, data)
	if err != nil {
		return nil, false, err
	}
	return l, true, nil
}

// WriteCache saves a good list and its metadata (list first, each
// atomically: a kill in between leaves a list whose checksum the old
// metadata does not match, which load then uses as saved). The first save
// of a source writes its metadata before the list too, with the list's
// checksum as Saving: without it, a kill between the list and its
// metadata left a list that no metadata of this source vouched for, and
// the next apply loaded the list empty until the next update.
func WriteCache(stateDir string, m *Meta, l *List) error {
	return writeCacheData(stateDir, m, l, Canonical(m.Name, l))
}

// writeCacheData is WriteCache with the list's canonical form given.
func writeCacheData(stateDir string, m *Meta, l *List, data []byte) error {
	if err := statedir.Ensure(stateDir); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	// The first save of a source, unless its metadata vouches for this
	// list as Saving already (SaveFirstBefore wrote it).
	old, err := ReadMeta(stateDir, m.Name)
	if same := err == nil && old.Where == m.Where; !same || old.SHA256 == "" && old.Saving != hex.EncodeToString(sum[:]) {
		if err := writePending(stateDir, m, l, data); err != nil {
			return err
		}
	} else if err := statedir.WriteFile(listDir(stateDir), m.Name+".list", data); err != nil {
		return fmt.Errorf("blocklist %s: %w", m.Name, err)
	}
	m.SHA256, m.Saving = hex.EncodeToString(sum[:]), ""
	m.Networks, m.V4, m.V6 = len(l.V4)+len(l.V6), len(l.V4), len(l.V6)
	return WriteMeta(stateDir, *m)
}

// vouched says whether metadata of m's source vouches for a saved copy
// of it (a save that is not the source's first).
func vouched(stateDir string, m *Meta) bool {
	old, err := ReadMeta(stateDir, m.Name)
	return err == nil && old.Where == m.Where && old.SHA256 != ""
}

// writePending writes m as metadata that vouches for data (l's canonical
// form) as Saving, with l's counts ('blocklist list' shows them), then
// data as the list's copy: a first save killed after it leaves a copy
// that the next apply loads (and one killed before the list is in place
// leaves a copy whose checksum is not Saving, which is not used).
func writePending(stateDir string, m *Meta, l *List, data []byte) error {
	sum := sha256.Sum256(data)
	pending := *m
	pending.SHA256, pending.Saving = "", hex.EncodeToString(sum[:])
	pending.Networks, pending.V4, pending.V6 = len(l.V4)+len(l.V6), len(l.V4), len(l.V6)
	if err := WriteMeta(stateDir, pending); err != nil {
		return err
	}
	if err := statedir.WriteFile(listDir(stateDir), m.Name+".list", data); err != nil {
		return fmt.Errorf("blocklist %s: %w", m.Name, err)
	}
	return nil
}

// Remove deletes a list's saved copy and metadata.
func Remove(stateDir, name string) error {
	return errors.Join(statedir.Remove(listDir(stateDir), name+".list"), statedir.Remove(listDir(stateDir), name+".json"))
}

// Saved lists the names of the lists kept in the state directory.
func Saved(stateDir string) []string {
	ents, _ := os.ReadDir(filepath.Join(stateDir, Dir))
	var out []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok && policy.CheckBlocklistName(n) == "" {
			out = append(out, n)
		}
	}
	return out
}

func readCapped(path string) ([]byte, error) {
	// Without blocking: a FIFO named as a list file would hang every
	// apply, and the lock it holds, before the check below.
	// Room for the whole file at once (io.ReadAll alone grows its buffer
	// by copies: 9 MB of allocations for a 2.7 MB list); a file that grows
	// meanwhile is still read to its end, up to the cap.
	data, err := boundedfile.ReadFile(path, MaxFileSize)
	if errors.As(err, new(*boundedfile.TooLargeError)) {
		return nil, fmt.Errorf("%s: larger than %d MB", path, MaxFileSize>>20)
	}
	return data, err // "PATH: not a regular file"
}

// ReadFile reads and parses a list file (for 'blocklist NAME file PATH').
func ReadFile(path string) (*List, error) {
	data, err := readCapped(path)
	if err != nil {
		return nil, fmt.Errorf("read blocklist file: %w", err)
	}
	return ParseBytes(data, path)
}

// Loaded is what Load found for one list.
type Loaded struct {
	Prefixes []netip.Prefix
	Meta     Meta
	// Warning is set when the list is not what its source holds now (a
	// malformed or refused file, a url list never fetched); the old copy,
	// or nothing, is used.
	Warning error
}

// Load gives a list's contents for an apply: a file list is read and
// checked again (with save, a good one becomes the saved copy); a url list
// comes from the saved copy. A file list that is malformed or refused
// keeps the saved copy, with a warning; if there is none, that is an
// error.
func Load(stateDir string, bl *policy.Blocklist, pr Protect, now time.Time, save bool) (Loaded, error) {
	return load(stateDir, bl, pr, now, save, nil)
}

// load is Load; with later, the saved copy is not written but its write
// appended to later.
func load(stateDir string, bl *policy.Blocklist, pr Protect, now time.Time, save bool, later *[]func() error) (Loaded, error) {
	m, merr := ReadMeta(stateDir, bl.Name)
	if m.Where != bl.Where() {
		// Another source now: what was saved is not this list.
		m = Meta{Name: bl.Name}
	}
	cached, have, cerr := ReadCache(stateDir, bl.Name, m)
	if m.SHA256 == "" {
		have = false
	}
	if bl.Source == policy.BlocklistFile {
		l, err := ReadFile(bl.Path)
		if err == nil {
			err = Check(bl.Name, l, pr)
		}
		if err == nil {
			m.Source, m.Where = string(bl.Source), bl.Where()
			changed := !have || !samePrefixes(cached.Prefixes(), l.Prefixes())
			if changed {
				m.Updated = now
			}
			m.Checked, m.Attempted, m.LastError, m.Lines = now, now, "", len(l.Entries)
			if !save {
				return Loaded{Prefixes: l.Prefixes(), Meta: m}, nil
			}
			write := func() error { return WriteMeta(stateDir, m) }
			if changed || merr != nil {
				write = func() error { return WriteCache(stateDir, &m, l) }
			}
			if later != nil {
				*later = append(*later, write)
			} else if err := write(); err != nil {
				return Loaded{}, err
			}
			return Loaded{Prefixes: l.Prefixes(), Meta: m}, nil
		}
		if !have {
			return Loaded{}, fmt.Errorf("blocklist %s: %w (and there is no earlier good copy to keep)", bl.Name, errors.Join(err, cerr))
		}
		return Loaded{Prefixes: cached.Prefixes(), Meta: m,
			Warning: fmt.Errorf("blocklist %s: %w; keeping the copy of %s (%d networks)", bl.Name, err, m.Updated.Format(time.RFC3339), m.Networks)}, nil
	}
	if !have && cerr != nil && m.SHA256 != "" {
		if l, ok := savedAsIs(stateDir, bl, pr, ""); ok {
			return Loaded{Prefixes: l.Prefixes(), Meta: m,
				Warning: fmt.Errorf("%w: used as saved (an update killed between saving the list and its metadata leaves it so); 'moat blocklist update %s' fetches it again", cerr, bl.Name)}, nil
		}
	}
	if !have && cerr == nil && m.SHA256 == "" && m.Saving != "" {
		if l, ok := savedAsIs(stateDir, bl, pr, m.Saving); ok {
			return Loaded{Prefixes: l.Prefixes(), Meta: m,
				Warning: fmt.Errorf("blocklist %s: its first update was interrupted before its metadata was saved; the list it saved is used; 'moat blocklist update %s' completes it", bl.Name, bl.Name)}, nil
		}
	}
	if !have {
		w := fmt.Errorf("blocklist %s: not fetched yet; run 'moat blocklist update %s'", bl.Name, bl.Name)
		if err := errors.Join(merr, cerr); err != nil {
			w = errors.Join(err, w)
		}
		return Loaded{Meta: m, Warning: w}, nil
	}
	return Loaded{Prefixes: cached.Prefixes(), Meta: m}, nil
}

// savedAsIs reads the saved copy of a url list whose checksum its
// metadata does not match. SaveResult writes the list, then its metadata,
// each whole (renamed in): a kill between them leaves the new list beside
// the old metadata, and loading nothing instead let in what the list
// blocks until the next update. A copy that parses and passes Check is
// that list (ok); one damaged otherwise is not used. With sum, the copy
// is used only if that is its checksum (Meta.Saving).
func savedAsIs(stateDir string, bl *policy.Blocklist, pr Protect, sum string) (*List, bool) {
	data, err := statedir.ReadFile(listDir(stateDir), bl.Name+".list")
	if err != nil {
		return nil, false
	}
	if got := sha256.Sum256(data); sum != "" && hex.EncodeToString(got[:]) != sum {
		return nil, false
	}
	l, err := parseCache(stateDir, bl.Name, data)
	if err != nil || Check(bl.Name, l, pr) != nil {
		return nil, false
	}
	return l, true
}

// FillLoaded fills the blocklists with what moat loaded: the saved copy of
// each list, file lists too (Fill reads a file list as it is now, what
// an apply would load). A comparison of the kernel with what moat
// applied uses it: a list file edited since is no change outside moat.
// A list without a saved copy of its source is filled as Fill does.
func FillLoaded(stateDir string, p *policy.Policy, pr Protect, now time.Time, warn func(string)) error {
	for i := range p.Blocklists {
		bl := &p.Blocklists[i]
		if bl.Prefixes != nil || bl.Source != policy.BlocklistFile {
			continue
		}
		m, err := ReadMeta(stateDir, bl.Name)
		if err != nil || m.Where != bl.Where() || m.SHA256 == "" {
			continue
		}
		if cached, ok, _ := ReadCache(stateDir, bl.Name, m); ok {
			bl.Prefixes = cached.Prefixes()
			if bl.Prefixes == nil {
				bl.Prefixes = []netip.Prefix{}
			}
		}
	}
	return Fill(stateDir, p, pr, now, false, warn)
}

func samePrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Fill loads the contents of a policy's lists that are not loaded yet (see
// Load), for compiling; warnings go to warn. A list that cannot be loaded
// at all is an error.
func Fill(stateDir string, p *policy.Policy, pr Protect, now time.Time, save bool, warn func(string)) error {
	return fill(stateDir, p, pr, now, save, warn, nil)
}

// FillSaveLater is Fill saving the file lists read as their new copies
// only when save is called: an apply calls it once the kernel holds them
// (a refused apply must leave the copies saying what the kernel holds).
func FillSaveLater(stateDir string, p *policy.Policy, pr Protect, now time.Time, warn func(string)) (save func() error, err error) {
	var later []func() error
	err = fill(stateDir, p, pr, now, true, warn, &later)
	return func() error {
		var errs []error
		for _, w := range later {
			errs = append(errs, w())
		}
		return errors.Join(errs...)
	}, err
}

func fill(stateDir string, p *policy.Policy, pr Protect, now time.Time, save bool, warn func(string), later *[]func() error) error {
	var errs []error
	for i := range p.Blocklists {
		bl := &p.Blocklists[i]
		if bl.Prefixes != nil {
			continue
		}
		ld, err := load(stateDir, bl, pr, now, save, later)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ld.Warning != nil && warn != nil {
			warn(ld.Warning.Error())
		}
		bl.Prefixes = ld.Prefixes
		if bl.Prefixes == nil {
			bl.Prefixes = []netip.Prefix{}
		}
	}
	return errors.Join(errs...)
}
