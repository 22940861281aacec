// Package safeapply keeps moat from locking the admin out: it finds the
// live SSH sessions, checks a new ruleset against them, arms a rollback
// that survives the caller, and makes the policy persist across reboots.
package safeapply

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/procstat"
)

// Session is a live SSH connection: Client is the admin's end (no zone).
type Session struct {
	Client netip.AddrPort `json:"client"`
	Server netip.AddrPort `json:"server"`
	Source string         `json:"source"` // how it was found
	// Iface is the interface an IPv6 link-local session runs over: the
	// one its socket is bound to.
	Iface string `json:"iface,omitempty"`
	// ReconnectPorts are the source ports a new connection of the client
	// may come from: this namespace's ephemeral range
	// (net.ipv4.ip_local_port_range), IANA's (49152-65535, used by
	// Windows, macOS and the BSDs), and every unprivileged port
	// (1024-65535), which a NAT between the client and this host may map
	// it to. Empty: only Client's port.
	ReconnectPorts policy.Ports `json:"reconnect_ports,omitempty"`
}

func (s Session) String() string {
	client := s.Client.String()
	if s.Iface != "" && isLinkLocal(s.Client.Addr()) {
		client = netip.AddrPortFrom(s.Client.Addr().WithZone(s.Iface), s.Client.Port()).String()
	}
	return fmt.Sprintf("%s → %s (%s)", client, s.Server, s.Source)
}

// SSHState is what moat knows of sshd in its network namespace.
type SSHState struct {
	Listen   []netip.AddrPort // sshd's listening sockets (systemd's, when it activates sshd)
	Sessions []Session
	// ReconnectPorts are the source ports clients connect from (see
	// Session.ReconnectPorts).
	ReconnectPorts policy.Ports
	// Outgoing are the SSH connections this host opened (ssh, autossh):
	// a reverse tunnel (ssh -R) or a jump the admin may come in through.
	Outgoing []OutgoingSSH
	// LoggedIn are the clients of logged-in SSH sessions: connections
	// held by an OpenSSH process titled "sshd: USER@TTY" (sshd-session on
	// OpenSSH 9.8 and later) whose parent is root's sshd (the [priv]
	// process), or by a root dropbear process, child of root's dropbear
	// daemon, that has a child (the user's shell or command, forked only
	// after the login) or, with none (dbclient -N), listens for a remote
	// forward or has outlived dropbear's authentication timeout; so a
	// user's own program named sshd or dropbear shields nobody, and a
	// connection still guessing passwords is not one. (What
	// guard.LoggedInClients gives.)
	LoggedIn []netip.Addr
}

// OutgoingSSH is an established SSH connection opened from this host.
type OutgoingSSH struct {
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
}

