package labtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Dropbear prepares a dropbear server in dir: a host key, a client key
// (returned) that root's authorized_keys names, and the command that runs
// dropbear in the foreground on listen (dropbear's -p: "PORT" or
// "ADDR:PORT"), not yet started (start it in the namespace it serves).
// dropbear reads root's authorized_keys from /root: the command runs it
// in a mount namespace of its own where /root is dir's home folder, so
// the host's /root is never touched.
func Dropbear(t testing.TB, dir, listen string) (cmd *exec.Cmd, clientKey string) {
	t.Helper()
	for _, p := range []string{"dropbear", "dropbearkey", "dbclient", "unshare", "mount"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is not installed (dropbear-bin, util-linux, mount): %v", p, err)
		}
	}
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	hostKey, clientKey := filepath.Join(dir, "host"), filepath.Join(dir, "client")
	for _, k := range []string{hostKey, clientKey} {
		if out, err := exec.Command("dropbearkey", "-t", "ed25519", "-f", k).CombinedOutput(); err != nil {
			t.Fatalf("dropbearkey: %v\n%s", err, out)
		}
	}
	out, err := exec.Command("dropbearkey", "-y", "-f", clientKey).Output()
	if err != nil {
		t.Fatal(err)
	}
	var pub string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "ssh-") {
			pub = line + "\n"
		}
	}
	if err := os.WriteFile(filepath.Join(home, ".ssh", "authorized_keys"), []byte(pub), 0o600); err != nil {
		t.Fatal(err)
	}
	// The script is fixed; the paths are its arguments.
	cmd = exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", `mount --bind "$0" /root && exec "$@"`,
		home, "dropbear", "-F", "-E", "-s", "-p", listen, "-r", hostKey, "-P", filepath.Join(dir, "pid"))
	return cmd, clientKey
}
