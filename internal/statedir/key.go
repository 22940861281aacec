package statedir

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Key is the secret of size bytes in the file name of dir (the key of an
// HMAC or a MAC over a cache moat trusts: the covered-rules memo, the
// ipset digests). A key file that is not exactly size bytes, that others
// can read, or that is not the running user's (root's) is replaced by a
// new random key written 0600: sums made under it could be forged. When
// the file cannot be read or written the key is a random one for this
// process alone (what it signs is then never trusted again: slower,
// never wrong).
func Key(dir, name string, size int) []byte {
	if key, err := ReadKey(dir, name, size); err == nil {
		return key
	}
	key := make([]byte, size)
	_, _ = rand.Read(key) // never fails (crypto/rand)
	if WriteCache(dir, name, key) == nil {
		// Another command may have written its key in between: the one
		// in the file is the one every command uses.
		if k, err := ReadKey(dir, name, size); err == nil {
			return k
		}
	}
	return key
}

// ReadKey reads the key file name of dir: exactly size bytes, 0600 or
// stricter, and the running user's; anything else is an error.
func ReadKey(dir, name string, size int) ([]byte, error) {
	f, err := OpenFile(dir, name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read only
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("key %s: %w", f.Name(), err)
	}
	if st.Mode&0o077 != 0 || int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("key %s: mode %04o, owner %d: readable by others", f.Name(), st.Mode&0o7777, st.Uid)
	}
	key := make([]byte, size+1)
	n, err := io.ReadFull(f, key)
	if !errors.Is(err, io.ErrUnexpectedEOF) || n != size {
		return nil, fmt.Errorf("key %s: not a key of %d bytes", f.Name(), size)
	}
	return key[:n], nil
}