// Ports returns the distinct ports sshd listens on, sorted.
func (s SSHState) Ports() []uint16 {
	seen := map[uint16]bool{}
	var ports []uint16
	for _, l := range s.Listen {
		if !seen[l.Port()] {
			seen[l.Port()] = true
			ports = append(ports, l.Port())
		}
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	return ports
}

// tcpEntry is one TCP socket: a line of /proc/net/tcp or tcp6, or a
// sock_diag message.
type tcpEntry struct {
	local, remote netip.AddrPort
	state         string // "0A" listen, "01" established
	inode         string
	// ifindex is the device the socket is bound to (0: none); known
	// only from sock_diag.
	ifindex uint32
	// v6only: an IPv6 socket that takes no IPv4 (known only from
	// sock_diag, when v6onlyKnown).
	v6only, v6onlyKnown bool
}

// ianaEphemeral is the dynamic port range of RFC 6335, which most
// non-Linux clients take their source ports from.
var ianaEphemeral = policy.PortRange{First: 49152, Last: 65535}

// natPorts are the ports a NAT between the client and this host (a home
// router, carrier-grade NAT) may give a connection: any unprivileged one
// (Linux's masquerading keeps ports below 1024 below, and others above).
var natPorts = policy.PortRange{First: 1024, Last: 65535}

// FindSSH reads sshd's listening ports and established sessions from
// procRoot ("/proc"), and adds the SSH_CONNECTION of this process (sshConn
// is its value, empty if none). Only sockets of the network namespace moat
// runs in are seen: /proc/net is this process's namespace.
//
// Sessions are the connections sshd's processes hold whose local end is
// an SSH listening socket, and those of inetd-style sshd (sshd -i, as
// started by a systemd socket with Accept=yes or by inetd). Listening
// sockets are those of the sshd daemon and, when sshd is socket-activated,
// those of PID 1, systemd-socket-activate or inetd on a port such a
// session uses or on port 22. Connections sshd holds for port forwarding
// are not sessions.
func FindSSH(procRoot, sshConn string) (SSHState, error) {
	f := &sshFinder{procRoot: procRoot, hintPorts: []uint16{22}, sockIface: sockDiagIfaces, routeIface: replyIface}
	if procRoot == "/proc" {
		f.table = kernelTCP
		f.suspended = suspendedTime
	}
	return f.find(sshConn)
}

// sshFinder holds what FindSSH reads, so tests can feed a fake /proc and
// socket table.
type sshFinder struct {
	procRoot string
	// table reads the namespace's TCP sockets (diag: their ifindex is
	// known); nil reads procRoot's net/tcp and net/tcp6.
	table func() (entries []tcpEntry, diag bool, err error)
	// hintPorts are ports that count as SSH for a socket-activation
	// listener even when no session proves it.
	hintPorts []uint16
	// sockIface maps socket inodes to the interface the socket is bound
	// to (for link-local peers, the one the connection runs over); nil
	// or an error: unknown.
	sockIface func(inodes map[string]bool) (map[string]string, error)
	// routeIface names the interface of the route back to client from
	// the session's own address (nil or "": unknown).
	routeIface func(client, server netip.Addr) string
	// suspended is how long the machine slept since boot (nil: never):
	// /proc's uptime and start times count it, dropbear's authentication
	// timeout does not.
	suspended func() time.Duration
}

// newProcSockets is a procSockets with no socket in any role.
func newProcSockets() procSockets {
	return procSockets{daemon: map[string]bool{}, sshd: map[string]bool{}, inetd: map[string]bool{}, activator: map[string]bool{}, client: map[string]bool{}, loggedIn: map[string]bool{}}
}

// procSockets are the socket inodes of processes, by role.
type procSockets struct {
	loggedIn  map[string]bool // held by a logged-in session's process (see SSHState.LoggedIn)
	daemon    map[string]bool // sshd daemons: listening sockets are SSH's
	sshd      map[string]bool // every sshd process (sessions, forwards)
	inetd     map[string]bool // sshd -i: its connection is a session
	activator map[string]bool // PID 1, systemd-socket-activate, inetd
	client    map[string]bool // ssh and autossh: connections this host opened
	// dropbearIdle are the connection processes of root's dropbear with
	// no child: logged in without a shell or command (dbclient -N, a
	// port-forward-only session), or still authenticating.
	dropbearIdle []dropbearConn
}

// dropbearConn is a connection process of root's dropbear that has no
// child: its sockets, and whether it has lived longer than dropbear lets
// a connection authenticate.
type dropbearConn struct {
	inodes []string
	old    bool
}

// dropbearAuthTimeout is how long dropbear lets a connection
// authenticate (AUTH_TIMEOUT, 300 s in dropbear's default options, as
// Debian builds it; "Timeout before auth"), with a margin: a connection
// process older than that is logged in.
const dropbearAuthTimeout = 300*time.Second + 30*time.Second

// loggedIn: a dropbear connection with no child is logged in when it
// listens (the listener of a remote forward, dbclient -R: dropbear opens
// it only after the login, and no library does; not the daemon's
// listeners, should it keep one), or when it has outlived dropbear's
// authentication timeout. An established connection of its own is no
// proof: a local forward's channel (dbclient -L) looks like the TCP
// connection an NSS module keeps in the process (libnss-pgsql2, the old
// libnss-ldap), which dropbear's lookup of the user name the client sent
// opens before any password (TestFindSSHLoggedInDropbearNSSConnection).
// Before either, a session with no shell, no command and no remote
// forward is not told from a connection still guessing passwords.
func (c dropbearConn) loggedIn(entries []tcpEntry, socks procSockets) bool {
	if c.old {
		return true
	}
	for _, e := range entries {
		if e.state == "0A" && slices.Contains(c.inodes, e.inode) && !socks.daemon[e.inode] {
			return true
		}
	}
	return false
}

func (f *sshFinder) find(sshConn string) (SSHState, error) {
	var st SSHState
	var entries []tcpEntry
	var diag bool
	var err error
	if f.table != nil {
		entries, diag, err = f.table()
	} else {
		entries, err = readTCP(f.procRoot)
	}
	if err != nil {
		return st, err
	}
	listening := map[string]bool{}
	for _, e := range entries {
		if e.state == "0A" {
			listening[e.inode] = true
		}
	}
	// The listeners a socket activator may hold for sshd: on a hint port.
	hinted := map[string]bool{}
	for _, e := range entries {
		if e.state == "0A" && slices.Contains(f.hintPorts, e.local.Port()) {
			hinted[e.inode] = true
		}
	}
	var slept time.Duration
	if f.suspended != nil {
		slept = f.suspended()
	}
	// Every process is read only to learn who holds the namespace's
	// listening and established sockets: with none, there is nothing to
	// attribute (no listener, session, logged-in client or outgoing
	// connection can come of it), and the scan, a tenth of an edit's CPU,
	// is not made. One socket, any port, and every process is read.
	socks := newProcSockets()
	if len(entries) > 0 {
		if socks, err = sshdSockets(f.procRoot, listening, hinted, slept); err != nil {
			return st, err
		}
	}
	reconnect := f.reconnectPorts()
	st.ReconnectPorts = reconnect
	// The daemon's listeners.
	for _, e := range entries {
		if e.state == "0A" && socks.daemon[e.inode] {
			st.Listen = append(st.Listen, e.local)
		}
	}
	// Connections of sshd -i: sessions by themselves; their local port is
	// an SSH port whoever listens on it.
	inetdPorts := map[uint16]bool{}
	for _, e := range entries {
		if e.state == "01" && socks.inetd[e.inode] {
			inetdPorts[e.local.Port()] = true
		}
	}
	hint := map[uint16]bool{}
	for _, p := range f.hintPorts {
		hint[p] = true
	}
	for _, e := range entries {
		if e.state != "0A" || socks.daemon[e.inode] {
			continue
		}
		if inetdPorts[e.local.Port()] || (socks.activator[e.inode] && hint[e.local.Port()]) {
			st.Listen = append(st.Listen, e.local)
		}
	}
	// No SSH server process in sight at all, yet this namespace has
	// connections: moat may run in a PID namespace of its own (a
	// container with the host's network) and see none of sshd's
	// processes. Then a listener on port 22 is taken for sshd's.
	unseen := len(socks.sshd) == 0 && len(st.Listen) == 0
	if unseen {
		for _, e := range entries {
			if e.state == "0A" && hint[e.local.Port()] {
				st.Listen = append(st.Listen, e.local)
			}
		}
	}
	seen := map[string]bool{}
	var inodes []string // of st.Sessions
	add := func(e tcpEntry, source string) {
		s := Session{Client: e.remote, Server: e.local, Source: source, ReconnectPorts: reconnect}
		key := s.Client.String() + " " + s.Server.String()
		if !seen[key] {
			seen[key] = true
			st.Sessions = append(st.Sessions, s)
			inodes = append(inodes, e.inode)
		}
	}
	for _, e := range entries {
		if e.state != "01" {
			continue
		}
		switch {
		case socks.inetd[e.inode]:
			add(e, "connection of sshd -i")
		case listened(st.Listen, e.local):
			switch {
			case socks.sshd[e.inode]:
				add(e, "connection held by sshd")
			case unseen:
				add(e, fmt.Sprintf("connection to port %d; sshd's processes are not visible from here", e.local.Port()))
			default:
				add(e, "established connection to sshd")
			}
		}
	}
	for _, c := range socks.dropbearIdle {
		if c.loggedIn(entries, socks) {
			for _, inode := range c.inodes {
				socks.loggedIn[inode] = true
			}
		}
	}
	// Only the session's own connection, the one to the SSH server: the
	// session's process also holds its forwarded channels (ssh -L opens
	// connections to any address, ssh -R accepts them), whose peers are
	// no logged-in client (TestFindSSHLoggedInNotForwardedChannels).
	for _, e := range entries {
		if e.state == "01" && socks.loggedIn[e.inode] && (socks.inetd[e.inode] || listened(st.Listen, e.local)) {
			st.LoggedIn = append(st.LoggedIn, e.remote.Addr())
		}
	}
	for _, e := range entries {
		if e.state == "01" && socks.client[e.inode] && !socks.sshd[e.inode] && !listened(st.Listen, e.local) {
			st.Outgoing = append(st.Outgoing, OutgoingSSH{Local: e.local, Remote: e.remote})
		}
	}
	// SSH_CONNECTION counts only if that connection exists here: the
	// variable is inherited across `ip netns exec` and sudo, and may name a
	// session of another namespace. It finds sessions of an SSH server moat
	// does not recognise by name (a renamed sshd, another server).
	if s, ok := parseSSHConnection(sshConn); ok {
		for _, e := range entries {
			if e.state == "01" && e.local == s.Server && e.remote == s.Client {
				add(e, s.Source)
				break
			}
		}
	}
	var bound map[string]uint32
	if diag {
		bound = map[string]uint32{}
		for _, e := range entries {
			if e.ifindex != 0 {
				bound[e.inode] = e.ifindex
			}
		}
	}
	f.setIfaces(st.Sessions, inodes, bound)
	return st, nil
}

// listened reports whether a connection to local reached one of the
// listening sockets.
func listened(listen []netip.AddrPort, local netip.AddrPort) bool {
	for _, l := range listen {
		if local.Port() == l.Port() && listensOn(l.Addr(), local.Addr()) {
			return true
		}
	}
	return false
}

// reconnectPorts reads the namespace's ephemeral port range and adds
// IANA's and those a NAT may pick.
func (f *sshFinder) reconnectPorts() policy.Ports {
	out := policy.Ports{ianaEphemeral, natPorts}
	data, err := os.ReadFile(filepath.Join(f.procRoot, "sys/net/ipv4/ip_local_port_range"))
	if err != nil {
		return out
	}
	fields := strings.Fields(string(data))
	if len(fields) != 2 {
		return out
	}
	lo, err1 := strconv.ParseUint(fields[0], 10, 16)
	hi, err2 := strconv.ParseUint(fields[1], 10, 16)
	if err1 != nil || err2 != nil || lo == 0 || lo > hi {
		return out
	}
	return policy.Ports{{First: uint16(lo), Last: uint16(hi)}, ianaEphemeral, natPorts}
}

// setIfaces gives each session the interface it runs over. Link-local
// sessions: the one their socket runs
// over. The routing table cannot tell: every interface has a route to
// fe80::/64. The kernel binds an accepted link-local connection to the
// interface it came in on, and sock_diag reports it. Where sock_diag
// cannot say, the neighbour table may: if exactly one interface has the
// client as a neighbour, it is that one. (Other sessions are bound to a
// device only in a VRF, whose device is not the one packets come in on:
// they keep the route back to the client.)
//
// bound, when not nil, is what sock_diag said of every socket (inode to
// the index of the device it is bound to): no second dump is needed.
func (f *sshFinder) setIfaces(sessions []Session, inodes []string, bound map[string]uint32) {
	// The others: the route back to the client from the address it
	// connected to. With source-based policy routing (a host with an
	// uplink per address) the main table's route to the client names
	// another interface than the one the session runs over.
	for i, s := range sessions {
		if !isLinkLocal(s.Client.Addr()) && f.routeIface != nil {
			sessions[i].Iface = f.routeIface(s.Client.Addr(), s.Server.Addr())
		}
	}
	want := map[string]bool{}
	for i, s := range sessions {
		if isLinkLocal(s.Client.Addr()) {
			want[inodes[i]] = true
		}
	}
	if len(want) == 0 {
		return
	}
	var byInode map[string]string
	switch {
	case bound != nil:
		byInode = map[string]string{}
		for inode := range want {
			if idx := bound[inode]; idx != 0 {
				byInode[inode] = linkName(idx)
			}
		}
	case f.sockIface != nil:
		byInode, _ = f.sockIface(want)
	}
	for i, s := range sessions {
		if !isLinkLocal(s.Client.Addr()) {
			continue
		}
		sessions[i].Iface = byInode[inodes[i]]
		if sessions[i].Iface == "" {
			sessions[i].Iface = neighbourIface(s.Client.Addr())
		}
	}
}

func isLinkLocal(a netip.Addr) bool {
	return a.Is6() && a.IsLinkLocalUnicast()
}

// sockDiagIfaces asks the kernel (NETLINK_SOCK_DIAG, as ss does) which
// interface each IPv6 TCP socket of this namespace is bound to.
func sockDiagIfaces(inodes map[string]bool) (map[string]string, error) {
	out := map[string]string{}
	socks, err := diagTCP(unix.AF_INET6)
	if err != nil {
		return out, err
	}
	for _, s := range socks {
		if inodes[s.inode] && s.ifindex != 0 {
			if name := linkName(s.ifindex); name != "" {
				out[s.inode] = name
			}
		}
	}
	return out, nil
}

// linkName names the device of index idx ("" if none).
func linkName(idx uint32) string {
	l, err := netlink.LinkByIndex(int(idx))
	if err != nil {
		return ""
	}
	return l.Attrs().Name
}

// replyIface names the interface of the route to client with source
// address server (ip route get CLIENT from SERVER), "" if unknown.
func replyIface(client, server netip.Addr) string {
	routes, err := netlink.RouteGetWithOptions(net.IP(client.WithZone("").AsSlice()), &netlink.RouteGetOptions{SrcAddr: net.IP(server.WithZone("").AsSlice())})
	if err != nil || len(routes) == 0 {
		return ""
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return ""
	}
	return l.Attrs().Name
}

// neighbourIface names the only interface with addr in its neighbour
// table, or "" if none or several.
func neighbourIface(addr netip.Addr) string {
	neighs, err := netlink.NeighList(0, netlink.FAMILY_V6)
	if err != nil {
		return ""
	}
	found := map[int]bool{}
	for _, n := range neighs {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a == addr.WithZone("") {
			found[n.LinkIndex] = true
		}
	}
	if len(found) != 1 {
		return ""
	}
	for idx := range found {
		if l, err := netlink.LinkByIndex(idx); err == nil {
			return l.Attrs().Name
		}
	}
	return ""
}

// listensOn reports whether a socket listening on l accepts connections
// to a: its own address, 0.0.0.0 for IPv4, :: for both (dual-stack).
func listensOn(l, a netip.Addr) bool {
	switch {
	case l == a:
		return true
	case l == netip.IPv6Unspecified():
		return true
	case l == netip.IPv4Unspecified():
		return a.Is4()
	}
	return false
}

// parseSSHConnection reads "CLIENT_IP CLIENT_PORT SERVER_IP SERVER_PORT".
func parseSSHConnection(v string) (Session, bool) {
	f := strings.Fields(v)
	if len(f) != 4 {
		return Session{}, false
	}
	ca, err1 := netip.ParseAddr(f[0])
	cp, err2 := strconv.ParseUint(f[1], 10, 16)
	sa, err3 := netip.ParseAddr(f[2])
	sp, err4 := strconv.ParseUint(f[3], 10, 16)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return Session{}, false
	}
	return Session{Client: netip.AddrPortFrom(ca.Unmap().WithZone(""), uint16(cp)),
		Server: netip.AddrPortFrom(sa.Unmap().WithZone(""), uint16(sp)), Source: "SSH_CONNECTION of this shell"}, true
}

