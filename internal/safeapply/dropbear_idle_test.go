package safeapply

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// A dropbear session with no shell and no command (dbclient -N, a
// port-forward-only session) forks no child: it was not seen as logged
// in (its client could be banned by the guard, dropped by the port scan
// trap). It is logged in when its process listens for a remote forward
// (a socket only a login gives) or when it has outlived dropbear's
// authentication timeout. A connection still guessing, young and with
// only its own connection (or the daemon's listener, not closed), is not;
// nor is a user's own dropbear with a forward; nor, while young, a
// session with only a local forward's channel (an NSS module's connection
// looks the same: TestFindSSHLoggedInDropbearNSSConnection). IPv4 and
// IPv6.
func TestFindSSHLoggedInDropbearNoShell(t *testing.T) {
	b := newProc(t)
	lis := b.dropbearDaemon()
	remoteFwd := b.sock("01", "192.0.2.1:2222", "198.51.100.7:50000")
	remoteLis := b.sock("0A", "127.0.0.1:2400", "0.0.0.0:0")
	localFwd := b.sock("01", "[2001:db8::1]:2222", "[2001:db8:5::7]:50001")
	localChan := b.sock("01", "[2001:db8::1]:40000", "[2001:db8::50]:80")
	idleOld := b.sock("01", "192.0.2.1:2222", "198.51.100.8:50002")
	guessing := b.sock("01", "192.0.2.1:2222", "203.0.113.9:50003")
	guessing2 := b.sock("01", "192.0.2.1:2222", "203.0.113.10:50004")
	mallory := b.sock("01", "192.0.2.1:2222", "203.0.113.66:50005")
	malloryLis := b.sock("0A", "0.0.0.0:2401", "0.0.0.0:0")
	b.dropbearSession(100, 0, remoteFwd, remoteLis)
	b.dropbearSession(110, 0, localFwd, localChan)
	b.dropbearSession(120, 0, idleOld)
	b.dropbearSession(130, 0, guessing)
	b.dropbearSession(140, 0, guessing2, lis)
	b.dropbearSession(150, 1000, mallory, malloryLis)
	// /proc/uptime: 1000 s; start times in clock ticks (10 ms).
	b.started(map[int][2]int{90: {1, 100}, 100: {90, 99000}, 110: {90, 99000}, 120: {90, 50000}, 130: {90, 99000}, 140: {90, 99000}, 150: {90, 50000}})
	st := find(t, b.write(""), nil)
	if got, want := fmt.Sprint(st.LoggedIn), "[198.51.100.7 198.51.100.8]"; got != want {
		t.Errorf("logged in: %s, want %s (forwarding, outlived the auth timeout; not the young ones guessing nor a user's dropbear)", got, want)
	}
	if len(st.Sessions) != 6 {
		t.Errorf("sessions: %s", sessionList(st))
	}
}

// A connection still guessing passwords may hold an established TCP
// connection of its own that no login gave it: dropbear looks up the user
// name the client sent (getpwnam) before any password, and an NSS module
// that keeps its connection in the process (PostgreSQL's libnss-pgsql2,
// the old libnss-ldap, ...) leaves it open. Taken for a local forward's
// channel, it made any client that sent a user name "logged in": the guard
// refused to ban it. Only a forward's listener (dbclient -R), which no
// library opens, counts; a local forward's channel is not told from such a
// connection. IPv4 and IPv6.
func TestFindSSHLoggedInDropbearNSSConnection(t *testing.T) {
	b := newProc(t)
	b.dropbearDaemon()
	guess4 := b.sock("01", "192.0.2.1:2222", "203.0.113.9:50003")
	nss4 := b.sock("01", "192.0.2.1:41000", "192.0.2.53:5432")
	guess6 := b.sock("01", "[2001:db8::1]:2222", "[2001:db8:5::9]:50004")
	nss6 := b.sock("01", "[2001:db8::1]:41001", "[2001:db8::53]:389")
	b.dropbearSession(100, 0, guess4, nss4)
	b.dropbearSession(110, 0, guess6, nss6)
	b.started(map[int][2]int{90: {1, 100}, 100: {90, 99000}, 110: {90, 99000}})
	if st := find(t, b.write(""), nil); len(st.LoggedIn) != 0 {
		t.Errorf("connections still guessing, holding an NSS module's connection, taken for logged in: %s", st.LoggedIn)
	}
}

// dropbear times a connection's authentication on CLOCK_MONOTONIC, which
// stops while the machine sleeps; /proc's uptime and start times run on.
// A connection still guessing that slept through a suspend looked older
// than dropbear's authentication timeout, so logged in (the guard spared
// its client) until dropbear dropped it. Its age less the time slept is
// what counts. IPv4 and IPv6.
func TestFindSSHLoggedInDropbearSuspend(t *testing.T) {
	b := newProc(t)
	b.dropbearDaemon()
	guess4 := b.sock("01", "192.0.2.1:2222", "203.0.113.9:50003")
	guess6 := b.sock("01", "[2001:db8::1]:2222", "[2001:db8:5::9]:50004")
	b.dropbearSession(100, 0, guess4)
	b.dropbearSession(110, 0, guess6)
	// /proc/uptime: 1000 s; both connections started at 100 s (900 s of
	// /proc's time), 700 s of which the machine slept.
	b.started(map[int][2]int{90: {1, 100}, 100: {90, 10000}, 110: {90, 10000}})
	root := b.write("")
	for _, c := range []struct {
		slept time.Duration
		want  string
	}{{700 * time.Second, "[]"}, {0, "[203.0.113.9 2001:db8:5::9]"}} {
		f := &sshFinder{procRoot: root, hintPorts: []uint16{22}, suspended: func() time.Duration { return c.slept }}
		st, err := f.find("")
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(st.LoggedIn, netip.Addr.Compare)
		if got := fmt.Sprint(st.LoggedIn); got != c.want {
			t.Errorf("slept %s: logged in %s, want %s", c.slept, got, c.want)
		}
	}
	if d := suspendedTime(); d < 0 {
		t.Errorf("suspended %s", d)
	}
}

