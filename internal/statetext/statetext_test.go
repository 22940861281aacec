package statetext

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPutGet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	text := strings.Repeat("deny from 192.0.2.1\n", 5000)
	name, err := Put(dir, text)
	if err != nil {
		t.Fatal(err)
	}
	if name != "policy."+Hash(text) || !IsName(name) {
		t.Fatalf("name %q", name)
	}
	got, err := Get(dir, name)
	if err != nil || got != text {
		t.Fatalf("Get: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode: %v %v", fi, err)
	}
	// A file that no longer holds its text is refused, and Put writes it
	// again (even though this process wrote it before).
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("allow 1:65535/tcp\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	known.Delete(path)
	if _, err := Get(dir, name); err == nil || !strings.Contains(err.Error(), "does not match its checksum") {
		t.Fatalf("Get of a changed file: %v", err)
	}
	if _, err := Put(dir, text); err != nil {
		t.Fatal(err)
	}
	if got, err := Get(dir, name); err != nil || got != text {
		t.Fatalf("after Put again: %v", err)
	}
}

func TestGetRefusesNames(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"", "../etc/passwd", "policy.", "policy." + strings.Repeat("A", 64), "policy." + strings.Repeat("0", 63),
		"policy." + strings.Repeat("0", 64) + "/x", "saved.json", "policy." + strings.Repeat("g", 64)} {
		if _, err := Get(dir, name); err == nil {
			t.Errorf("Get(%q) succeeded", name)
		}
	}
	// A link in the state directory is not followed.
	target := filepath.Join(t.TempDir(), "t")
	if err := os.WriteFile(target, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	name := Name(Hash("x"))
	if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	if _, err := Get(dir, name); err == nil {
		t.Error("Get followed a symbolic link")
	}
}

func TestCollect(t *testing.T) {
	dir := t.TempDir()
	a, err := Put(dir, "one")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Put(dir, "two")
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "saved.json")
	if err := os.WriteFile(other, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Collect(dir, map[string]bool{a: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, a)); err != nil {
		t.Errorf("kept text removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, b)); !os.IsNotExist(err) {
		t.Errorf("unnamed text left: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another file removed: %v", err)
	}
	// Put after Collect writes the file again.
	if _, err := Put(dir, "two"); err != nil {
		t.Fatal(err)
	}
	if got, err := Get(dir, b); err != nil || got != "two" {
		t.Errorf("after Collect and Put: %q %v", got, err)
	}
}

func TestHashMemo(t *testing.T) {
	old := InlineMax
	InlineMax = 4
	t.Cleanup(func() { InlineMax = old })
	s := strings.Repeat("x", 10)
	first, again := Hash(s), Hash(s) // computed, then remembered
	if first != hashOf(s) || again != first {
		t.Fatal("memo gives another checksum")
	}
	u := strings.Repeat("y", 10)
	if Hash(u) != hashOf(u) || Hash(s) != hashOf(s) {
		t.Fatal("memo gives another text's checksum")
	}
	// An equal copy (another string) has the remembered checksum; a text
	// of the same length that differs in its last byte, its own.
	if c := strings.Clone(s); Hash(c) != first {
		t.Fatal("an equal copy has another checksum")
	}
	v := strings.Repeat("x", 9) + "z"
	if Hash(v) != hashOf(v) || Hash(v) == first {
		t.Fatal("memo gives a same-length text the remembered checksum")
	}
	// Two texts in turn (before and after a change) are both remembered;
	// a third pushes the older out, and every checksum stays its text's.
	for _, x := range []string{s, v, strings.Clone(s), v, u, s, u, strings.Clone(v)} {
		if Hash(x) != hashOf(x) {
			t.Fatalf("memo gives %q another checksum", x)
		}
	}
}

// A file larger than any policy is refused unread.
func TestGetRefusesHuge(t *testing.T) {
	dir := t.TempDir()
	name := Name(Hash("x"))
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxSize + 1); err != nil { // sparse: costs nothing
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Get(dir, name); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("Get of a huge file: %v", err)
	}
}