// parseProcTCP reads the lines of /proc/net/tcp or tcp6 (the first is
// the header).
func parseProcTCP(data []byte) []tcpEntry {
	var out []tcpEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		local, err1 := parseProcAddr(f[1])
		remote, err2 := parseProcAddr(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, tcpEntry{local: local, remote: remote, state: f[3], inode: f[9]})
	}
	return out
}

// parseProcAddr reads "0100007F:0016": the address as 32-bit words in host
// byte order, the port in hex.
func parseProcAddr(s string) (netip.AddrPort, error) {
	addrHex, portHex, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(addrHex)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", s)
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(b[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// sshdSockets returns the socket inodes held by sshd processes (OpenSSH's
// daemon, its per-session processes, sshd -i) and by the programs that
// listen for a socket-activated sshd. listening tells which inodes are
// listening sockets.
//
// An sshd whose parent is not an sshd is a daemon if it holds a listening
// socket, else an inetd-style sshd (sshd -i: setproctitle hides the -i
// once it runs). The children of either are per-session processes: the
// sockets only they hold are port forwardings.
//
// The activators' sockets count only for a listener on a hint port that
// no sshd daemon holds (hinted are the listeners on hint ports): when
// there is none, their sockets are not read (PID 1 holds hundreds of
// descriptors, each a readlink, and a classic sshd daemon owns port 22).
//
// A dropbear connection with no child is old (logged in) when its age,
// less the time the machine slept since boot (slept: dropbear times its
// authentication on CLOCK_MONOTONIC, which stops in a suspend, while
// /proc's start times run on), passed dropbear's authentication timeout.
// A connection that slept through a suspend would otherwise look old, and
// logged in, while it still guesses passwords. (One started after a
// suspend counts as old that much later: only a -N session with no
// forward in use waits longer to be protected.)
func sshdSockets(procRoot string, listening, hinted map[string]bool, slept time.Duration) (procSockets, error) {
	socks := newProcSockets()
	dirs, err := os.ReadDir(procRoot)
	if err != nil {
		return socks, fmt.Errorf("read %s: %w", procRoot, err)
	}
	var pids []procEntry
	for _, d := range dirs {
		if pid, err := strconv.Atoi(d.Name()); err == nil {
			pids = append(pids, procEntry{pid, d.Name()})
		}
	}
	procs, parents := scanProcs(procRoot, pids)
	var uptime time.Duration // read once, for the first idle dropbear
	for _, p := range procs {
		if p.dropbearSession(procs, parents) {
			for _, inode := range p.inodes {
				socks.loggedIn[inode] = true
			}
		} else if p.dropbearConnection(procs) {
			if uptime == 0 {
				uptime = readUptime(procRoot)
			}
			start, ok := readStartTime(p.dir)
			socks.dropbearIdle = append(socks.dropbearIdle, dropbearConn{inodes: p.inodes,
				old: ok && uptime > 0 && uptime-start-slept > dropbearAuthTimeout})
		}
		if p.sshd {
			for _, inode := range p.inodes {
				socks.sshd[inode] = true
			}
		}
		if p.loggedInSession() {
			if parent := procs[p.ppid]; parent != nil && openSSH(parent.comm) && parent.uid == 0 {
				for _, inode := range p.inodes {
					socks.loggedIn[inode] = true
				}
			}
		}
		if p.client {
			for _, inode := range p.inodes {
				socks.client[inode] = true
			}
		}
		if !p.sshd {
			continue
		}
		if parent := procs[p.ppid]; parent != nil && parent.sshd {
			continue // a per-session process
		}
		listens := false
		for _, inode := range p.inodes {
			listens = listens || listening[inode]
		}
		for _, inode := range p.inodes {
			if listens {
				socks.daemon[inode] = true
			} else {
				socks.inetd[inode] = true
			}
		}
	}
	needActivators := false
	for inode := range hinted {
		needActivators = needActivators || !socks.daemon[inode]
	}
	for _, p := range procs {
		if !p.activator {
			continue
		}
		if !p.fdsRead {
			if !needActivators {
				continue
			}
			p.inodes = readSocketInodes(p.dir)
		}
		for _, inode := range p.inodes {
			socks.activator[inode] = true
		}
	}
	return socks, nil
}

// proc is what sshdSockets reads of one process of interest.
type proc struct {
	comm      string
	title     string // the command line of an OpenSSH sshd process (NULs as spaces)
	uid       int    // the real user ID of an OpenSSH sshd or a dropbear process (-1: unknown)
	pid, ppid int
	sshd      bool
	activator bool
	client    bool
	inodes    []string
	// fdsRead: inodes were read (an activator's alone are read later,
	// from dir, and only when needed).
	fdsRead bool
	dir     string
}

// scanProcs reads the processes pids under procRoot and returns those of
// interest (SSH servers, socket activators, SSH clients) with their
// sockets. The processes are shared out among a few goroutines, as many
// as Go runs at once (up to 4): each costs a few system calls, and a
// server runs hundreds. /proc does not depend on the network namespace
// of the thread reading it, so any thread may.
//
// parents are the PIDs that have a child process (any process: a
// dropbear session is known by its child, the user's shell or command).
func scanProcs(procRoot string, pids []procEntry) (map[int]*proc, map[int]bool) {
	workers := min(runtime.GOMAXPROCS(0), 4, max(len(pids)/64, 1))
	parts := make([]map[int]*proc, workers)
	partParents := make([]map[int]bool, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			found, parents := map[int]*proc{}, map[int]bool{}
			var buf [512]byte
			for i := w; i < len(pids); i += workers {
				p, ppid := scanProc(procRoot, pids[i], buf[:])
				if p != nil {
					found[pids[i].pid] = p
				}
				if ppid > 1 {
					parents[ppid] = true
				}
			}
			parts[w], partParents[w] = found, parents
		})
	}
	wg.Wait()
	procs, parents := map[int]*proc{}, map[int]bool{}
	for w := range parts {
		maps.Copy(procs, parts[w])
		maps.Copy(parents, partParents[w])
	}
	return procs, parents
}

// procEntry is a process directory of /proc: its PID and its name.
type procEntry struct {
	pid  int
	name string
}

// scanProc reads one process: nil if it is gone or of no interest, and
// its parent's PID as /proc/PID/stat gives it (-1 if unknown).
func scanProc(procRoot string, e procEntry, buf []byte) (*proc, int) {
	pid := e.pid
	dir := filepath.Join(procRoot, e.name)
	// stat names the process, its parent and whether it is a kernel
	// thread (which holds no files: its exe, a readlink, is not asked).
	name, ppid := "", -1
	if data, err := readSmall(filepath.Join(dir, "stat"), buf); err == nil {
		if comm, pp, flags, ok := parseStat(data); ok {
			if flags&pfKthread != 0 {
				return nil, -1
			}
			name, ppid = strings.TrimSpace(comm), pp
		}
	}
	if ppid < 0 {
		comm, err := readSmall(filepath.Join(dir, "comm"), buf)
		if err != nil {
			return nil, -1 // the process has gone
		}
		name = strings.TrimSpace(string(comm))
	}
	exe, _ := os.Readlink(filepath.Join(dir, "exe"))
	exe = strings.TrimSuffix(filepath.Base(exe), " (deleted)")
	p := &proc{pid: pid}
	p.sshd = isSSHD(name) || isSSHD(exe)
	// systemd-socket-activate's comm is cut to 15 characters.
	p.activator = pid == 1 || name == "systemd" || strings.HasPrefix(name, "systemd-socket") || name == "inetd" || name == "xinetd"
	p.client = name == "ssh" || name == "autossh"
	if !p.sshd && !p.activator && !p.client {
		return nil, ppid
	}
	p.ppid = ppid
	if ppid < 0 {
		p.ppid = readPPid(dir)
	}
	p.comm, p.uid = name, -1
	if name == "dropbear" {
		p.uid = readUID(dir)
	}
	if openSSH(name) {
		if cmd, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
			p.title = strings.TrimRight(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})), " ")
		}
		p.uid = readUID(dir)
	}
	p.dir = dir
	if p.sshd || p.client {
		p.inodes, p.fdsRead = readSocketInodes(dir), true
	}
	return p, p.ppid
}

