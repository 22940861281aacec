package safeapply

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// procBuilder writes a fake /proc: processes with their sockets, and the
// namespace's TCP table.
type procBuilder struct {
	t     *testing.T
	root  string
	tcp   []string
	tcp6  []string
	inode int
}

func newProc(t *testing.T) *procBuilder {
	b := &procBuilder{t: t, root: t.TempDir(), inode: 1000}
	return b
}

// procAddr writes an address as /proc/net/tcp does: 32-bit words in host
// byte order, the port in hex.
func procAddr(ap netip.AddrPort) string {
	raw := ap.Addr().AsSlice()
	out := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(out[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	return fmt.Sprintf("%X:%04X", out, ap.Port())
}

// sock adds a socket ("0A" listen, "01" established) and returns its inode.
func (b *procBuilder) sock(state, local, remote string) string {
	b.inode++
	l, r := netip.MustParseAddrPort(local), netip.MustParseAddrPort(remote)
	line := fmt.Sprintf("   0: %s %s %s 00000000:00000000 00:00000000 00000000     0        0 %d 1 0 100 0 0 10 0", procAddr(l), procAddr(r), state, b.inode)
	if l.Addr().Is4() {
		b.tcp = append(b.tcp, line)
	} else {
		b.tcp6 = append(b.tcp6, line)
	}
	return fmt.Sprint(b.inode)
}

func (b *procBuilder) proc(pid, ppid int, comm string, inodes ...string) {
	dir := filepath.Join(b.root, fmt.Sprint(pid))
	b.must(os.MkdirAll(filepath.Join(dir, "fd"), 0o755))
	b.must(os.WriteFile(filepath.Join(dir, "comm"), []byte(comm+"\n"), 0o644))
	b.must(os.WriteFile(filepath.Join(dir, "status"), []byte(fmt.Sprintf("Name:\t%s\nPPid:\t%d\n", comm, ppid)), 0o644))
	for i, in := range inodes {
		b.must(os.Symlink("socket:["+in+"]", filepath.Join(dir, "fd", fmt.Sprint(i+3))))
	}
}

func (b *procBuilder) must(err error) {
	if err != nil {
		b.t.Fatal(err)
	}
}

func (b *procBuilder) write(portRange string) string {
	header := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	b.must(os.MkdirAll(filepath.Join(b.root, "net"), 0o755))
	b.must(os.WriteFile(filepath.Join(b.root, "net/tcp"), []byte(header+strings.Join(b.tcp, "\n")+"\n"), 0o644))
	b.must(os.WriteFile(filepath.Join(b.root, "net/tcp6"), []byte(header+strings.Join(b.tcp6, "\n")+"\n"), 0o644))
	if portRange != "" {
		b.must(os.MkdirAll(filepath.Join(b.root, "sys/net/ipv4"), 0o755))
		b.must(os.WriteFile(filepath.Join(b.root, "sys/net/ipv4/ip_local_port_range"), []byte(portRange), 0o644))
	}
	return b.root
}

func find(t *testing.T, root string, iface map[string]string) SSHState {
	t.Helper()
	f := &sshFinder{procRoot: root, hintPorts: []uint16{22}, sockIface: func(map[string]bool) (map[string]string, error) { return iface, nil }}
	st, err := f.find("")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func sessionList(st SSHState) string {
	var s []string
	for _, x := range st.Sessions {
		s = append(s, x.Client.String()+">"+x.Server.String())
	}
	return strings.Join(s, " ")
}

// A socket-activated sshd (systemd listens, sshd -i serves one connection)
// has its sessions and its port found.
func TestFindSSHSocketActivated(t *testing.T) {
	for _, c := range []struct {
		name, activator string
		activatorPID    int
		port            uint16
	}{
		{"systemd (PID 1) ssh.socket", "systemd", 1, 22},
		{"systemd-socket-activate", "systemd-socket-", 50, 2222},
		{"inetd", "xinetd", 60, 2200},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newProc(t)
			lis := b.sock("0A", fmt.Sprintf("0.0.0.0:%d", c.port), "0.0.0.0:0")
			lis6 := b.sock("0A", fmt.Sprintf("[::]:%d", c.port), "[::]:0")
			conn := b.sock("01", fmt.Sprintf("192.0.2.1:%d", c.port), "192.0.2.2:50000")
			other := b.sock("0A", "0.0.0.0:631", "0.0.0.0:0") // cups, also socket-activated
			b.proc(c.activatorPID, 0, c.activator, lis, lis6, other)
			b.proc(300, c.activatorPID, "sshd", conn)       // sshd -i: the monitor
			b.proc(301, 300, "sshd", conn)                  // its session child
			b.proc(400, c.activatorPID, "nginx", lis, conn) // never mind others
			st := find(t, b.write("32768 60999"), nil)
			if got := sessionList(st); got != fmt.Sprintf("192.0.2.2:50000>192.0.2.1:%d", c.port) {
				t.Errorf("sessions %q", got)
			}
			if got := fmt.Sprint(st.Ports()); got != fmt.Sprintf("[%d]", c.port) {
				t.Errorf("ports %s (631 is not SSH)", got)
			}
			if len(st.Sessions) == 1 && st.Sessions[0].ReconnectPorts.String() != "32768:60999,49152:65535,1024:65535" {
				t.Errorf("reconnect ports %s", st.Sessions[0].ReconnectPorts)
			}
		})
	}
	// With no session yet, systemd's listener on 22 is sshd's; on another
	// port nothing says so.
	b := newProc(t)
	l22 := b.sock("0A", "[::]:22", "[::]:0")
	l80 := b.sock("0A", "[::]:80", "[::]:0")
	b.proc(1, 0, "systemd", l22, l80)
	if st := find(t, b.write(""), nil); fmt.Sprint(st.Listen) != "[[::]:22]" || len(st.Sessions) != 0 {
		t.Errorf("idle socket activation: %v %v", st.Listen, st.Sessions)
	}
}

// Sockets sshd holds for port forwarding are neither SSH ports nor
// sessions: a -R listener of a session, connections into it, and -L
// connections out.
func TestFindSSHIgnoresForwarding(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "0.0.0.0:22", "0.0.0.0:0")
	sess := b.sock("01", "192.0.2.1:22", "192.0.2.2:50000")
	fwdL := b.sock("0A", "0.0.0.0:8080", "0.0.0.0:0")
	fwdIn := b.sock("01", "192.0.2.1:8080", "198.51.100.7:40000")
	fwdOut := b.sock("01", "192.0.2.1:41000", "203.0.113.9:80")
	b.proc(100, 1, "sshd", lis)
	b.proc(101, 100, "sshd", sess)
	b.proc(102, 101, "sshd", sess, fwdL, fwdIn, fwdOut)
	st := find(t, b.write(""), nil)
	if got := fmt.Sprint(st.Listen); got != "[0.0.0.0:22]" {
		t.Errorf("listen %s", got)
	}
	if got := sessionList(st); got != "192.0.2.2:50000>192.0.2.1:22" {
		t.Errorf("sessions %q", got)
	}
}

