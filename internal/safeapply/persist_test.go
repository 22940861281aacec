package safeapply

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/statetext"
)

// A reader without the lock (status) that reads saved.json just before a
// change replaces it and removes the text it names reads the new record,
// not an error about a missing text; a text missing for good is an error
// naming the record.
func TestLoadSavedDuringChange(t *testing.T) {
	old := statetext.InlineMax
	statetext.InlineMax = 1
	t.Cleanup(func() { statetext.InlineMax = old })
	dir := t.TempDir()
	if err := Save(dir, Saved{Backend: "nftables", Policy: "allow 22/tcp\n"}); err != nil {
		t.Fatal(err)
	}
	next := "allow 22/tcp\nallow 80/tcp\n"
	changes := 0
	savedRead = func() {
		if changes++; changes > 1 {
			return
		}
		if err := Save(dir, Saved{Backend: "nftables", Policy: next}); err != nil {
			t.Error(err)
		}
		if err := statetext.Collect(dir, map[string]bool{statetext.Name(statetext.Hash(next)): true}); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { savedRead = nil })
	s, err := LoadSaved(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Policy != next {
		t.Errorf("policy %q, want the new record's %q", s.Policy, next)
	}
	savedRead = nil
	if err := statetext.Collect(dir, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSaved(dir); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "saved.json")) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("text removed: err = %v", err)
	}
}