// The same with a real dropbear in a namespace: dbclient -N with a
// remote forward (its listener appears at the login) is logged in; a
// young dbclient -N with no forward, or with a local forward in use
// (dropbear's connection to the target looks like an NSS module's), is
// not told from a connection still guessing (it is after dropbear's
// authentication timeout, which a test does not wait for); nor is a
// connection that read the banner.
func TestFindSSHLoggedInRealDropbearNoShell(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	t.Parallel()
	ns, dir, id, serverLog := startDropbear(t, "moatdbn", "192.0.2.1:2298", "198.51.100.7", "198.51.100.8", "203.0.113.10")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// The local forward's target: a listener that holds what it accepts.
	var target net.Listener
	must(ns.Do(func() error {
		var err error
		target, err = net.Listen("tcp", "192.0.2.1:8080")
		return err
	}))
	t.Cleanup(func() { _ = target.Close() })
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = c.Close() })
		}
	}()
	var clientLog strings.Builder
	dbclient := func(args ...string) {
		t.Helper()
		c := exec.Command("dbclient", append([]string{"-y", "-N", "-i", id, "-p", "2298"}, args...)...)
		c.Env = append(os.Environ(), "HOME="+dir)
		c.Stdout, c.Stderr = io.Discard, &clientLog
		must(ns.Start(c))
		t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	}
	find := func(want string) SSHState {
		t.Helper()
		var st SSHState
		for deadline := time.Now().Add(10 * time.Second); ; {
			must(ns.Do(func() error {
				var err error
				st, err = FindSSH("/proc", "")
				return err
			}))
			slices.SortFunc(st.LoggedIn, netip.Addr.Compare)
			if fmt.Sprint(st.LoggedIn) == want || time.Now().After(deadline) {
				return st
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Wait for dropbear to listen.
	c, err := dialUntil(ns, net.Dialer{Timeout: time.Second}, "192.0.2.1:2298", 5*time.Second)
	if err != nil {
		t.Fatalf("dropbear does not answer: %v\n%s", err, serverLog.String())
	}
	_ = c.Close()
	dbclient("-b", "203.0.113.10", "root@192.0.2.1")
	dbclient("-b", "198.51.100.7", "-R", "127.0.0.1:2400:127.0.0.1:9", "root@192.0.2.1")
	dbclient("-b", "198.51.100.8", "-L", "127.0.0.1:2401:192.0.2.1:8080", "root@192.0.2.1")
	// Use the local forward once it listens (after the login).
	fwd, err := dialUntil(ns, net.Dialer{Timeout: time.Second}, "127.0.0.1:2401", 10*time.Second)
	if err != nil {
		t.Fatalf("the local forward does not listen: %v\nclient: %s\nserver: %s", err, clientLog.String(), serverLog.String())
	}
	t.Cleanup(func() { _ = fwd.Close() })
	want := "[198.51.100.7]"
	st := find(want)
	if got := fmt.Sprint(st.LoggedIn); got != want {
		t.Errorf("logged in: %s, want %s (-N with a remote forward; not yet -N with none or a local forward)\nsessions %+v\nclient: %s\nserver: %s", got, want, st.Sessions, clientLog.String(), serverLog.String())
	}
	if len(st.Sessions) != 3 {
		t.Errorf("live sessions: %+v", st.Sessions)
	}
}

// dropbearDaemon makes dropbear's daemon (PID 90, "/usr/sbin/dropbear -F
// -p 2222") listening on port 2222, IPv4 and IPv6; it gives the IPv4
// listener.
func (b *procBuilder) dropbearDaemon() string {
	lis := b.sock("0A", "0.0.0.0:2222", "0.0.0.0:0")
	lis6 := b.sock("0A", "[::]:2222", "[::]:0")
	b.procTitled(90, 1, "dropbear", dropbearTitle, 0, lis, lis6)
	return lis
}

// dropbearSession makes a process forked by that daemon for a
// connection, run as uid, holding the sockets inodes.
func (b *procBuilder) dropbearSession(pid, uid int, inodes ...string) {
	b.procTitled(pid, 90, "dropbear", dropbearTitle, uid, inodes...)
}

const dropbearTitle = "/usr/sbin/dropbear -F -p 2222"

// started writes /proc/uptime (1000 s) and each dropbear process's stat:
// its parent and its start time since boot in clock ticks (10 ms), by PID.
func (b *procBuilder) started(procs map[int][2]int) {
	b.must(os.WriteFile(filepath.Join(b.root, "uptime"), []byte("1000.00 1900.00\n"), 0o644))
	for pid, p := range procs {
		stat := fmt.Sprintf("%d (dropbear) S %d %d %d 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0\n", pid, p[0], pid, pid, p[1])
		b.must(os.WriteFile(filepath.Join(b.root, fmt.Sprint(pid), "stat"), []byte(stat), 0o644))
	}
}