// IPv4 sessions on a dual-stack (::) listener appear in tcp6 as
// IPv4-mapped addresses: they are IPv4 sessions. A listener on one address
// takes sessions to that address only.
func TestFindSSHMappedAndBoundAddresses(t *testing.T) {
	b := newProc(t)
	lis6 := b.sock("0A", "[::]:22", "[::]:0")
	mapped := b.sock("01", "[::ffff:192.0.2.1]:22", "[::ffff:192.0.2.2]:50000")
	lisOne := b.sock("0A", "198.51.100.1:2222", "0.0.0.0:0")
	toOne := b.sock("01", "198.51.100.1:2222", "198.51.100.2:50001")
	notSSH := b.sock("01", "192.0.2.1:2222", "192.0.2.3:50002") // another server's port 2222 on another address
	b.proc(100, 1, "sshd", lis6, lisOne)
	b.proc(101, 100, "sshd", mapped)
	b.proc(102, 100, "sshd", toOne)
	b.proc(200, 1, "other", notSSH)
	st := find(t, b.write(""), nil)
	if got := sessionList(st); got != "198.51.100.2:50001>198.51.100.1:2222 192.0.2.2:50000>192.0.2.1:22" {
		t.Errorf("sessions %q", got)
	}
	if len(st.Sessions) != 2 || !st.Sessions[1].Client.Addr().Is4() {
		t.Fatalf("mapped session not IPv4: %v", st.Sessions)
	}
}

// A link-local session carries the interface its socket is bound to.
func TestFindSSHLinkLocalIface(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "[::]:22", "[::]:0")
	ll := b.sock("01", "[fe80::1]:22", "[fe80::2]:50000")
	gl := b.sock("01", "[2001:db8::1]:22", "[2001:db8::2]:50001")
	b.proc(100, 1, "sshd", lis)
	b.proc(101, 100, "sshd", ll, gl)
	st := find(t, b.write(""), map[string]string{ll: "eth1"})
	if got := sessionList(st); got != "[fe80::2]:50000>[fe80::1]:22 [2001:db8::2]:50001>[2001:db8::1]:22" {
		t.Errorf("sessions %q", got)
	}
	if st.Sessions[0].Iface != "eth1" || st.Sessions[1].Iface != "" {
		t.Errorf("interfaces %q %q", st.Sessions[0].Iface, st.Sessions[1].Iface)
	}
	if got := st.Sessions[0].String(); !strings.HasPrefix(got, "[fe80::2%eth1]:50000 → ") {
		t.Errorf("shown as %s", got)
	}
}

