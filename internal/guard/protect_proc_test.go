package guard

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// fakeProc writes a process into a fake /proc: comm, cmdline (NUL
// separated), status, and socket descriptors.
func fakeProc(t *testing.T, root, pid, comm, title string, ppid, uid int, inodes ...string) {
	t.Helper()
	dir := filepath.Join(root, pid)
	if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	status := "Name:\t" + comm + "\nPPid:\t" + itoa(ppid) + "\nUid:\t" + itoa(uid) + "\t" + itoa(uid) + "\t" + itoa(uid) + "\t" + itoa(uid) + "\n"
	for name, data := range map[string]string{"comm": comm + "\n", "cmdline": title + "\x00", "status": status} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i, ino := range inodes {
		if err := os.Symlink("socket:["+ino+"]", filepath.Join(dir, "fd", itoa(3+i))); err != nil {
			t.Fatal(err)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// A logged-in session is the child of a root sshd ([priv]); a local
// user's program named sshd, titled like a session and holding a
// connection to an address of his choice, must not shield that address
// from bans.
func TestLoggedInClientsOnlyUnderRootSSHD(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, "50", "sshd", "sshd: /usr/sbin/sshd -D [listener]", 1, 0, "4000")
	fakeProc(t, root, "100", "sshd", "sshd: admin [priv]", 50, 0)
	fakeProc(t, root, "101", "sshd", "sshd: admin@pts/0", 100, 1000, "5001")
	fakeProc(t, root, "200", "bash", "-bash", 1, 1000)
	fakeProc(t, root, "201", "sshd", "sshd: admin@pts/1", 200, 1000, "5002")
	// A user's sshd-named parent is not root's either.
	fakeProc(t, root, "300", "sshd", "sshd: mallory [priv]", 1, 1000)
	fakeProc(t, root, "301", "sshd", "sshd: mallory@pts/2", 300, 1000, "5003")
	if err := os.MkdirAll(filepath.Join(root, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	// 198.51.100.7, 203.0.113.66, 203.0.113.67 connected to 192.0.2.1:22.
	tcp := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   9: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4000 1 0 20 4 30 10 -1\n" +
		"   0: 010200C0:0016 076433C6:C350 01 00000000:00000000 00:00000000 00000000     0        0 5001 1 0 20 4 30 10 -1\n" +
		"   1: 010200C0:0016 427100CB:C351 01 00000000:00000000 00:00000000 00000000     0        0 5002 1 0 20 4 30 10 -1\n" +
		"   2: 010200C0:0016 437100CB:C352 01 00000000:00000000 00:00000000 00000000     0        0 5003 1 0 20 4 30 10 -1\n"
	if err := os.WriteFile(filepath.Join(root, "net", "tcp"), []byte(tcp), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := LoggedInClients(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("198.51.100.7")}
	if !slices.Equal(got, want) {
		t.Fatalf("LoggedInClients = %v, want %v (only the session under root's sshd)", got, want)
	}
}
