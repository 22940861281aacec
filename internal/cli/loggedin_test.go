package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/guard"
	"github.com/moat-fw/moat/internal/safeapply"
)

// The engine takes the logged-in sessions from the lockout check's scan
// (safeapply) rather than the guard's own: both name the same clients.
func TestLoggedInSameAsGuard(t *testing.T) {
	root := t.TempDir()
	proc := func(pid, ppid, uid int, comm, title string, inodes ...int) {
		dir := filepath.Join(root, fmt.Sprint(pid))
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		files := map[string]string{
			"comm":    comm + "\n",
			"cmdline": strings.ReplaceAll(title, " ", "\x00") + "\x00",
			"status":  fmt.Sprintf("Name:\t%s\nPPid:\t%d\nUid:\t%d\t%d\t%d\t%d\n", comm, ppid, uid, uid, uid, uid),
		}
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for i, ino := range inodes {
			if err := os.Symlink(fmt.Sprintf("socket:[%d]", ino), filepath.Join(dir, "fd", fmt.Sprint(3+i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	proc(90, 1, 0, "sshd", "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups", 4000)
	proc(100, 90, 0, "sshd", "sshd: admin [priv]")
	proc(101, 100, 1000, "sshd", "sshd: admin@pts/0", 5001)
	proc(200, 1, 1000, "bash", "-bash")
	proc(201, 200, 1000, "sshd", "sshd: admin@pts/1", 5002)
	proc(300, 1, 1000, "sshd", "sshd: mallory [priv]")
	proc(301, 300, 1000, "sshd", "sshd: mallory@pts/2", 5003)
	proc(110, 90, 0, "sshd-session", "sshd-session: ops [priv]")
	proc(111, 110, 1001, "sshd-session", "sshd-session: ops@notty", 5004)
	header := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	tcp := header +
		"   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4000 1 0 20 4 30 10 -1\n" +
		"   1: 010200C0:0016 076433C6:C350 01 00000000:00000000 00:00000000 00000000     0        0 5001 1 0 20 4 30 10 -1\n" +
		"   2: 010200C0:0016 427100CB:C351 01 00000000:00000000 00:00000000 00000000     0        0 5002 1 0 20 4 30 10 -1\n" +
		"   3: 010200C0:0016 437100CB:C352 01 00000000:00000000 00:00000000 00000000     0        0 5003 1 0 20 4 30 10 -1\n" +
		"   4: 010200C0:0016 097100CB:C353 01 00000000:00000000 00:00000000 00000000     0        0 5004 1 0 20 4 30 10 -1\n"
	if err := os.MkdirAll(filepath.Join(root, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "net", "tcp"), []byte(tcp), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "net", "tcp6"), []byte(header), 0o644); err != nil {
		t.Fatal(err)
	}
	fromGuard, err := guard.LoggedInClients(root)
	if err != nil {
		t.Fatal(err)
	}
	st, err := safeapply.FindSSH(root, "")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fromGuard, st.LoggedIn) || len(st.LoggedIn) != 2 {
		t.Errorf("guard: %v, the lockout check's scan: %v", fromGuard, st.LoggedIn)
	}
}