func TestCheckSessionsReconnect(t *testing.T) {
	wide := policy.Ports{{First: 32768, Last: 60999}, ianaEphemeral}
	v4 := Session{Client: netip.MustParseAddrPort("192.0.2.2:50000"), Server: netip.MustParseAddrPort("192.0.2.1:22"), Source: "test", ReconnectPorts: wide}
	ll := Session{Client: netip.MustParseAddrPort("[fe80::2]:50000"), Server: netip.MustParseAddrPort("[fe80::1]:22"), Source: "test", ReconnectPorts: wide, Iface: "eth1"}
	for _, c := range []struct {
		policy string
		s      Session
		want   string // "" no problem, else a fragment of Why
	}{
		// The session's own port (50000) passes; reconnects from 32768:45000 do not.
		{"reject proto tcp from any port 32768:45000 to any port 22\nallow 22/tcp\n", v4, "a reconnect from source port 32768 would be rejected by line 1"},
		{"deny proto tcp from any port 60000:61000 to any port 22\nallow 22/tcp\n", v4, "source port 60000"},
		{"deny proto tcp from any port 65535 to any port 22\nallow 22/tcp\n", v4, "source port 65535"},
		{"deny proto tcp from any port 1:1023 to any port 22\nallow 22/tcp\n", v4, ""},
		{"deny proto tcp from any port 50000 to any port 22\nallow 22/tcp\n", v4, "would be dropped by line 1"},
		{"default deny incoming\nallow proto tcp from any port 32768:65535 to any port 22\n", v4, ""},
		{"default deny incoming\nallow proto tcp from any port 40000:65535 to any port 22\n", v4, "source port 32768"},
		// The interface is the socket's, not the routing table's guess.
		{"default allow incoming\ndeny in on eth1 to any port 22 proto tcp\n", ll, "(it comes in on eth1)"},
		{"default allow incoming\ndeny in on eth+ to any port 22 proto tcp\n", ll, "dropped by line 2"},
		{"default allow incoming\ndeny in on eth0 to any port 22 proto tcp\n", ll, ""},
		// Routed traffic is not the host's sessions.
		{"default deny routed\nroute deny proto tcp to any port 22\nallow 22/tcp\n", v4, ""},
		{"default deny outgoing\nallow 22/tcp\n", v4, ""},
	} {
		p, err := policy.NewDocument("moat.conf", []byte(c.policy)).Policy(nil)
		if err != nil {
			t.Fatal(err)
		}
		problems := CheckSessions(ruleset.Compile(p), p, []Session{c.s}, func(netip.Addr) string { return "eth0" })
		switch {
		case c.want == "" && len(problems) > 0:
			t.Errorf("%q: refused: %s", c.policy, problems[0].Why)
		case c.want != "" && len(problems) == 0:
			t.Errorf("%q: not refused, want %q", c.policy, c.want)
		case c.want != "" && !strings.Contains(problems[0].Why, c.want):
			t.Errorf("%q: %q lacks %q", c.policy, problems[0].Why, c.want)
		}
		if len(problems) > 0 && strings.Contains(strings.Join(problems[0].Fixes, " "), "%") {
			t.Errorf("a fix names a scoped address: %v", problems[0].Fixes)
		}
	}
}

// Without sessions, moat warns about SSH ports new connections cannot
// reach, from any source port a client may use.
func TestPortWarningsSourcePorts(t *testing.T) {
	st := SSHState{Listen: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:22")}, ReconnectPorts: policy.Ports{{First: 32768, Last: 60999}, ianaEphemeral}}
	for pol, want := range map[string]string{
		"allow 22/tcp\n": "",
		"reject proto tcp from any port 32768:39999 to any port 22\nallow 22/tcp\n": "from source port 32768 would be rejected by line 1",
		"default deny incoming\n": "port 22 would be dropped by line 1: default deny incoming",
	} {
		p, err := policy.NewDocument("moat.conf", []byte(pol)).Policy(nil)
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(PortWarnings(ruleset.Compile(p), st), "\n")
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("%q: warnings %q, want %q", pol, got, want)
		}
	}
}

// Source-port rules for other traffic do not multiply the evaluations;
// those that could match the reconnect do split the ranges.
func TestSourcePortsCandidates(t *testing.T) {
	var b strings.Builder
	b.WriteString("default deny incoming\nallow 22/tcp\n")
	for i := range 2000 {
		fmt.Fprintf(&b, "deny proto tcp from any port %d:%d to any port 80\n", 1024+i*30, 1024+i*30+10)
	}
	b.WriteString("deny proto udp from any port 40000:41000 to any port 22\n")
	b.WriteString("deny proto tcp from 198.51.100.0/24 port 42000:43000 to any port 22\n")
	b.WriteString("deny proto tcp from 192.0.2.0/24 port 44000:45000 to any port 22\n")
	p, err := policy.NewDocument("moat.conf", []byte(b.String())).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	s := Session{Client: netip.MustParseAddrPort("192.0.2.2:50000"), Server: netip.MustParseAddrPort("192.0.2.1:22"), ReconnectPorts: policy.Ports{{First: 32768, Last: 60999}, ianaEphemeral}}
	got := fmt.Sprint(sourcePorts(ruleset.Compile(p), s, "eth0"))
	if got != "[50000 32768 44000 45001 49152]" {
		t.Errorf("candidates %s", got)
	}
}

