package blocklist

import (
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/statedir"
)

// An update killed between the two writes of a url list's saved copy
// (the list, then its metadata, after the kernel took the new list)
// leaves the new list beside the old metadata, whose checksum it does
// not match. The next apply (a reload, any rule edit) loaded the url list
// empty ("not fetched yet"): the networks it blocked came in until the
// next update, a day later with 'refresh 24h'. The list, written whole
// (renamed in), is used as saved, checked again, with a warning; a copy
// that does not parse is still ignored.
func TestLoadURLListKilledBetweenSaves(t *testing.T) {
	state := t.TempDir()
	bl := &policy.Blocklist{Name: "drop", Source: policy.BlocklistURL, URL: "https://lists.example/drop.txt"}
	old := &List{V4: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}
	m := Meta{Name: "drop", Source: string(bl.Source), Where: bl.Where(), Updated: time.Now()}
	if err := WriteCache(state, &m, old); err != nil {
		t.Fatal(err)
	}
	// The update saves the new list, and is killed before the metadata.
	newer := &List{V4: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}}
	if err := statedir.WriteFile(listDir(state), "drop.list", Canonical("drop", newer)); err != nil {
		t.Fatal(err)
	}
	got, err := Load(state, bl, Protect{}, time.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Prefixes) != 1 || got.Prefixes[0] != newer.V4[0] {
		t.Errorf("loaded %v, want the list as saved (%v)", got.Prefixes, newer.V4)
	}
	if got.Warning == nil || !strings.Contains(got.Warning.Error(), "checksum") {
		t.Errorf("no warning says the copy does not match its metadata: %v", got.Warning)
	}
	// A live SSH session inside it: refused as an update would refuse it.
	got, _ = Load(state, bl, Protect{Sessions: []netip.Addr{netip.MustParseAddr("203.0.113.9")}}, time.Now(), false)
	if len(got.Prefixes) != 0 {
		t.Errorf("a copy covering a live session was loaded: %v", got.Prefixes)
	}
	// Damaged beyond parsing: ignored, as before.
	if err := os.WriteFile(listPath(state, "drop"), []byte("203.0.113.0/24\nnot a network\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := Load(state, bl, Protect{}, time.Now(), false); len(got.Prefixes) != 0 {
		t.Errorf("a damaged copy was loaded: %v", got.Prefixes)
	}
}

// The first save of a url list's source (no metadata of that source
// vouches for a copy yet) killed between the list and its metadata: the
// metadata written before the list (Saving, its checksum) vouches for it,
// and the next apply loads it (it loaded nothing: "not fetched yet").
// Killed before the list is in place, what is there (another source's
// copy) is not used. Each state is what writeCacheData leaves at the kill.
func TestLoadURLListFirstSaveKilled(t *testing.T) {
	for _, before := range []string{"none", "failed fetch", "other source"} {
		t.Run(before, func(t *testing.T) {
			state := t.TempDir()
			bl := &policy.Blocklist{Name: "drop", Source: policy.BlocklistURL, URL: "https://lists.example/drop.txt"}
			other := &List{V4: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}
			writeBefore(t, state, before, bl, other)
			newer := &List{V4: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}}
			m := Meta{Name: "drop", Source: "url", Where: bl.Where(), Updated: time.Now()}
			if err := WriteCache(state, &m, newer); err != nil {
				t.Fatal(err)
			}
			full, err := os.ReadFile(metaPath(state, "drop"))
			if err != nil {
				t.Fatal(err)
			}
			// The kill after the list: the metadata written before it.
			pending := m
			pending.SHA256, pending.Saving, pending.Networks, pending.V4 = "", m.SHA256, 0, 0
			if err := WriteMeta(state, pending); err != nil {
				t.Fatal(err)
			}
			loadsWithWarning(t, state, bl, newer, "killed after the list")
			// A copy covering a live session is refused, as an update refuses it.
			if got, _ := Load(state, bl, Protect{Sessions: []netip.Addr{netip.MustParseAddr("203.0.113.9")}}, time.Now(), false); len(got.Prefixes) != 0 {
				t.Errorf("a copy covering a live session was loaded: %v", got.Prefixes)
			}
			// The kill before the list: another copy is there.
			if err := statedir.WriteFile(listDir(state), "drop.list", Canonical("drop", other)); err != nil {
				t.Fatal(err)
			}
			if got, _ := Load(state, bl, Protect{}, time.Now(), false); len(got.Prefixes) != 0 {
				t.Errorf("killed before the list: loaded %v, a copy nothing vouches for", got.Prefixes)
			}
			// The save completed: no warning, and no Saving left.
			if err := os.WriteFile(metaPath(state, "drop"), full, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := statedir.WriteFile(listDir(state), "drop.list", Canonical("drop", newer)); err != nil {
				t.Fatal(err)
			}
			if got, err := Load(state, bl, Protect{}, time.Now(), false); err != nil || len(got.Prefixes) != 1 || got.Warning != nil || got.Meta.Saving != "" {
				t.Errorf("after the whole save: %v, %v, %v, saving %q", got.Prefixes, err, got.Warning, got.Meta.Saving)
			}
		})
	}
}

