package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/blocklist"
)

// An update killed after the kernel took a new list but before its saved
// copy was written leaves the kernel with the new list, the saved copy
// with the old one, and the update's marker: the next update loads its
// list even though the list equals the saved copy, and removes the
// marker. Without the marker the same update changes nothing (the
// comparison with the saved copy is what makes an update cheap).
func TestBlocklistUpdateAfterKilledUpdate(t *testing.T) {
	r := newSMRig(t, "nftables", 1)
	list := filepath.Join(t.TempDir(), "bad.netset")
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(list, "192.0.2.0/24\n")
	write(r.conf, "default deny incoming\nallow 22/tcp\nblocklist bad file "+list+"\n")
	if out, code := r.moat("--backend", "nftables", "enable"); code != 0 {
		t.Fatalf("enable: %d\n%s", code, out)
	}
	saved := filepath.Join(r.state, blocklist.Dir)
	copies := map[string][]byte{}
	for _, n := range []string{"bad.list", "bad.json"} {
		data, err := os.ReadFile(filepath.Join(saved, n))
		if err != nil {
			t.Fatal(err)
		}
		copies[n] = data
	}
	marker := filepath.Join(r.state, updatingMarker)
	for _, killed := range []bool{true, false} {
		write(list, "198.51.100.0/24\n")
		if out, code := r.moat("blocklist", "update"); code != 0 {
			t.Fatalf("update: %d\n%s", code, out)
		}
		if _, err := os.Lstat(marker); err == nil {
			t.Fatal("a finished update left its marker")
		}
		// The kill: the old saved copy, and the marker.
		for n, data := range copies {
			write(filepath.Join(saved, n), string(data))
		}
		if killed {
			write(marker, "bad\n")
		}
		write(list, "192.0.2.0/24\n")
		out, code := r.moat("blocklist", "update")
		if code != 0 {
			t.Fatalf("update back: %d\n%s", code, out)
		}
		got := r.fakes["nftables"].Loaded()
		back := strings.Contains(got, "192.0.2.0/24") && !strings.Contains(got, "198.51.100.0/24")
		if killed && !back {
			t.Errorf("after the killed update, an update back to the old list left the kernel with:\n%s\n(the update said %s)", got, out)
		}
		if !killed && back {
			t.Errorf("without the marker the update loaded the list: the test proves nothing")
		}
		if _, err := os.Lstat(marker); err == nil {
			t.Errorf("the marker is still there after the update (killed %v)", killed)
		}
		// A reload makes all agree again for the next round.
		if out, code := r.moat("reload"); code != 0 {
			t.Fatalf("reload: %d\n%s", code, out)
		}
	}
}

// After an update killed between the kernel batch and the saved copy, an
// update whose read fails (the list file gone, a fetch error) changes
// nothing and keeps the marker: the one after it, with the source back at
// the old contents, still loads them. The same fault twice.
func TestBlocklistFailedReadAfterKilledUpdate(t *testing.T) {
	r := newSMRig(t, "nftables", 1)
	list := filepath.Join(t.TempDir(), "bad.netset")
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(list, "192.0.2.0/24\n")
	write(r.conf, "default deny incoming\nallow 22/tcp\nblocklist bad file "+list+"\n")
	if out, code := r.moat("--backend", "nftables", "enable"); code != 0 {
		t.Fatalf("enable: %d\n%s", code, out)
	}
	saved := filepath.Join(r.state, blocklist.Dir)
	copies := map[string][]byte{}
	for _, n := range []string{"bad.list", "bad.json"} {
		data, err := os.ReadFile(filepath.Join(saved, n))
		if err != nil {
			t.Fatal(err)
		}
		copies[n] = data
	}
	marker := filepath.Join(r.state, updatingMarker)
	write(list, "198.51.100.0/24\n")
	if out, code := r.moat("blocklist", "update"); code != 0 {
		t.Fatalf("update: %d\n%s", code, out)
	}
	for n, data := range copies { // the kill: the old copy and the marker
		write(filepath.Join(saved, n), string(data))
	}
	write(marker, "bad\n")
	for i := 0; i < 2; i++ {
		if err := os.Remove(list); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if out, code := r.moat("blocklist", "update"); code == 0 {
			t.Fatalf("an update of a missing list file succeeded:\n%s", out)
		}
		if _, err := os.Lstat(marker); err != nil {
			t.Fatalf("a failed update removed the marker: %v", err)
		}
	}
	write(list, "192.0.2.0/24\n")
	out, code := r.moat("blocklist", "update")
	if code != 0 {
		t.Fatalf("update back: %d\n%s", code, out)
	}
	if got := r.fakes["nftables"].Loaded(); !strings.Contains(got, "192.0.2.0/24") || strings.Contains(got, "198.51.100.0/24") {
		t.Errorf("the update back to the old list left the kernel with:\n%s\n(it said %s)", got, out)
	}
	if _, err := os.Lstat(marker); err == nil {
		t.Errorf("the marker is still there")
	}
}