// dropbear is an SSH server too: its daemon's port and its children's
// connections count.
func TestFindSSHDropbear(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "0.0.0.0:2202", "0.0.0.0:0")
	conn := b.sock("01", "192.0.2.1:2202", "192.0.2.2:50000")
	b.proc(100, 1, "dropbear", lis)
	b.proc(101, 100, "dropbear", conn)
	st := find(t, b.write(""), nil)
	if fmt.Sprint(st.Ports()) != "[2202]" || sessionList(st) != "192.0.2.2:50000>192.0.2.1:2202" {
		t.Errorf("ports %v sessions %q", st.Ports(), sessionList(st))
	}
}

// A session's interface is the route back to the client from the address
// the client connected to (source-based policy routing: an uplink per
// address), asked with both; link-local sessions keep their socket's.
func TestFindSSHSessionIface(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "[::]:22", "[::]:0")
	conn := b.sock("01", "198.51.100.1:22", "203.0.113.5:50000")
	conn6 := b.sock("01", "[fe80::1]:22", "[fe80::2]:50001")
	b.proc(100, 1, "sshd", lis)
	b.proc(200, 100, "sshd", conn, conn6)
	var asked []string
	f := &sshFinder{procRoot: b.write(""), hintPorts: []uint16{22},
		sockIface: func(map[string]bool) (map[string]string, error) { return map[string]string{conn6: "eth2"}, nil },
		routeIface: func(client, server netip.Addr) string {
			asked = append(asked, client.String()+" from "+server.String())
			if server == netip.MustParseAddr("198.51.100.1") {
				return "eth1"
			}
			return "eth0"
		}}
	st, err := f.find("")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range st.Sessions {
		got[s.Client.Addr().String()] = s.Iface
	}
	if got["203.0.113.5"] != "eth1" || got["fe80::2"] != "eth2" || len(got) != 2 {
		t.Errorf("interfaces %v", got)
	}
	if fmt.Sprint(asked) != "[203.0.113.5 from 198.51.100.1]" {
		t.Errorf("routes asked: %v", asked)
	}
}

// Connections ssh and autossh opened are found (not sshd's, not to an
// SSH port of this host).
func TestFindSSHOutgoing(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "0.0.0.0:22", "0.0.0.0:0")
	in := b.sock("01", "192.0.2.1:22", "192.0.2.2:50000")
	tunnel := b.sock("01", "192.0.2.1:40000", "198.51.100.7:22")
	auto := b.sock("01", "[2001:db8::1]:40001", "[2001:db8:5::7]:2222")
	web := b.sock("01", "192.0.2.1:40002", "198.51.100.8:443")
	b.proc(100, 1, "sshd", lis)
	b.proc(101, 100, "sshd", in)
	b.proc(200, 1, "ssh", tunnel)
	b.proc(201, 1, "autossh", auto)
	b.proc(202, 1, "curl", web)
	st := find(t, b.write(""), nil)
	if got := fmt.Sprint(st.Outgoing); got != "[{192.0.2.1:40000 198.51.100.7:22} {[2001:db8::1]:40001 [2001:db8:5::7]:2222}]" {
		t.Errorf("outgoing %s", got)
	}
	if got := sessionList(st); got != "192.0.2.2:50000>192.0.2.1:22" {
		t.Errorf("sessions %q", got)
	}
}

// moat in a PID namespace of its own (a container with the host's
// network) sees no sshd process: connections to a listener on port 22
// count then; with any sshd in sight, only its own listeners do.
func TestFindSSHProcessesNotVisible(t *testing.T) {
	b := newProc(t)
	b.sock("0A", "0.0.0.0:22", "0.0.0.0:0")
	b.sock("0A", "[::]:80", "[::]:0")
	b.sock("01", "192.0.2.1:22", "192.0.2.2:50000")
	b.sock("01", "[2001:db8::1]:80", "[2001:db8::2]:50001")
	st := find(t, b.write(""), nil)
	if got := sessionList(st); got != "192.0.2.2:50000>192.0.2.1:22" {
		t.Errorf("sessions %q", got)
	}
	if len(st.Sessions) == 1 && !strings.Contains(st.Sessions[0].Source, "not visible") {
		t.Errorf("source %q", st.Sessions[0].Source)
	}
	// An sshd in sight (on 2222): port 22 is someone else's.
	lis := b.sock("0A", "0.0.0.0:2222", "0.0.0.0:0")
	b.proc(100, 1, "sshd", lis)
	st = find(t, b.write(""), nil)
	if got := sessionList(st); got != "" || fmt.Sprint(st.Ports()) != "[2222]" {
		t.Errorf("with sshd on 2222: sessions %q ports %v", got, st.Ports())
	}
}

