// Package atomicfile writes files so that readers see the old contents or
// the new, never a mix, even if the machine stops mid-write.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// WriteFile writes data to a new file beside name (os.CreateTemp: a random
// name created O_EXCL, which never opens a link planted there, mode 0600
// until it is complete, so nobody can open it half-written), syncs it,
// gives it perm, renames it over name and syncs the directory. A symbolic link at name is replaced, not followed.
func WriteFile(name string, data []byte, perm os.FileMode) error {
	return write(name, data, perm, true, true)
}

// WriteFileSyncDirLater is WriteFile without the directory's sync: the
// contents are on disk before the rename, and the caller makes the rename
// durable with SyncDir (or a later WriteFile into the same directory,
// which syncs it), sparing a disk flush when several files of one
// directory are replaced in a row.
func WriteFileSyncDirLater(name string, data []byte, perm os.FileMode) error {
	return write(name, data, perm, true, false)
}

// SyncDir makes the renames done in dir durable.
func SyncDir(dir string) error {
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// WriteCache is WriteFile without the syncs, for a file whose loss or old
// contents after a power failure are harmless (a cache the reader checks
// and can rebuild): readers still see the old contents or the new, never
// a mix (the rename is atomic), and a process killed mid-write leaves the
// old file. After a power failure the file may be old, empty or missing.
// It spares two disk flushes, which cost a command milliseconds.
func WriteCache(name string, data []byte, perm os.FileMode) error {
	return write(name, data, perm, false, false)
}

func write(name string, data []byte, perm os.FileMode, durable, dirSync bool) error {
	p, err := prepare(name, data, perm, durable)
	if err == nil {
		err = p.commit()
	}
	if err == nil && dirSync {
		err = syncDir(filepath.Dir(name))
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// Prepared is a file written beside its name and synced, not yet in
// place: Commit renames it over the name, Abort removes it. Until then
// readers see the old file, and a process stopped in between leaves the
// old file and a hidden temporary one beside it.
type Prepared struct {
	name, tmp string
	done      bool
}

// Prepare does what WriteFileSyncDirLater does before the rename: a
// caller writes and syncs a file while it waits for something else (the
// kernel taking a change), and puts it in place after (Commit, then
// SyncDir for the directory).
func Prepare(name string, data []byte, perm os.FileMode) (*Prepared, error) {
	p, err := prepare(name, data, perm, true)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", name, err)
	}
	return p, nil
}

func prepare(name string, data []byte, perm os.FileMode, durable bool) (*Prepared, error) {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*.tmp")
	if err != nil {
		return nil, err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil && durable {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp.Name()) // the error that stopped us is what counts
		return nil, err
	}
	return &Prepared{name: name, tmp: tmp.Name()}, nil
}

// Commit renames the prepared file over its name (the directory is not
// synced: SyncDir). A nil Prepared commits nothing.
func (p *Prepared) Commit() error {
	if err := p.commit(); err != nil {
		return fmt.Errorf("write %s: %w", p.name, err)
	}
	return nil
}

func (p *Prepared) commit() error {
	if p == nil {
		return nil
	}
	if p.done {
		return errors.New("committed or aborted already")
	}
	p.done = true
	if err := os.Rename(p.tmp, p.name); err != nil {
		_ = os.Remove(p.tmp) // the rename's error is what counts
		return err
	}
	if Trace != nil {
		Trace("rename", p.name)
	}
	return nil
}

// Abort removes the prepared file, unless it was committed. A nil
// Prepared aborts nothing.
func (p *Prepared) Abort() {
	if p == nil || p.done {
		return
	}
	p.done = true
	_ = os.Remove(p.tmp) // hidden and unused: nothing reads it
}

// Trace, when set (by tests, never concurrently with writes), is told of
// each rename ("rename", the file's name) and directory sync ("syncdir",
// the directory), in order.
var Trace func(event, path string)

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	if Trace != nil {
		Trace("syncdir", dir)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }() // opened to fsync; the Sync result counts
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// RemovePrepared removes the files a Prepare (or a write stopped half
// way) of a name in dir that matches left beside it: a process killed
// before the rename leaves one, hidden (".NAME.<digits>.tmp"), that
// nothing reads and nothing renames later. The caller holds the lock of
// every writer of those names, so none of them is being written.
func RemovePrepared(dir string, match func(name string) bool) error {
	return removeHidden(dir, func(file string) bool {
		mid, ok := strings.CutPrefix(file, ".")
		if ok {
			mid, ok = strings.CutSuffix(mid, ".tmp")
		}
		i := strings.LastIndexByte(mid, '.')
		return ok && i > 0 && isTemp(mid[i:], ".", "") && match(mid[:i])
	})
}

// RemoveHidden removes the files of dir named prefix, then digits (the
// random part os.CreateTemp gives), then suffix: the temporary files
// os.CreateTemp(dir, prefix+"*"+suffix) made and a killed process left.
func RemoveHidden(dir, prefix, suffix string) error {
	return removeHidden(dir, func(file string) bool { return isTemp(file, prefix, suffix) })
}

// RemoveHiddenFunc removes the regular files of dir whose names match:
// for temporary files of a form RemoveHidden does not know.
func RemoveHiddenFunc(dir string, match func(file string) bool) error {
	return removeHidden(dir, match)
}

// isTemp says whether file is prefix, digits, suffix.
func isTemp(file, prefix, suffix string) bool {
	mid, ok := strings.CutPrefix(file, prefix)
	if ok {
		mid, ok = strings.CutSuffix(mid, suffix)
	}
	return ok && mid != "" && strings.Trim(mid, "0123456789") == ""
}

// removeHidden removes the regular files of dir that match.
func removeHidden(dir string, match func(file string) bool) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove left temporary files: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !e.Type().IsRegular() || !match(e.Name()) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove left temporary file: %w", err))
		}
	}
	return errors.Join(errs...)
}
