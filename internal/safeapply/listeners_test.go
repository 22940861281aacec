package safeapply

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"syscall"
	"testing"

	"github.com/moat-fw/moat/internal/lab"
)

// Listeners reads the listening TCP and bound UDP sockets of the
// namespace it runs in (not the connected ones, not another
// namespace's), with the families each takes and the owning process,
// over sock_diag and, the same, from /proc.
func TestListeners(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run this test as root")
		}
		t.Skip("needs root for network namespaces")
	}
	ns, err := lab.NewNS(lab.UniqueName("moatls"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Close() })
	var got, fromProc []Listener
	err = ns.Do(func() error {
		var closers []func() error
		defer func() {
			for _, c := range closers {
				_ = c()
			}
		}()
		// ns.Do may run on another goroutine: errors are returned, not
		// t.Fatal'd.
		var serr error
		listen := func(network, addr string) {
			l, err := net.Listen(network, addr)
			if err != nil {
				serr = err
				return
			}
			closers = append(closers, l.Close)
		}
		packet := func(network, addr string) {
			c, err := net.ListenPacket(network, addr)
			if err != nil {
				serr = err
				return
			}
			closers = append(closers, c.Close)
		}
		listen("tcp", "[::]:7001")     // dual stack
		listen("tcp6", "[::]:7002")    // Go sets IPV6_V6ONLY for tcp6 on ::
		listen("tcp4", "0.0.0.0:7003") // IPv4 only
		listen("tcp", "127.0.0.1:7004")
		packet("udp", "[::]:7001")
		packet("udp6", "[::]:7002")
		packet("udp4", "127.0.0.1:7004")
		if serr != nil {
			return serr
		}
		// Connected sockets take packets from their peer only: left out.
		c, err := net.Dial("tcp", "127.0.0.1:7004")
		if err != nil {
			return err
		}
		closers = append(closers, c.Close)
		u, err := net.Dial("udp", "127.0.0.1:7004")
		if err != nil {
			return err
		}
		closers = append(closers, u.Close)
		got, err = Listeners("/proc")
		if err != nil {
			return err
		}
		fromProc, err = listenersFrom(func(inetDiagReq) ([]tcpEntry, error) { return nil, syscall.EPROTONOSUPPORT }, "/proc")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"tcp [::]:7001 v4 v6", "tcp [::]:7002 v6", "tcp 0.0.0.0:7003 v4", "tcp 127.0.0.1:7004 v4",
		"udp [::]:7001 v4 v6", "udp [::]:7002 v6", "udp 127.0.0.1:7004 v4"}
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, ls []Listener, v6onlyKnown bool) {
		var s []string
		for _, l := range ls {
			d := l.Proto + " " + l.Local.String()
			if l.V4 {
				d += " v4"
			}
			if l.V6 {
				d += " v6"
			}
			s = append(s, d)
			if l.PID != os.Getpid() || l.Process+"\n" != string(comm) {
				t.Errorf("%s: %s owned by %d %q, want %d %q", name, d, l.PID, l.Process, os.Getpid(), comm)
			}
		}
		sort.Strings(s)
		w := slices.Clone(want)
		if !v6onlyKnown {
			// /proc does not tell IPV6_V6ONLY: an IPv6 socket on :: is
			// taken to take IPv4 too (Linux's default).
			for i := range w {
				if w[i] == "tcp [::]:7002 v6" || w[i] == "udp [::]:7002 v6" {
					w[i] = w[i][:len(w[i])-3] + " v4 v6"
				}
			}
		}
		sort.Strings(w)
		if !slices.Equal(s, w) {
			t.Errorf("%s: listeners\n%v\nwant\n%v", name, s, w)
		}
	}
	check("sock_diag", got, true)
	check("/proc", fromProc, false)
}

// socketOwners names the process holding each socket: the first by PID,
// its comm as the kernel has it (hostile text is the printer's to clean).
func TestSocketOwners(t *testing.T) {
	root := t.TempDir()
	mk := func(pid int, comm string, inodes ...string) {
		dir := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "comm"), []byte(comm+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		for i, in := range inodes {
			if err := os.Symlink("socket:["+in+"]", filepath.Join(dir, "fd", strconv.Itoa(i+3))); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk(20, "worker", "111")
	mk(10, "nginx", "111", "222")
	mk(30, "evil\x1b[2J", "333")
	mk(40, "other", "444")
	if err := os.Symlink("/dev/null", filepath.Join(root, "40", "fd", "9")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	got := socketOwners(root, map[string]bool{"111": true, "222": true, "333": true, "555": true})
	want := map[string]owner{"111": {10, "nginx"}, "222": {10, "nginx"}, "333": {30, "evil\x1b[2J"}}
	if len(got) != len(want) {
		t.Errorf("owners %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("socket %s: %+v, want %+v", k, got[k], v)
		}
	}
	if len(socketOwners(root, nil)) != 0 {
		t.Error("no socket asked: none found")
	}
}

// A line of /proc/net/udp6 reads as the TCP tables' lines do: state 07
// is a bound, unconnected socket.
func TestParseProcUDP(t *testing.T) {
	data := []byte("  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n" +
		"  1: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n")
	e := parseProcTCP(data)
	if len(e) != 1 || e[0].state != "07" || e[0].local != netip.MustParseAddrPort("[::]:53") || e[0].inode != "4242" {
		t.Fatalf("parsed %+v", e)
	}
	if l := listenerOf("udp", e[0]); !l.V4 || !l.V6 {
		t.Errorf("a :: socket whose IPV6_V6ONLY is unknown takes both families: %+v", l)
	}
}
