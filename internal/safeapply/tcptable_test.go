package safeapply

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/lab"
)

func TestMain(m *testing.M) {
	if os.Getenv("MOAT_TEST_FAKE_SSHD") != "" {
		fakeSSHD()
		return
	}
	os.Exit(m.Run())
}

// fakeSSHD is this test binary run under the name sshd: it listens on a
// dual-stack port, prints it, then prints "accepted" for each connection
// it accepts and holds, until its stdin closes.
func fakeSSHD() {
	ln, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		fmt.Println("error", err)
		return
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			fmt.Println("accepted")
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run this test as root")
		}
		t.Skip("needs root for network namespaces")
	}
}

// inodeOf is the socket inode of a connection.
func inodeOf(t *testing.T, c net.Conn) string {
	t.Helper()
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return strconv.FormatUint(st.Ino, 10)
}

// The kernel's TCP table read over sock_diag is /proc's, listening and
// established sockets only, IPv4, IPv6 and IPv4 on a dual-stack socket,
// of the calling thread's namespace only; and FindSSH, reading it, finds
// the sessions of a process named sshd over both families.
func TestKernelTCPTable(t *testing.T) {
	needRoot(t)
	t.Parallel()
	topo, err := lab.NewTopology("moattcp", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = topo.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Listeners of the test itself (not sshd): IPv4 only, IPv6 only and
	// dual-stack.
	var lns []net.Listener
	if err := topo.Server.Do(func() error {
		for _, a := range []struct{ network, addr string }{{"tcp4", "192.0.2.1:0"}, {"tcp6", "[2001:db8::1]:0"}, {"tcp", "[::]:0"}} {
			ln, err := net.Listen(a.network, a.addr)
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, ln := range lns {
		t.Cleanup(func() { _ = ln.Close() })
	}
	port := func(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }
	type want struct{ local, remote, inode, state string }
	var wants []want
	var conns []net.Conn
	for _, c := range []struct {
		ln  net.Listener
		dst string
	}{
		{lns[0], fmt.Sprintf("192.0.2.1:%d", port(lns[0]))},
		{lns[1], fmt.Sprintf("[2001:db8::1]:%d", port(lns[1]))},
		{lns[2], fmt.Sprintf("192.0.2.1:%d", port(lns[2]))}, // IPv4-mapped
		{lns[2], fmt.Sprintf("[2001:db8::1]:%d", port(lns[2]))},
	} {
		conn, err := topo.Client.Dial(ctx, c.dst)
		if err != nil {
			t.Fatalf("dial %s: %v", c.dst, err)
		}
		conns = append(conns, conn)
		acc, err := c.ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, acc)
		wants = append(wants, want{c.dst, conn.LocalAddr().String(), inodeOf(t, acc), "01"})
	}
	for _, c := range conns {
		t.Cleanup(func() { _ = c.Close() })
	}
	for _, ln := range lns {
		tl := ln.(*net.TCPListener)
		f, err := tl.File()
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
		wants = append(wants, want{ln.Addr().String(), "", strconv.FormatUint(st.Ino, 10), "0A"})
	}
	// A connection the client closed (CLOSE_WAIT here) is neither.
	closing, err := topo.Client.Dial(ctx, fmt.Sprintf("192.0.2.1:%d", port(lns[0])))
	if err != nil {
		t.Fatal(err)
	}
	acc, err := lns[0].Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = acc.Close() })
	closedInode := inodeOf(t, acc)
	_ = closing.Close()

	var diagEntries, procEntries []tcpEntry
	var diag bool
	if err := topo.Server.Do(func() error {
		// The FIN may take a moment to arrive.
		deadline := time.Now().Add(3 * time.Second)
		for {
			var err error
			procEntries, err = readTCP("/proc")
			if err != nil {
				return err
			}
			closed := false
			for _, e := range procEntries {
				closed = closed || (e.inode == closedInode && e.state == "08")
			}
			if closed || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		var err error
		diagEntries, diag, err = kernelTCP()
		if err != nil {
			return err
		}
		// kernelTCP's one dump of both families (TCPDIAG_GETSOCK) is the
		// two dumps of one family each, every field.
		_, a, b, err := oneDumpAndPerFamily()
		if err != nil {
			return err
		}
		if !slices.Equal(a, b) || len(a) == 0 {
			t.Errorf("one dump of both families:\n%s\nthe dumps per family:\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !diag {
		t.Fatal("sock_diag did not answer: the table came from /proc")
	}
	key := func(e tcpEntry) string {
		return strings.Join([]string{e.local.String(), e.remote.String(), e.inode, e.state}, " ")
	}
	var fromDiag, fromProc []string
	for _, e := range diagEntries {
		fromDiag = append(fromDiag, key(e))
	}
	for _, e := range procEntries {
		if e.state == "01" || e.state == "0A" {
			fromProc = append(fromProc, key(e))
		}
	}
	slices.Sort(fromDiag)
	slices.Sort(fromProc)
	if !slices.Equal(fromDiag, fromProc) {
		t.Errorf("sock_diag:\n%s\n/proc (listening and established):\n%s", strings.Join(fromDiag, "\n"), strings.Join(fromProc, "\n"))
	}
	for _, w := range wants {
		found := false
		for _, e := range diagEntries {
			if e.local.String() == w.local && e.inode == w.inode && e.state == w.state && (w.remote == "" || e.remote.String() == w.remote) {
				found = true
			}
		}
		if !found {
			t.Errorf("socket %+v not in the sock_diag table", w)
		}
	}
	for _, e := range diagEntries {
		if e.inode == closedInode {
			t.Errorf("a connection in CLOSE_WAIT is in the table: %+v", e)
		}
		if e.local.Addr() == lab.ClientV4 || e.local.Addr() == lab.ClientV6 {
			t.Errorf("the client namespace's socket is in the server's table: %+v", e)
		}
	}

	// A process named sshd listening and holding connections from the
	// client over IPv4 and IPv6.
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sshd := filepath.Join(t.TempDir(), "sshd")
	if err := os.Symlink(bin, sshd); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sshd)
	cmd.Env = append(os.Environ(), "MOAT_TEST_FAKE_SSHD=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.Server.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	out := bufio.NewScanner(stdout)
	if !out.Scan() {
		t.Fatal("fake sshd said nothing")
	}
	sshPort, err := strconv.Atoi(out.Text())
	if err != nil {
		t.Fatalf("fake sshd: %s", out.Text())
	}
	var clients []string
	for _, dst := range []string{fmt.Sprintf("192.0.2.1:%d", sshPort), fmt.Sprintf("[2001:db8::1]:%d", sshPort)} {
		conn, err := topo.Client.Dial(ctx, dst)
		if err != nil {
			t.Fatalf("dial %s: %v", dst, err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		if !out.Scan() || out.Text() != "accepted" {
			t.Fatalf("fake sshd did not accept %s: %q", dst, out.Text())
		}
		clients = append(clients, conn.LocalAddr().String()+" → "+dst+" (connection held by sshd)")
	}
	var st SSHState
	if err := topo.Server.Do(func() error {
		var err error
		st, err = FindSSH("/proc", "")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(st.Listen) != 1 || st.Listen[0] != netip.MustParseAddrPort(fmt.Sprintf("[::]:%d", sshPort)) {
		t.Errorf("sshd listens on %v, want [::]:%d", st.Listen, sshPort)
	}
	var got []string
	for _, s := range st.Sessions {
		got = append(got, s.String())
	}
	slices.Sort(got)
	slices.Sort(clients)
	if !slices.Equal(got, clients) {
		t.Errorf("sessions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(clients, "\n"))
	}
}

// Without sock_diag (a kernel without inet_diag), the table is /proc's;
// when neither can be read, FindSSH fails: the lockout check must not
// pass for want of knowing the sessions.
func TestTCPTableFallback(t *testing.T) {
	b := newProc(t)
	l := b.sock("0A", "0.0.0.0:22", "0.0.0.0:0")
	c := b.sock("01", "203.0.113.1:22", "198.51.100.9:40000")
	b.proc(100, 1, "sshd", l, c)
	root := b.write("")
	noDiag := func(uint8) ([]tcpEntry, error) { return nil, unix.ENOENT }
	entries, diag, err := tcpTable(noDiag, root)
	if err != nil || diag || len(entries) != 2 {
		t.Fatalf("fallback to /proc: %v entries, diag %v, %v", entries, diag, err)
	}
	// IPv6 alone failing also falls back, whole.
	v6fails := func(family uint8) ([]tcpEntry, error) {
		if family == unix.AF_INET6 {
			return nil, errors.New("interrupted")
		}
		return nil, nil
	}
	if entries, diag, err := tcpTable(v6fails, root); err != nil || diag || len(entries) != 2 {
		t.Fatalf("IPv6 dump failing: %v entries, diag %v, %v", entries, diag, err)
	}
	if _, _, err := tcpTable(noDiag, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("no sock_diag and no /proc: no error")
	}
	// The one dump of both families refused (TCPDIAG_GETSOCK: a kernel
	// without it, an interrupted dump): the dumps per family, and /proc
	// when they fail too.
	refused := func() ([]tcpEntry, error) { return nil, unix.EOPNOTSUPP }
	one := tcpEntry{local: netip.MustParseAddrPort("[2001:db8::1]:22"), state: "0A", inode: "7"}
	perFamily := func(family uint8) ([]tcpEntry, error) {
		if family == unix.AF_INET6 {
			return []tcpEntry{one}, nil
		}
		return nil, nil
	}
	if entries, diag, err := tcpTableBoth(refused, perFamily, root); err != nil || !diag || len(entries) != 1 || entries[0] != one {
		t.Fatalf("TCPDIAG_GETSOCK refused: %v entries, diag %v, %v; want the dumps per family's", entries, diag, err)
	}
	if entries, diag, err := tcpTableBoth(refused, noDiag, root); err != nil || diag || len(entries) != 2 {
		t.Fatalf("every dump refused: %v entries, diag %v, %v; want /proc's", entries, diag, err)
	}
	answered := func() ([]tcpEntry, error) { return []tcpEntry{one, one}, nil }
	if entries, diag, err := tcpTableBoth(answered, noDiag, root); err != nil || !diag || len(entries) != 2 || entries[0] != one {
		t.Fatalf("TCPDIAG_GETSOCK answered: %v entries, diag %v, %v; want its answer", entries, diag, err)
	}
	f := &sshFinder{procRoot: root, hintPorts: []uint16{22}, table: func() ([]tcpEntry, bool, error) {
		return tcpTable(noDiag, filepath.Join(t.TempDir(), "missing"))
	}}
	if _, err := f.find(""); err == nil {
		t.Fatal("FindSSH without a TCP table: no error")
	}
	f.table = func() ([]tcpEntry, bool, error) { return tcpTable(noDiag, root) }
	st, err := f.find("")
	if err != nil || len(st.Sessions) != 1 {
		t.Fatalf("FindSSH from /proc: %+v, %v", st, err)
	}
}

// oneDumpAndPerFamily reads the TCP sockets of the calling thread's
// namespace in one sock_diag dump of both families (TCPDIAG_GETSOCK),
// both, and in a dump of each family: a and b are their entryTexts, to
// compare. A table that did not come from sock_diag is an error.
func oneDumpAndPerFamily() (both []tcpEntry, a, b []string, err error) {
	both, err = diagTCPBoth()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("TCPDIAG_GETSOCK: %w", err)
	}
	perFamily, viaDiag, err := tcpTable(diagTCP, "/proc")
	if err != nil || !viaDiag {
		return nil, nil, nil, fmt.Errorf("the dumps per family: %v (sock_diag %v)", err, viaDiag)
	}
	return both, entryTexts(both), entryTexts(perFamily), nil
}

// entryTexts is each entry with every field, sorted: dumps to compare.
func entryTexts(es []tcpEntry) []string {
	out := make([]string, 0, len(es))
	for _, e := range es {
		out = append(out, fmt.Sprintf("%+v", e))
	}
	slices.Sort(out)
	return out
}