// SaveFirstBefore writes a url list's first copy, vouched for as Saving,
// before the kernel takes it: an update killed after the kernel batch
// left no copy, and the next apply loaded the list empty. Its undo (the
// kernel refused the change) puts back the files as they were, byte for
// byte; SaveResult after it completes the save. A list that metadata of
// its source vouches for already, an unchanged one and a file list are
// left to SaveResult.
func TestSaveFirstBefore(t *testing.T) {
	bl := &policy.Blocklist{Name: "drop", Source: policy.BlocklistURL, URL: "https://lists.example/drop.txt"}
	other := &List{V4: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}
	newer := &List{V4: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}}
	files := func(state string) map[string]string {
		got := map[string]string{}
		for _, n := range []string{"drop.json", "drop.list"} {
			if data, err := os.ReadFile(filepath.Join(listDir(state), n)); err == nil {
				got[n] = string(data)
			}
		}
		return got
	}
	for _, before := range []string{"none", "failed fetch", "other source", "interrupted first save"} {
		t.Run(before, func(t *testing.T) {
			state := t.TempDir()
			writeBefore(t, state, before, bl, other)
			was := files(state)
			r := &Result{Name: "drop", New: newer, Meta: Meta{Name: "drop", Source: "url", Where: bl.Where(), Updated: time.Now()}}
			undo, err := SaveFirstBefore(state, r)
			if err != nil {
				t.Fatal(err)
			}
			// Killed after the kernel took it: the next apply loads it.
			loadsWithWarning(t, state, bl, newer, "killed after the kernel change")
			// The kernel refused it: the files as they were.
			if err := undo(); err != nil {
				t.Fatal(err)
			}
			if now := files(state); !maps.Equal(now, was) {
				t.Errorf("after the undo:\n%v\nwant\n%v", now, was)
			}
			// Taken: SaveResult completes the save, without Saving.
			if _, err := SaveFirstBefore(state, r); err != nil {
				t.Fatal(err)
			}
			if err := SaveResult(state, r); err != nil {
				t.Fatal(err)
			}
			got, err := Load(state, bl, Protect{}, time.Now(), false)
			if err != nil || len(got.Prefixes) != 1 || got.Prefixes[0] != newer.V4[0] || got.Warning != nil || got.Meta.Saving != "" || got.Meta.SHA256 == "" {
				t.Errorf("after the whole save: %v, %v, %v, saving %q", got.Prefixes, err, got.Warning, got.Meta.Saving)
			}
			// Now vouched for: the next update's copy waits for SaveResult.
			saved := files(state)
			for _, r := range []*Result{
				{Name: "drop", New: other, Meta: got.Meta},
				{Name: "drop", New: newer, Meta: got.Meta, NotModified: true},
				{Name: "drop", New: other, Meta: Meta{Name: "drop", Source: "file", Where: "/etc/moat/drop.list"}},
			} {
				if _, err := SaveFirstBefore(state, r); err != nil {
					t.Fatal(err)
				}
				if now := files(state); !maps.Equal(now, saved) {
					t.Errorf("%s (not modified %v) written before the kernel change", r.Meta.Where, r.NotModified)
				}
			}
		})
	}
}

// writeBefore leaves in state the drop list's files as before names them:
// "none" (no files), "failed fetch" (metadata of the source with an error
// and no copy), "other source" (another source's copy, other) and
// "interrupted first save" (other, vouched for as Saving).
func writeBefore(t *testing.T, state, before string, bl *policy.Blocklist, other *List) {
	t.Helper()
	var err error
	switch before {
	case "none":
	case "failed fetch":
		err = WriteMeta(state, Meta{Name: "drop", Source: "url", Where: bl.Where(), LastError: "server answered 500"})
	case "other source":
		m := Meta{Name: "drop", Source: "url", Where: "https://old.example/drop.txt"}
		err = WriteCache(state, &m, other)
	case "interrupted first save":
		m := Meta{Name: "drop", Source: "url", Where: bl.Where()}
		err = writePending(state, &m, other, Canonical("drop", other))
	default:
		t.Fatalf("no such state before: %q", before)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// loadsWithWarning fails the test unless the next apply loads bl's copy
// as want (its one network) with a warning; at says where the kill came.
func loadsWithWarning(t *testing.T, state string, bl *policy.Blocklist, want *List, at string) {
	t.Helper()
	got, err := Load(state, bl, Protect{}, time.Now(), false)
	if err != nil || len(got.Prefixes) != 1 || got.Prefixes[0] != want.V4[0] || got.Warning == nil {
		t.Errorf("%s: loaded %v (%v, warning %v), want %v with a warning", at, got.Prefixes, err, got.Warning, want.V4)
	}
}
