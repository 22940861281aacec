package engine

import (
	"path/filepath"
	"testing"

	"github.com/moat-fw/moat/internal/atomicfile"
)

// An edit makes every file it replaces durable (each rename is followed by
// a sync of its directory before the command ends), with one sync of the
// state directory for the applied record and the boot record together:
// the journal's, then the records' (three before: a disk flush each).
func TestEditDirectorySyncs(t *testing.T) {
	r := newRig(t)
	r.write("default deny incoming\nallow 22/tcp\n")
	if _, err := r.enable(r.ch(0)); err != nil {
		t.Fatal(err)
	}
	var events [][2]string
	atomicfile.Trace = func(event, path string) { events = append(events, [2]string{event, path}) }
	t.Cleanup(func() { atomicfile.Trace = nil })
	if _, err := r.add(r.ch(0), "allow 8080/tcp"); err != nil {
		t.Fatal(err)
	}
	atomicfile.Trace = nil
	pending := map[string]string{} // directory → a file renamed into it, not yet synced
	stateSyncs := 0
	renamed := map[string]bool{}
	for _, e := range events {
		switch e[0] {
		case "rename":
			pending[filepath.Dir(e[1])] = e[1]
			renamed[filepath.Base(e[1])] = true
		case "syncdir":
			delete(pending, e[1])
			if e[1] == r.dir {
				stateSyncs++
			}
		}
	}
	for dir, name := range pending {
		t.Errorf("%s was renamed into %s, which was not synced after", name, dir)
	}
	for _, f := range []string{"intent.json", "applied.json", "saved.json"} {
		if !renamed[f] {
			t.Errorf("the edit did not write %s: %v", f, events)
		}
	}
	if stateSyncs != 2 {
		t.Errorf("the state directory was synced %d times, want 2 (the journal; the applied and boot records): %v", stateSyncs, events)
	}
}
