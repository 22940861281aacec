package statedir

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// Key makes a key once and reads the same one after; a key file others
// can read, or of another size, is replaced (and written 0600); ReadKey
// refuses both.
func TestKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	k := Key(dir, "test.key", 16)
	if len(k) != 16 {
		t.Fatalf("a key of %d bytes", len(k))
	}
	if again := Key(dir, "test.key", 16); !bytes.Equal(again, k) {
		t.Fatal("a second call made another key")
	}
	path := filepath.Join(dir, "test.key")
	for _, c := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"readable by others", k, 0o644},
		{"too short", k[:15], 0o600},
		{"too long", append(bytes.Clone(k), 0), 0o600},
		{"empty", nil, 0o600},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(path, c.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, c.mode); err != nil {
				t.Fatal(err)
			}
			if _, err := ReadKey(dir, "test.key", 16); err == nil {
				t.Fatal("ReadKey took it")
			}
			n := Key(dir, "test.key", 16)
			if len(n) != 16 || bytes.Equal(n, k) {
				t.Fatalf("not replaced: %x", n)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("written %04o", fi.Mode().Perm())
			}
			if got, err := ReadKey(dir, "test.key", 16); err != nil || !bytes.Equal(got, n) {
				t.Errorf("the new key is not the file's: %x, %v", got, err)
			}
		})
	}
}
