package safeapply

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Listener is a socket that takes packets from the network: a listening
// TCP socket or a bound, unconnected UDP socket of the network namespace
// moat runs in.
type Listener struct {
	Proto string // "tcp" or "udp"
	Local netip.AddrPort
	// V4 and V6: the families it takes (an IPv6 socket bound to :: takes
	// IPv4 too unless it is IPV6_V6ONLY).
	V4, V6 bool
	// PID and Process own the socket (0 and "": /proc does not tell).
	// Process is the process's comm as the kernel gives it: any text.
	PID     int
	Process string
	// Device is the interface the socket is bound to (SO_BINDTODEVICE,
	// or the zone of a link-local address): it takes packets from that
	// interface only. Empty: any, or /proc does not tell.
	Device string
	inode  string
}

// udpBoundStates: an unconnected UDP socket is in the kernel's TCP_CLOSE
// (7) state; a connected one (TCP_ESTABLISHED) takes packets only from
// its peer and is left out.
const udpBoundStates = 1 << 7

// Listeners reads the listening TCP and bound UDP sockets of the calling
// thread's network namespace, with the processes that own them, from the
// same sock_diag reader as the lockout check (and /proc when the kernel
// has no inet_diag). procRoot is "/proc".
func Listeners(procRoot string) ([]Listener, error) {
	return listenersFrom(diagSockets, procRoot)
}

// listenersFrom is Listeners with the sock_diag dump given.
func listenersFrom(dump func(inetDiagReq) ([]tcpEntry, error), procRoot string) ([]Listener, error) {
	tcp, _, err := tcpTable(func(family uint8) ([]tcpEntry, error) { return dump(inetDiagReq{family: family}) }, procRoot)
	if err != nil {
		return nil, fmt.Errorf("read the TCP table: %w", err)
	}
	udp, err := udpTable(dump, procRoot)
	if err != nil {
		return nil, fmt.Errorf("read the UDP table: %w", err)
	}
	var out []Listener
	for _, e := range tcp {
		if e.state == "0A" {
			out = append(out, listenerOf("tcp", e))
		}
	}
	for _, e := range udp {
		if e.state == "07" && e.local.Port() != 0 {
			out = append(out, listenerOf("udp", e))
		}
	}
	want := map[string]bool{}
	for _, l := range out {
		want[l.inode] = true
	}
	owners := socketOwners(procRoot, want)
	for i := range out {
		if o, ok := owners[out[i].inode]; ok {
			out[i].PID, out[i].Process = o.pid, o.comm
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		if a.Local.Port() != b.Local.Port() {
			return a.Local.Port() < b.Local.Port()
		}
		if a.Local.Addr() != b.Local.Addr() {
			return a.Local.Addr().Less(b.Local.Addr())
		}
		// The same address and port (SO_REUSEPORT, one socket per
		// device as dnsmasq binds): not the kernel's order, which varies.
		if a.Device != b.Device {
			return a.Device < b.Device
		}
		return a.PID < b.PID
	})
	return out, nil
}

func listenerOf(proto string, e tcpEntry) Listener {
	l := Listener{Proto: proto, Local: e.local, inode: e.inode}
	if e.ifindex != 0 {
		l.Device = strconv.FormatUint(uint64(e.ifindex), 10) // the index, if the name is gone
		if i, err := net.InterfaceByIndex(int(e.ifindex)); err == nil {
			l.Device = i.Name
		}
	}
	a := e.local.Addr()
	switch {
	case a.Is4():
		l.V4 = true
	case a.IsUnspecified():
		l.V6 = true
		// /proc does not say: Linux's default (bindv6only 0) takes IPv4.
		l.V4 = !e.v6only
	default:
		l.V6 = true
	}
	return l
}

// udpTable reads the UDP sockets bound and unconnected, over sock_diag,
// or from /proc/net/udp and udp6 (the same format as the TCP tables).
func udpTable(dump func(inetDiagReq) ([]tcpEntry, error), procRoot string) ([]tcpEntry, error) {
	var entries []tcpEntry
	var derr error
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		e, err := dump(inetDiagReq{family: family, proto: unix.IPPROTO_UDP, states: udpBoundStates})
		if err != nil {
			derr = err
			break
		}
		entries = append(entries, e...)
	}
	if derr == nil {
		return entries, nil
	}
	entries, err := readProcTables(procRoot, "net/udp", "net/udp6")
	if err != nil {
		return nil, fmt.Errorf("%w (and %w)", err, derr)
	}
	return entries, nil
}

type owner struct {
	pid  int
	comm string
}

// socketOwners finds the process holding each socket inode of want
// (the first found, by PID). Processes that are gone or whose fds cannot
// be read are skipped.
func socketOwners(procRoot string, want map[string]bool) map[string]owner {
	out := map[string]owner{}
	if len(want) == 0 {
		return out
	}
	dirs, err := os.ReadDir(procRoot)
	if err != nil {
		return out
	}
	var pids []int
	for _, d := range dirs {
		if pid, err := strconv.Atoi(d.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	var buf [512]byte
	for _, pid := range pids {
		dir := filepath.Join(procRoot, strconv.Itoa(pid))
		var comm string
		for _, inode := range readSocketInodes(dir) {
			if !want[inode] {
				continue
			}
			if _, ok := out[inode]; ok {
				continue
			}
			if comm == "" {
				if data, err := readSmall(filepath.Join(dir, "comm"), buf[:]); err == nil {
					comm = strings.TrimSuffix(string(data), "\n")
				}
			}
			out[inode] = owner{pid: pid, comm: comm}
		}
	}
	return out
}