// openSSH: the process name of OpenSSH's server processes.
func openSSH(comm string) bool { return comm == "sshd" || comm == "sshd-session" }

// sessionTitle is the process title OpenSSH gives a logged-in session
// ("sshd: root@pts/0", "sshd-session: admin@notty"); before the login it
// is "sshd: user [priv]", "[net]", "[preauth]" or "[accepted]".
var sessionTitle = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^sshd(?:-session)?: [^\s@]+@\S+$`) })

// loggedInSession: an OpenSSH process of a logged-in session (its
// parent is still to be checked).
func (p *proc) loggedInSession() bool {
	return openSSH(p.comm) && sessionTitle().MatchString(p.title)
}

// dropbearSession: a process of a logged-in dropbear session. dropbear
// sets no process title and has no privilege-separated child: the
// connection's process, root's and a child of root's dropbear daemon,
// forks the user's shell or command only once the user has logged in
// (a connection still authenticating has no child). Only under a root
// daemon of its kind, as for OpenSSH: a user's own dropbear shields
// nobody.
func (p *proc) dropbearSession(procs map[int]*proc, parents map[int]bool) bool {
	return p.dropbearConnection(procs) && parents[p.pid]
}

// dropbearConnection: a connection process of root's dropbear daemon
// (logged in or not).
func (p *proc) dropbearConnection(procs map[int]*proc) bool {
	if p.comm != "dropbear" || p.uid != 0 {
		return false
	}
	daemon := procs[p.ppid]
	return daemon != nil && daemon.comm == "dropbear" && daemon.uid == 0
}

// clockTick is the unit of /proc/PID/stat's start time (USER_HZ: 100 on
// every architecture Go builds for; only alpha, which it does not, has
// another).
const clockTick = 10 * time.Millisecond

// readStartTime reads when the process started, since boot (field 22 of
// /proc/PID/stat).
func readStartTime(dir string) (time.Duration, bool) {
	var buf [1024]byte
	data, err := readSmall(filepath.Join(dir, "stat"), buf[:])
	if err != nil {
		return 0, false
	}
	_, ticks, ok := procstat.Start(data)
	if !ok || ticks > uint64(math.MaxInt64/int64(clockTick)) {
		return 0, false
	}
	return time.Duration(ticks) * clockTick, true
}

// suspendedTime is how long this machine has been suspended since boot:
// CLOCK_BOOTTIME less CLOCK_MONOTONIC (0 when unknown).
func suspendedTime() time.Duration {
	var boot, mono unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot) != nil || unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono) != nil {
		return 0
	}
	return max(time.Duration(boot.Nano()-mono.Nano()), 0)
}

// readUptime reads the time since boot from procRoot's uptime (0:
// unknown).
func readUptime(procRoot string) time.Duration {
	var buf [128]byte
	data, err := readSmall(filepath.Join(procRoot, "uptime"), buf[:])
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(data)), " ")
	secs, err := strconv.ParseFloat(first, 64)
	if err != nil || secs <= 0 || secs > 1e9 {
		return 0
	}
	return time.Duration(secs * float64(time.Second))
}

// readUID reads the real user ID from /proc/PID/status (-1 if unknown).
func readUID(dir string) int {
	var buf [4096]byte
	data, err := readSmall(filepath.Join(dir, "status"), buf[:])
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				if n, err := strconv.Atoi(f[0]); err == nil {
					return n
				}
			}
		}
	}
	return -1
}

// pfKthread is the kernel's flag for its own threads (PF_KTHREAD).
const pfKthread = 0x00200000

// parseStat reads the start of /proc/PID/stat: "PID (COMM) STATE PPID
// PGRP SESSION TTY_NR TPGID FLAGS ...". COMM may hold anything, spaces
// and parentheses too: it ends at the last ')'.
func parseStat(data []byte) (comm string, ppid int, flags uint64, ok bool) {
	// Fields are read in place (every process of the host is read each
	// command: strings.Fields made a slice of some fifty strings each).
	open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return "", 0, 0, false
	}
	rest := data[end+1:]
	// field returns the next field of rest, as strings.Fields splits.
	field := func() []byte {
		i := 0
		for i < len(rest) && isStatSpace(rest[i]) {
			i++
		}
		j := i
		for j < len(rest) && !isStatSpace(rest[j]) {
			j++
		}
		f := rest[i:j]
		rest = rest[j:]
		return f
	}
	var f [7][]byte
	for i := range f {
		if f[i] = field(); len(f[i]) == 0 {
			return "", 0, 0, false
		}
	}
	pp, err1 := strconv.Atoi(string(f[1]))
	fl, err2 := strconv.ParseUint(string(f[6]), 10, 64)
	if err1 != nil || err2 != nil || pp < 0 {
		return "", 0, 0, false
	}
	return string(data[open+1 : end]), pp, fl, true
}

// isStatSpace is what strings.Fields splits /proc/PID/stat at after the
// command name: ASCII white space (the kernel writes single spaces and a
// newline; a byte of UTF-8's is never one of these).
func isStatSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// readSocketInodes lists the inodes of the sockets process dir holds.
func readSocketInodes(dir string) []string {
	fdDir := filepath.Join(dir, "fd")
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return nil
	}
	var inodes []string
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			inodes = append(inodes, strings.TrimSuffix(inode, "]"))
		}
	}
	return inodes
}

// isSSHD reports whether a process name is an SSH server's: OpenSSH's
// sshd (and sshd-session, sshd-auth), or dropbear, which runs the same
// way (a listening daemon, a child per connection, or dropbear -i).
func isSSHD(name string) bool {
	return name == "sshd" || strings.HasPrefix(name, "sshd-") || name == "dropbear"
}

// readPPid reads the parent PID from /proc/PID/status (0 if unknown).
func readPPid(dir string) int {
	var buf [4096]byte
	data, err := readSmall(filepath.Join(dir, "status"), buf[:])
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// readSmall reads the start of a file, up to len(buf) bytes, in one
// read: what /proc/PID/comm and status hold. os.ReadFile spends nine
// system calls on a /proc file (it registers the file with Go's poller
// and reads until end of file); this spends three, and the scan of every
// process was a tenth of a command's time.
func readSmall(path string, buf []byte) ([]byte, error) {
	var fd int
	var err error
	for {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer func() { _ = unix.Close(fd) }() // read-only
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		return buf[:n], nil
	}
}