// A NAT between the admin and the server may map a reconnect to any
// unprivileged source port: a rule on 1024-32767 (outside every client's
// own range) cuts it; one on ports below 1024 does not.
func TestCheckSessionsNATPorts(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "0.0.0.0:22", "0.0.0.0:0")
	conn := b.sock("01", "192.0.2.1:22", "192.0.2.2:50000")
	b.proc(100, 1, "sshd", lis)
	b.proc(101, 100, "sshd", conn)
	st := find(t, b.write("32768 60999"), nil)
	for _, c := range []struct {
		rule string
		cut  string
	}{
		{"deny proto tcp from any port 1024:32767 to any port 22", "a reconnect from source port 1024 "},
		{"deny proto tcp from any port 20000 to any port 22", "a reconnect from source port 20000 "},
		{"deny proto tcp from any port 1:1023 to any port 22", ""},
	} {
		p, err := policy.NewDocument("moat.conf", []byte(c.rule+"\nallow 22/tcp\n")).Policy(nil)
		if err != nil {
			t.Fatal(err)
		}
		problems := CheckSessions(ruleset.Compile(p), p, st.Sessions, nil)
		switch {
		case c.cut == "" && len(problems) > 0:
			t.Errorf("%s: %s", c.rule, problems[0].Why)
		case c.cut != "" && (len(problems) == 0 || !strings.Contains(problems[0].Why, c.cut)):
			t.Errorf("%s: problems %+v, want %q", c.rule, problems, c.cut)
		}
	}
}

// On a host with hundreds of processes the scan is shared out among
// goroutines: every sshd, its per-session children and the activators
// are found wherever they fall, as one goroutine finds them.
func TestFindSSHManyProcesses(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "0.0.0.0:22", "0.0.0.0:0")
	b.proc(1, 0, "systemd")
	b.proc(97, 1, "sshd", lis)
	var want []string
	for i := range 400 {
		pid := 1000 + i
		if i%50 == 7 {
			port := 50000 + i
			c := b.sock("01", "192.0.2.1:22", fmt.Sprintf("192.0.2.2:%d", port))
			b.proc(pid, 97, "sshd", c)
			want = append(want, fmt.Sprintf("192.0.2.2:%d>192.0.2.1:22", port))
			continue
		}
		b.proc(pid, 1, "bash")
	}
	root := b.write("")
	dirs, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var pids []procEntry
	for _, d := range dirs {
		if pid, err := strconv.Atoi(d.Name()); err == nil {
			pids = append(pids, procEntry{pid, d.Name()})
		}
	}
	if got, _ := scanProcs(root, pids); len(got) != 2+len(want) || got[97] == nil || got[1] == nil {
		t.Fatalf("scan found %d processes of interest, want %d", len(got), 2+len(want))
	}
	st := find(t, root, nil)
	got := strings.Split(sessionList(st), " ")
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") || len(st.Listen) != 1 {
		t.Errorf("sessions %v listen %v, want %v", got, st.Listen, want)
	}
}

// /proc/PID/stat gives the name, the parent and the kernel-thread flag in
// one read; a name may hold spaces and parentheses (it ends at the last
// ')'), and anything malformed is not taken.
func TestParseStat(t *testing.T) {
	for _, c := range []struct {
		in    string
		comm  string
		ppid  int
		flags uint64
		ok    bool
	}{
		{"1234 (sshd) S 1 1234 1234 0 -1 4194560 100 0 0 0", "sshd", 1, 4194560, true},
		{"99 (evil) S 1 2 3 0 -1 0 (sshd)) S 7 1 1 0 -1 2097152 0", "evil) S 1 2 3 0 -1 0 (sshd)", 7, 2097152, true},
		{"2 (kthreadd) S 0 0 0 0 -1 2129984 0", "kthreadd", 0, 2129984, true},
		{"5 (a b\nc) R 4 5 5 0 -1 0 0", "a b\nc", 4, 0, true},
		{"5 (x) R 4 5", "", 0, 0, false},
		{"5 x) R 4 5 5 0 -1 0 0", "", 0, 0, false},
		{"5 (x) R -4 5 5 0 -1 0 0", "", 0, 0, false},
		{"", "", 0, 0, false},
	} {
		comm, ppid, flags, ok := parseStat([]byte(c.in))
		if comm != c.comm || ppid != c.ppid || flags != c.flags || ok != c.ok {
			t.Errorf("%q: %q %d %#x %v", c.in, comm, ppid, flags, ok)
		}
	}
	// The real one: this process, and the kernel's thread daemon.
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skip("no /proc")
	}
	comm, ppid, flags, ok := parseStat(data)
	own, _ := os.ReadFile("/proc/self/comm")
	if !ok || comm != strings.TrimSpace(string(own)) || ppid != os.Getppid() || flags&pfKthread != 0 {
		t.Errorf("/proc/self/stat: %q %d %#x %v", comm, ppid, flags, ok)
	}
	if data, err := os.ReadFile("/proc/2/stat"); err == nil && strings.Contains(string(data), "(kthreadd)") {
		if _, _, flags, ok := parseStat(data); !ok || flags&pfKthread == 0 {
			t.Errorf("kthreadd is not a kernel thread: %q", data)
		}
	}
}

