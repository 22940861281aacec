package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

func TestOwnerPID(t *testing.T) {
	for name, want := range map[string]int{
		"moatpps-srv-123-4": 123, "moatpps-1-2": 1, "moatppsx-77-1": 77,
		"moatpps-srv-0-4": 0, "moatpps-srv-x-4": 0, "moatpps-srv-12-": 0, "moatpps-12": 0, "moatpps": 0,
		"other-123-4": 0, "moatpps-srv-+12-4": 0, "moatpps-srv-012-4": 0, "moat-5-6": 0,
	} {
		pid, ok := ownerPID(name, "moatpps")
		if ok != (want > 0) || pid != want && ok {
			t.Errorf("ownerPID(%q) = %d, %v; want %d", name, pid, ok, want)
		}
	}
}

// A namespace left by a run killed with kill -9 (its maker gone) is
// removed; one of a live process, one of another name, one of the name's
// form that NewNS did not make (`ip netns add`), one whose mark names
// another PID namespace, and a symbolic link, are not. A PID taken again
// by another process does not keep a stale one.
func TestRemoveStale(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	// Not under "moat": an e2e run starting meanwhile (RemoveStale("moat")
	// in its TestMain) would remove the stale ones before this test looks.
	prefix := fmt.Sprintf("labstale%d", os.Getpid())
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	dead, err := processOwner(child.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	self, err := selfOwner()
	if err != nil {
		t.Fatal(err)
	}
	killed := fmt.Sprintf("%s-srv-%d-1", prefix, dead.pid)
	live := fmt.Sprintf("%s-cli-%d-2", prefix, self.pid)
	other := prefix + "-keep"
	unmarked := fmt.Sprintf("%s-ipnetns-%d-3", prefix, dead.pid)
	otherPIDNS := fmt.Sprintf("%s-pidns-%d-4", prefix, dead.pid)
	reused := fmt.Sprintf("%s-reused-%d-5", prefix, self.pid)
	link := fmt.Sprintf("%s-link-%d-6", prefix, dead.pid)
	marks := map[string]owner{
		killed:     dead,
		live:       self,
		other:      dead,
		unmarked:   {},
		otherPIDNS: {pidNS: dead.pidNS + 1, pid: dead.pid, start: dead.start},
		reused:     {pidNS: self.pidNS, pid: self.pid, start: self.start + 1}, // this PID's earlier process
	}
	for n, o := range marks {
		ns, err := NewNS(n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ns.Close() })
		if o == (owner{}) {
			// As `ip netns add` leaves it: no mark.
			if _, err := ns.Run(context.Background(), "ip", "link", "set", "lo", "alias", ""); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := markOwner(ns, o); err != nil {
			t.Fatal(err)
		}
	}
	// A link to the killed run's namespace, under a name of the form.
	if err := os.Symlink(filepath.Join(netnsDir, killed), filepath.Join(netnsDir, link)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(filepath.Join(netnsDir, link)) })
	exists := func(n string) bool { _, err := os.Lstat(filepath.Join(netnsDir, n)); return err == nil }
	// The maker still runs: only the one whose PID another process took
	// since is removed.
	if got, err := RemoveStale(prefix); err != nil || !slices.Equal(got, []string{reused}) {
		t.Fatalf("with the maker alive: removed %q (%v), want %q", got, err, reused)
	}
	// kill -9: its namespace is stale.
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait() // killed: the error says so
	if got, err := RemoveStale(prefix); err != nil || !slices.Equal(got, []string{killed}) {
		t.Errorf("removed %q (%v), want %q", got, err, killed)
	}
	for _, n := range []string{live, other, unmarked, otherPIDNS, link} {
		if !exists(n) {
			t.Errorf("%s was removed", n)
		}
	}
	if exists(killed) || exists(reused) {
		t.Errorf("%s or %s is left", killed, reused)
	}
}

func TestOwnerMark(t *testing.T) {
	if self, err := selfOwner(); err != nil || self.pid != os.Getpid() || self.start == 0 {
		t.Errorf("selfOwner: %+v, %v (pid %d)", self, err, os.Getpid())
	}
	o := owner{pidNS: 4026531836, pid: 123, start: 456}
	if got, ok := parseOwnerMark(o.mark()); !ok || got != o {
		t.Errorf("parseOwnerMark(%q) = %+v, %v", o.mark(), got, ok)
	}
	for _, s := range []string{"", "moat-lab owner pidns=1 pid=0 start=3", "moat-lab owner pidns=1 pid=2 start=3 x",
		"moat-lab owner pidns=1 pid=+2 start=3", "moat-lab owner pidns=1 pid=2", "xmoat-lab owner pidns=1 pid=2 start=3"} {
		if o, ok := parseOwnerMark(s); ok {
			t.Errorf("parseOwnerMark(%q) = %+v", s, o)
		}
	}
}
