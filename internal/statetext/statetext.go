// Package statetext keeps the large texts of moat's state (the policy as
// applied, as saved for boot, as it was before a change) in files of
// their own in the state directory, named by their SHA-256:
// policy.<sha256>. The JSON records name the file and the checksum
// instead of holding the text.
//
// A record of a 100,000-line policy used to carry it inside its JSON
// (2.7 MB, base64 for a []byte), four times over in the journal of a
// change: each command encoded, wrote and fsynced about 15 MB and
// decoded much of it again. A text is now written once, when it is new;
// the records that name it stay small. Small texts (under InlineMax)
// stay inside their record, where the admin reads them.
//
// A text file is written (fsynced, renamed, directory fsynced) before any
// record names it, and every read checks the checksum, so a kill -9 at
// any point leaves either the old record or the new one with its text.
// Files no record names any more are removed by Collect, under moat's
// lock.
package statetext

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"github.com/moat-fw/moat/internal/boundedfile"
	"github.com/moat-fw/moat/internal/statedir"
)

// InlineMax is the size from which a text goes to a file of its own (a
// variable so that tests can send every text there).
var InlineMax = 64 << 10

// MaxSize bounds a text read back: the policy file's own bound (a larger
// file in the state directory is no text moat wrote).
const MaxSize = 64 << 20

// prefix starts the name of every text file.
const prefix = "policy."

// Hash is the hex SHA-256 of a text. A command hashes the same 100,000-
// line policies several times (the text before and after a change: the
// records, the journal, the checks), from different strings of the same
// text (the file read, the record read back): the checksums of the last
// two large texts are kept with the texts, and a text equal to one of
// them (the same string: one comparison of addresses; an equal copy: a
// comparison of bytes, several times faster than SHA-256) has its
// checksum.
func Hash(text string) string {
	if len(text) < InlineMax {
		return hashOf(text)
	}
	lastMu.Lock()
	for i := range last {
		if len(last[i].text) == len(text) && last[i].text == text {
			sum := last[i].sum
			last[0], last[i] = last[i], last[0] // the most recent first
			lastMu.Unlock()
			return sum
		}
	}
	lastMu.Unlock()
	sum := hashOf(text)
	lastMu.Lock()
	last[1], last[0] = last[0], hashed{sum: sum, text: text}
	lastMu.Unlock()
	return sum
}

// hashed is a text with its checksum.
type hashed struct {
	sum  string
	text string
}

func hashOf(text string) string {
	h := sha256.New()
	// Without copying the text: Write neither keeps nor changes it.
	h.Write(unsafe.Slice(unsafe.StringData(text), len(text)))
	return hex.EncodeToString(h.Sum(nil))
}

var (
	lastMu sync.Mutex
	last   [2]hashed
)

// Name is the file that holds the text with this checksum.
func Name(sum string) string { return prefix + sum }

// IsName reports whether name is a text file's name: policy. and 64
// lowercase hex digits.
func IsName(name string) bool {
	sum, ok := strings.CutPrefix(name, prefix)
	if !ok || len(sum) != sha256.Size*2 {
		return false
	}
	for _, c := range sum {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// known are the text files this process wrote or checked, by path: they
// need not be read again to know they hold their text.
var known sync.Map

// Put stores text in dir and returns its file's name. A file that holds
// the text already is kept as it is.
func Put(dir, text string) (string, error) {
	sum := Hash(text)
	name := Name(sum)
	path := filepath.Join(dir, name)
	if _, ok := known.Load(path); ok {
		if _, err := os.Lstat(path); err == nil {
			return name, nil
		}
	}
	if have, err := readText(dir, name); err == nil && hashOf(have) == sum {
		known.Store(path, true)
		return name, nil
	}
	// Without copying the text: WriteFile neither keeps nor changes it.
	if err := statedir.WriteFile(dir, name, unsafe.Slice(unsafe.StringData(text), len(text))); err != nil {
		return "", fmt.Errorf("store text: %w", err)
	}
	known.Store(path, true)
	return name, nil
}

// Get reads the text a record names: name must be a text file's name,
// and the file must hold the text with the checksum in its name.
func Get(dir, name string) (string, error) {
	if !IsName(name) {
		return "", fmt.Errorf("%q is not the name of a state text (policy.SHA256)", name)
	}
	sum := strings.TrimPrefix(name, prefix)
	text, err := readText(dir, name)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", filepath.Join(dir, name), err)
	}
	if Hash(text) != sum {
		known.Delete(filepath.Join(dir, name))
		return "", fmt.Errorf("read %s: the text does not match its checksum", filepath.Join(dir, name))
	}
	known.Store(filepath.Join(dir, name), true)
	return text, nil
}

// readText reads a text file into a string of its size, in one
// allocation (reading a 2.7 MB policy with io.ReadAll grew its buffer
// through twice that, then copied it into the string).
func readText(dir, name string) (string, error) {
	f, err := statedir.OpenFile(dir, name, os.O_RDONLY, 0)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }() // read only
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	// A file that grew since Stat is read whole all the same, up to
	// MaxSize (the checksum decides).
	var b strings.Builder
	var tooLarge *boundedfile.TooLargeError
	switch err := boundedfile.Into(&b, f, st.Size(), MaxSize); {
	case errors.As(err, &tooLarge) && tooLarge.Size >= 0:
		return "", fmt.Errorf("%d bytes is more than the %d a policy may have", st.Size(), MaxSize)
	case errors.As(err, &tooLarge):
		return "", fmt.Errorf("more than the %d bytes a policy may have", MaxSize)
	case err != nil:
		return "", err
	}
	return b.String(), nil
}

// Collect removes the text files of dir that are not in keep. The caller
// holds moat's lock and names every file a record of dir names.
func Collect(dir string, keep map[string]bool) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("collect state texts: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !IsName(e.Name()) || keep[e.Name()] {
			continue
		}
		known.Delete(filepath.Join(dir, e.Name()))
		if err := statedir.Remove(dir, e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Reread loads a record that may name a text, for a reader without moat's
// lock (status, explain): it may read the record just before a change
// replaces it and removes the text it names. load reads the record's
// bytes (what read returns); when it fails for a missing file and the
// record has changed since, the new record is loaded (three tries at
// most). Any other error, or a text missing from the record as it stands,
// is load's error.
func Reread[T any](read func() ([]byte, error), load func(data []byte) (T, error)) (T, error) {
	data, err := read()
	for tries := 1; ; tries++ {
		if err != nil {
			var zero T
			return zero, err
		}
		v, lerr := load(data)
		if lerr == nil || !errors.Is(lerr, os.ErrNotExist) || tries == 3 {
			return v, lerr
		}
		again, rerr := read()
		if rerr == nil && bytes.Equal(again, data) {
			return v, lerr
		}
		data, err = again, rerr
	}
}