// With stat files (a real /proc), names and parents come from them and a
// kernel thread is skipped whatever it is called.
func TestFindSSHFromStat(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "0.0.0.0:22", "0.0.0.0:0")
	conn := b.sock("01", "192.0.2.1:22", "192.0.2.2:50000")
	other := b.sock("0A", "0.0.0.0:2222", "0.0.0.0:0")
	b.proc(100, 1, "sshd", lis)
	b.proc(101, 100, "sshd", conn)
	b.proc(3, 2, "sshd", other) // a kernel thread by that name: skipped
	stat := func(pid, ppid int, comm string, flags uint64) {
		b.must(os.WriteFile(filepath.Join(b.root, fmt.Sprint(pid), "stat"), []byte(fmt.Sprintf("%d (%s) S %d %d %d 0 -1 %d 0 0", pid, comm, ppid, pid, pid, flags)), 0o644))
		// comm and status say otherwise: stat is what counts.
		b.must(os.WriteFile(filepath.Join(b.root, fmt.Sprint(pid), "comm"), []byte("bash\n"), 0o644))
		b.must(os.Remove(filepath.Join(b.root, fmt.Sprint(pid), "status")))
	}
	stat(100, 1, "sshd", 0x400100)
	stat(101, 100, "sshd", 0x400100)
	stat(3, 2, "sshd", pfKthread)
	st := find(t, b.write(""), nil)
	if fmt.Sprint(st.Listen) != "[0.0.0.0:22]" || sessionList(st) != "192.0.2.2:50000>192.0.2.1:22" || st.Sessions[0].Source != "connection held by sshd" {
		t.Errorf("listen %v sessions %q (%+v)", st.Listen, sessionList(st), st.Sessions)
	}
}

// procTitled adds a process with a command line (its title) and a real
// user ID.
func (b *procBuilder) procTitled(pid, ppid int, comm, title string, uid int, inodes ...string) {
	b.proc(pid, ppid, comm, inodes...)
	dir := filepath.Join(b.root, fmt.Sprint(pid))
	b.must(os.WriteFile(filepath.Join(dir, "cmdline"), []byte(strings.ReplaceAll(title, " ", "\x00")+"\x00"), 0o644))
	b.must(os.WriteFile(filepath.Join(dir, "status"), []byte(fmt.Sprintf("Name:\t%s\nPPid:\t%d\nUid:\t%d\t%d\t%d\t%d\n", comm, ppid, uid, uid, uid, uid)), 0o644))
}

// The clients of logged-in sessions are those under root's sshd whose
// process title names a user and a terminal, IPv4 and IPv6, OpenSSH's
// sshd and sshd-session; a session still authenticating, a user's own
// program named sshd (under a user's sshd or a shell) holding a
// connection to an address of his choice, are not.
func TestFindSSHLoggedIn(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "[::]:22", "[::]:0")
	admin := b.sock("01", "192.0.2.1:22", "198.51.100.7:50000")
	admin6 := b.sock("01", "[2001:db8::1]:22", "[2001:db8:5::7]:50001")
	guessing := b.sock("01", "192.0.2.1:22", "203.0.113.9:50002")
	mallory := b.sock("01", "192.0.2.1:22", "203.0.113.66:50003")
	mallory2 := b.sock("01", "192.0.2.1:22", "203.0.113.67:50004")
	b.procTitled(90, 1, "sshd", "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups", 0, lis)
	b.procTitled(100, 90, "sshd", "sshd: admin [priv]", 0)
	b.procTitled(101, 100, "sshd", "sshd: admin@pts/0", 1000, admin)
	b.procTitled(110, 90, "sshd-session", "sshd-session: ops [priv]", 0)
	b.procTitled(111, 110, "sshd-session", "sshd-session: ops@notty", 1001, admin6)
	b.procTitled(120, 90, "sshd", "sshd: root [preauth]", 0, guessing)
	// OpenSSH 10: sshd-session [priv] runs sshd-auth (as the privsep
	// user) until the login; even one that renamed itself is not a
	// session's.
	guessing2 := b.sock("01", "192.0.2.1:22", "203.0.113.10:50005")
	b.procTitled(130, 90, "sshd-session", "sshd-session: root [priv]", 0)
	b.procTitled(131, 130, "sshd-auth", "sshd-auth: root [preauth]", 101, guessing2)
	b.procTitled(132, 130, "sshd-auth", "sshd-auth: root@pts/9", 101)
	b.procTitled(200, 1, "bash", "-bash", 1000)
	b.procTitled(201, 200, "sshd", "sshd: admin@pts/1", 1000, mallory)
	b.procTitled(300, 1, "sshd", "sshd: mallory [priv]", 1000)
	b.procTitled(301, 300, "sshd", "sshd: mallory@pts/2", 1000, mallory2)
	st := find(t, b.write(""), nil)
	got := fmt.Sprint(st.LoggedIn)
	if got != "[198.51.100.7 2001:db8:5::7]" {
		t.Errorf("logged in: %s, want [198.51.100.7 2001:db8:5::7]", got)
	}
	if len(st.Sessions) != 6 {
		t.Errorf("live sessions: %q", sessionList(st))
	}
}

