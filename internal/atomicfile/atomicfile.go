// Package atomicfile writes files so that readers see the old contents or
// the new, never a mix, even if the machine stops mid-write.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	renamed := false
	defer func() {
		if !renamed {
			_ = os.Remove(tmp.Name()) // the error that stopped us is what counts
		}
	}()
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
	if err == nil {
		err = os.Rename(tmp.Name(), name)
		renamed = err == nil
		if renamed && Trace != nil {
			Trace("rename", name)
		}
	}
	if err == nil && dirSync {
		err = syncDir(filepath.Dir(name))
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
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
