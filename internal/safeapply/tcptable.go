package safeapply

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The TCP table is read from the kernel over sock_diag (NETLINK_SOCK_DIAG,
// as ss does), asking only for listening and established sockets; /proc's
// text tables are the fallback when the kernel has no inet_diag.
//
// Why not /proc/net/tcp first: every read() of it walks the kernel's whole
// established hash from its start (262,144 buckets on a 4 GB machine, and
// network namespaces share it), and a read of the file takes at least two
// read() calls per family; a sock_diag dump walks it once per family.

// sockDiagStates are the TCP states asked for: established and listening
// (the kernel's TCP_ESTABLISHED 1 and TCP_LISTEN 10).
const sockDiagStates = 1<<1 | 1<<10

// inetDiagReq is struct inet_diag_req_v2 for a dump of one family's TCP
// sockets in sockDiagStates (the socket id is not used by a dump).
type inetDiagReq struct {
	family uint8
	// proto is IPPROTO_TCP (the zero value asks for TCP) or IPPROTO_UDP;
	// states the socket states asked for (0: sockDiagStates).
	proto  uint8
	states uint32
}

func (r inetDiagReq) Len() int { return 56 }

func (r inetDiagReq) Serialize() []byte {
	b := make([]byte, 56)
	b[0] = r.family
	b[1] = unix.IPPROTO_TCP
	if r.proto != 0 {
		b[1] = r.proto
	}
	// b[2] ext: no extensions (tcp_info costs the kernel per socket)
	states := r.states
	if states == 0 {
		states = sockDiagStates
	}
	binary.NativeEndian.PutUint32(b[4:], states)
	return b
}

// sizeofInetDiagMsg is struct inet_diag_msg: family, state, timer,
// retrans; the socket id (sport, dport, src[16], dst[16], if, cookie[2]);
// expires, rqueue, wqueue, uid, inode.
const sizeofInetDiagMsg = 72

// inetDiagSKV6Only is the INET_DIAG_SKV6ONLY attribute.
const inetDiagSKV6Only = 11

// diagTCP dumps family's (AF_INET or AF_INET6) listening and established
// TCP sockets of the calling thread's network namespace.
func diagTCP(family uint8) ([]tcpEntry, error) {
	return diagSockets(inetDiagReq{family: family})
}

// diagSockets dumps the sockets r asks for (a family, a protocol, states)
// of the calling thread's network namespace.
func diagSockets(r inetDiagReq) ([]tcpEntry, error) {
	family := r.family
	out, err := dumpSockets(nl.SOCK_DIAG_BY_FAMILY, r, func(msg []byte) (tcpEntry, error) {
		return parseInetDiagMsg(msg, family)
	})
	if err != nil {
		name := familyName(family)
		if r.proto == unix.IPPROTO_UDP {
			name = strings.Replace(name, "tcp", "udp", 1)
		}
		return nil, fmt.Errorf("sock_diag %s: %w", name, err)
	}
	return out, nil
}

func familyName(family uint8) string {
	if family == unix.AF_INET6 {
		return "tcp6"
	}
	return "tcp"
}

// parseInetDiagMsg reads one struct inet_diag_msg of family.
func parseInetDiagMsg(msg []byte, family uint8) (tcpEntry, error) {
	if len(msg) < sizeofInetDiagMsg {
		return tcpEntry{}, fmt.Errorf("short message (%d bytes)", len(msg))
	}
	if msg[0] != family {
		return tcpEntry{}, fmt.Errorf("socket of family %d in a dump of %d", msg[0], family)
	}
	addr := func(b []byte) netip.Addr {
		if family == unix.AF_INET {
			return netip.AddrFrom4([4]byte(b[:4]))
		}
		return netip.AddrFrom16([16]byte(b[:16])).Unmap()
	}
	e := tcpEntry{
		local:   netip.AddrPortFrom(addr(msg[8:24]), binary.BigEndian.Uint16(msg[4:6])),
		remote:  netip.AddrPortFrom(addr(msg[24:40]), binary.BigEndian.Uint16(msg[6:8])),
		inode:   strconv.FormatUint(uint64(binary.NativeEndian.Uint32(msg[68:72])), 10),
		ifindex: binary.NativeEndian.Uint32(msg[40:44]),
	}
	switch msg[1] {
	case 1:
		e.state = "01"
	case 10:
		e.state = "0A"
	default:
		e.state = fmt.Sprintf("%02X", msg[1])
	}
	// The attributes after the message: INET_DIAG_SKV6ONLY (11) says
	// whether an IPv6 socket takes IPv4 too; the kernel always sends it
	// for an IPv6 socket.
	if family == unix.AF_INET6 {
		if attrs, err := nl.ParseRouteAttr(msg[sizeofInetDiagMsg:]); err == nil {
			for _, a := range attrs {
				if a.Attr.Type == inetDiagSKV6Only && len(a.Value) >= 1 {
					e.v6only = a.Value[0] != 0
					e.v6onlyKnown = true
				}
			}
		}
	}
	return e, nil
}

// kernelTCP reads this thread's namespace's TCP table over sock_diag
// (diag is true: each entry says the device its socket is bound to), and
// from /proc when the kernel cannot answer (no inet_diag): never less
// than /proc would tell.
func kernelTCP() (entries []tcpEntry, diag bool, err error) {
	return tcpTableBoth(diagTCPBoth, diagTCP, "/proc")
}

// tcpTableBoth is kernelTCP with the dumps and /proc given: the one dump
// of both families, else tcpTable.
func tcpTableBoth(both func() ([]tcpEntry, error), dump func(family uint8) ([]tcpEntry, error), procRoot string) (entries []tcpEntry, diag bool, err error) {
	if e, err := both(); err == nil {
		return e, true, nil
	}
	return tcpTable(dump, procRoot)
}

// tcpDiagGetSock is TCPDIAG_GETSOCK, inet_diag's first request: the
// kernel answers it with the sockets of both families from one walk of
// its TCP tables (a dump per family walked the established hash, 262,144
// buckets here, twice: most of the lockout check's kernel time).
const tcpDiagGetSock = 18

// inetDiagReqCompat is struct inet_diag_req for a TCPDIAG_GETSOCK dump
// of the sockets in sockDiagStates (its family is not used: the kernel
// dumps both).
type inetDiagReqCompat struct{}

func (inetDiagReqCompat) Len() int { return 60 }

func (inetDiagReqCompat) Serialize() []byte {
	// family, src_len, dst_len, ext; the socket id (48 bytes); states;
	// dbs.
	b := make([]byte, 60)
	b[0] = unix.AF_INET
	binary.NativeEndian.PutUint32(b[52:], sockDiagStates)
	return b
}

// diagTCPBoth is diagTCP of both families in one dump (TCPDIAG_GETSOCK).
// An error (a kernel without it) sends the caller to the dumps per family.
func diagTCPBoth() ([]tcpEntry, error) {
	out, err := dumpSockets(tcpDiagGetSock, inetDiagReqCompat{}, func(msg []byte) (tcpEntry, error) {
		if len(msg) < 1 || msg[0] != unix.AF_INET && msg[0] != unix.AF_INET6 {
			return tcpEntry{}, fmt.Errorf("socket of family %v", msg[:min(len(msg), 1)])
		}
		return parseInetDiagMsg(msg, msg[0])
	})
	if err != nil {
		return nil, fmt.Errorf("sock_diag tcp: %w", err)
	}
	return out, nil
}

// dumpSockets sends the sock_diag dump request data as a message of type
// typ and reads each socket of the answer with parse; the first socket
// parse refuses ends the dump with its error.
func dumpSockets(typ uint16, data nl.NetlinkRequestData, parse func(msg []byte) (tcpEntry, error)) ([]tcpEntry, error) {
	req := nl.NewNetlinkRequest(int(typ), unix.NLM_F_DUMP)
	req.AddData(data)
	var out []tcpEntry
	var bad error
	err := req.ExecuteIter(unix.NETLINK_SOCK_DIAG, typ, func(msg []byte) bool {
		e, err := parse(msg)
		if err != nil {
			bad = err
			return false
		}
		out = append(out, e)
		return true
	})
	if err == nil {
		err = bad
	}
	return out, err
}

// tcpTable is kernelTCP with the dump and /proc given.
func tcpTable(dump func(family uint8) ([]tcpEntry, error), procRoot string) (entries []tcpEntry, diag bool, err error) {
	var derr error
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		e, err := dump(family)
		if err != nil {
			derr = err // /proc tells, or says there is no IPv6
			break
		}
		entries = append(entries, e...)
	}
	if derr == nil {
		return entries, true, nil
	}
	entries, err = readTCP(procRoot)
	if err != nil {
		return nil, false, fmt.Errorf("%w (and %w)", err, derr)
	}
	return entries, false, nil
}