// The activators' sockets are read when one listener on port 22 is held
// by no sshd daemon, even though a daemon holds another: a classic sshd
// on 0.0.0.0:22 beside systemd's [::]:22 (ssh.socket), no session yet:
// the IPv6 listener is sshd's too. (They are skipped only when every
// such listener is a daemon's.)
func TestFindSSHActivatorBesideDaemon(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "0.0.0.0:22", "0.0.0.0:0")
	lis6 := b.sock("0A", "[::]:22", "[::]:0")
	b.proc(1, 0, "systemd", lis6)
	b.proc(200, 1, "sshd", lis) // the daemon, IPv4 only
	st := find(t, b.write(""), nil)
	if got := fmt.Sprint(st.Listen); got != "[0.0.0.0:22 [::]:22]" {
		t.Errorf("listen %s, want both of port 22's listeners", got)
	}
	// Every listener on 22 a daemon's: the activators' are not needed,
	// and the answer is the same without them.
	b = newProc(t)
	lis = b.sock("0A", "0.0.0.0:22", "0.0.0.0:0")
	other := b.sock("0A", "0.0.0.0:631", "0.0.0.0:0")
	b.proc(1, 0, "systemd", other)
	b.proc(200, 1, "sshd", lis)
	if st := find(t, b.write(""), nil); fmt.Sprint(st.Listen) != "[0.0.0.0:22]" {
		t.Errorf("listen %v", st.Listen)
	}
}

// Only logged-in sessions' titles count, never a connection still trying.
func TestSessionTitle(t *testing.T) {
	for title, want := range map[string]bool{
		"sshd: root@pts/0": true, "sshd: admin@notty": true, "sshd-session: admin@notty": true,
		"sshd: root [priv]": false, "sshd: unknown [net]": false, "sshd: root [preauth]": false, "sshd: [accepted]": false,
		"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups": false, "sshd: a@b [priv]": false,
		"sshd-auth: root [preauth]": false, "sshd-auth: root@pts/0": false,
	} {
		if sessionTitle().MatchString(title) != want {
			t.Errorf("%q: %v", title, !want)
		}
	}
}

// dropbear sets no process title and keeps no privilege-separated child:
// a connection's process (root, the daemon's child) forks the user's
// shell or command only once the user has logged in. A logged-in dropbear
// session is a root dropbear under root's dropbear daemon with a child
// process; one still authenticating has none, and a user's own dropbear
// (not root, or not under root's daemon) shields nobody.
func TestFindSSHLoggedInDropbear(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "0.0.0.0:2222", "0.0.0.0:0")
	lis6 := b.sock("0A", "[::]:2222", "[::]:0")
	admin := b.sock("01", "192.0.2.1:2222", "198.51.100.7:50000")
	admin6 := b.sock("01", "[2001:db8::1]:2222", "[2001:db8:5::7]:50001")
	guessing := b.sock("01", "192.0.2.1:2222", "203.0.113.9:50002")
	mallory := b.sock("01", "192.0.2.1:2222", "203.0.113.66:50003")
	mallory2 := b.sock("01", "192.0.2.1:2222", "203.0.113.67:50004")
	mallory3 := b.sock("01", "192.0.2.1:2223", "203.0.113.68:50005")
	b.procTitled(90, 1, "dropbear", "/usr/sbin/dropbear -F -p 2222", 0, lis, lis6)
	b.procTitled(100, 90, "dropbear", "/usr/sbin/dropbear -F -p 2222", 0, admin)
	b.procTitled(101, 100, "bash", "-bash", 1000)
	b.procTitled(110, 90, "dropbear", "/usr/sbin/dropbear -F -p 2222", 0, admin6)
	b.procTitled(111, 110, "sh", "sh -c rsync --server", 1001)
	b.procTitled(120, 90, "dropbear", "/usr/sbin/dropbear -F -p 2222", 0, guessing) // no child yet
	// A user's own dropbear daemon, and a child of it with a shell.
	b.procTitled(200, 1, "dropbear", "dropbear -p 2223", 1000, b.sock("0A", "0.0.0.0:2223", "0.0.0.0:0"))
	b.procTitled(201, 200, "dropbear", "dropbear -p 2223", 1000, mallory3)
	b.procTitled(202, 201, "sh", "sh", 1000)
	// A user's dropbear (not root) under root's daemon cannot be, but
	// is not trusted either; nor a root dropbear under a user's shell.
	b.procTitled(300, 90, "dropbear", "dropbear", 1000, mallory)
	b.procTitled(301, 300, "sh", "sh", 1000)
	b.procTitled(400, 1, "bash", "-bash", 1000)
	b.procTitled(401, 400, "dropbear", "dropbear", 0, mallory2)
	b.procTitled(402, 401, "sh", "sh", 1000)
	for pid, pp := range map[int]int{90: 1, 100: 90, 101: 100, 110: 90, 111: 110, 120: 90, 200: 1, 201: 200, 202: 201, 300: 90, 301: 300, 400: 1, 401: 400, 402: 401} {
		// /proc/PID/stat names the parents (status is read for the uid).
		b.must(os.WriteFile(filepath.Join(b.root, fmt.Sprint(pid), "stat"), []byte(fmt.Sprintf("%d (x) S %d %d %d 0 -1 4194560 0 0", pid, pp, pid, pid)), 0o644))
	}
	b.must(filepath.WalkDir(b.root, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "stat" { // the name is comm's
			data, _ := os.ReadFile(path)
			comm, _ := os.ReadFile(filepath.Join(filepath.Dir(path), "comm"))
			return os.WriteFile(path, []byte(strings.Replace(string(data), "(x)", "("+strings.TrimSpace(string(comm))+")", 1)), 0o644)
		}
		return err
	}))
	st := find(t, b.write(""), nil)
	if got := fmt.Sprint(st.LoggedIn); got != "[198.51.100.7 2001:db8:5::7]" {
		t.Errorf("logged in: %s, want [198.51.100.7 2001:db8:5::7]", got)
	}
}

