package atomicfile

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// RemovePrepared and RemoveHidden remove exactly the temporary files
// Prepare and os.CreateTemp name (".NAME.<digits>.tmp", prefix digits
// suffix) of the names asked for: nothing that only looks alike, no
// directory, no symbolic link.
func TestRemovePrepared(t *testing.T) {
	dir := t.TempDir()
	p, err := Prepare(filepath.Join(dir, "applied.json"), []byte("x"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	prepared := filepath.Base(p.tmp)
	files := []string{
		"applied.json", ".applied.json.tmp", ".applied.json..tmp", ".applied.json.12a.tmp", ".applied.json.12",
		".other.json.12.tmp", "x.applied.json.12.tmp", ".applied.json.12.tmp.bak",
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, ".applied.json.34.tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("applied.json", filepath.Join(dir, ".applied.json.56.tmp")); err != nil {
		t.Fatal(err)
	}
	if err := RemovePrepared(dir, func(name string) bool { return name == "applied.json" }); err != nil {
		t.Fatal(err)
	}
	var left []string
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		left = append(left, e.Name())
	}
	want := append(slices.Clone(files), ".applied.json.34.tmp", ".applied.json.56.tmp")
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Errorf("left %q, want %q (the prepared %s removed, nothing else)", left, want, prepared)
	}
	if err := p.Commit(); err == nil {
		t.Error("a prepared file removed was committed")
	}
	if err := RemoveHidden(dir, ".applied.json.", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".applied.json.12")); !os.IsNotExist(err) {
		t.Errorf("RemoveHidden left .applied.json.12: %v", err)
	}
}