// readTCP reads /proc/net/tcp and tcp6 under procRoot.
func readTCP(procRoot string) ([]tcpEntry, error) {
	return readProcTables(procRoot, "net/tcp", "net/tcp6")
}

// readProcTables reads a table of IPv4 sockets and one of IPv6 sockets
// (net/tcp and tcp6, or net/udp and udp6) under procRoot.
func readProcTables(procRoot, v4, v6 string) ([]tcpEntry, error) {
	var out []tcpEntry
	// /proc/net is the main thread's namespace; the calling thread's is
	// the one moat works in (a thread that entered another namespace must
	// not blind the check).
	dir := procRoot
	if procRoot == "/proc" {
		if _, err := os.Stat("/proc/thread-self/net"); err == nil {
			dir = "/proc/thread-self"
		}
	}
	for _, name := range []string{v4, v6} {
		data, err := readProcFile(filepath.Join(dir, name))
		if os.IsNotExist(err) && name == v6 {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		out = append(out, parseProcTCP(data)...)
	}
	return out, nil
}

// readProcFile reads a /proc file in large steps: each read() of a TCP
// table walks the kernel's hash table, and os.ReadFile reads a file whose
// size is 0 in 512-byte steps.
func readProcFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read-only
	buf := make([]byte, 0, 256<<10)
	for {
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
	}
}