// A logged-in session's process also holds the sockets of its forwarded
// channels (ssh -L: a connection it opened to any address; ssh -R with
// GatewayPorts: connections from anyone to the forwarded port). Their
// peers are not the session's client: a logged-in user (or anyone who
// reaches a remote forward) must not shield an address from bans that way.
func TestFindSSHLoggedInNotForwardedChannels(t *testing.T) {
	b := newProc(t)
	lis := b.sock("0A", "0.0.0.0:2222", "0.0.0.0:0")
	admin := b.sock("01", "192.0.2.1:2222", "198.51.100.7:50000")
	fwdOut := b.sock("01", "192.0.2.1:40000", "203.0.113.50:80")
	fwdLis := b.sock("0A", "0.0.0.0:8080", "0.0.0.0:0")
	fwdIn := b.sock("01", "192.0.2.1:8080", "203.0.113.51:50001")
	b.procTitled(90, 1, "dropbear", "/usr/sbin/dropbear -F -p 2222", 0, lis)
	b.procTitled(100, 90, "dropbear", "/usr/sbin/dropbear -F -p 2222", 0, admin, fwdOut, fwdLis, fwdIn)
	b.procTitled(101, 100, "bash", "-bash", 1000)
	for pid, pp := range map[int]int{90: 1, 100: 90, 101: 100} {
		b.must(os.WriteFile(filepath.Join(b.root, fmt.Sprint(pid), "stat"), []byte(fmt.Sprintf("%d (x) S %d %d %d 0 -1 4194560 0 0", pid, pp, pid, pid)), 0o644))
	}
	b.must(filepath.WalkDir(b.root, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Name() == "stat" {
			data, _ := os.ReadFile(path)
			comm, _ := os.ReadFile(filepath.Join(filepath.Dir(path), "comm"))
			return os.WriteFile(path, []byte(strings.Replace(string(data), "(x)", "("+strings.TrimSpace(string(comm))+")", 1)), 0o644)
		}
		return err
	}))
	st := find(t, b.write(""), nil)
	if got := fmt.Sprint(st.LoggedIn); got != "[198.51.100.7]" {
		t.Errorf("logged in: %s, want [198.51.100.7] (not the peers of forwarded channels)", got)
	}
}

// The processes are read only to attribute the namespace's sockets: with
// no listening or established socket the scan is not made (a /proc that
// cannot be read is no error then), and with one socket, of any port, it
// is made and still fails closed when /proc cannot be read.
func TestFindSSHNoSocketsNoScan(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-proc")
	one := []tcpEntry{{local: netip.MustParseAddrPort("[::]:8080"), state: "0A", inode: "1001"}}
	for _, c := range []struct {
		name    string
		entries []tcpEntry
		wantErr bool
	}{
		{"no sockets", nil, false},
		{"a listener on 8080", one, true},
		{"an established connection", []tcpEntry{{local: netip.MustParseAddrPort("192.0.2.1:40000"), remote: netip.MustParseAddrPort("192.0.2.2:443"), state: "01", inode: "1002"}}, true},
	} {
		f := &sshFinder{procRoot: missing, hintPorts: []uint16{22},
			table: func() ([]tcpEntry, bool, error) { return c.entries, true, nil }}
		st, err := f.find("192.0.2.2 50000 192.0.2.1 22")
		if (err != nil) != c.wantErr {
			t.Errorf("%s: err %v, want an error %v", c.name, err, c.wantErr)
		}
		if err == nil && (len(st.Sessions) > 0 || len(st.Listen) > 0 || len(st.LoggedIn) > 0 || len(st.Outgoing) > 0) {
			t.Errorf("%s: found %+v", c.name, st)
		}
	}
	// The same with a real sshd in the fake /proc: one established
	// session and its listener are found as before.
	b := newProc(t)
	lis := b.sock("0A", "0.0.0.0:22", "0.0.0.0:0")
	conn := b.sock("01", "192.0.2.1:22", "192.0.2.2:50000")
	b.proc(100, 1, "sshd", lis)
	b.proc(101, 100, "sshd", conn)
	if got := sessionList(find(t, b.write(""), nil)); got != "192.0.2.2:50000>192.0.2.1:22" {
		t.Errorf("sessions %q", got)
	}
}
