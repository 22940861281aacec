package guard

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Protector refuses bans that would cut the server off from itself or its
// admins: an address of one of this host's interfaces, loopback, the
// client of a logged-in SSH session, and the allowlist. It looks again at
// ban time (at most Fresh old), since interfaces and sessions change.
// The guard, 'moat ban' and every automatic ban ask it.
type Protector struct {
	Allowlist []netip.Prefix
	// Addrs lists this host's addresses (default: every interface's, in
	// this network namespace).
	Addrs func() ([]netip.Addr, error)
	// Sessions lists the clients of logged-in SSH sessions (default: read
	// from /proc).
	Sessions func() ([]netip.Addr, error)
	// Fresh is how old a snapshot may be (default 1s).
	Fresh time.Duration

	mu       sync.Mutex
	at       time.Time
	local    map[netip.Addr]bool
	sessions map[netip.Addr]bool
}

func (p *Protector) snapshot() {
	fresh := p.Fresh
	if fresh <= 0 {
		fresh = time.Second
	}
	if p.local != nil && time.Since(p.at) < fresh {
		return
	}
	addrs, sess := p.Addrs, p.Sessions
	if addrs == nil {
		addrs = InterfaceAddrs
	}
	if sess == nil {
		sess = func() ([]netip.Addr, error) { return LoggedInClients("/proc") }
	}
	local, sessions := map[netip.Addr]bool{}, map[netip.Addr]bool{}
	if list, err := addrs(); err == nil {
		for _, a := range list {
			local[a.Unmap().WithZone("")] = true
		}
	} else if p.local != nil {
		local = p.local // keep the last known rather than none
	}
	if list, err := sess(); err == nil {
		for _, a := range list {
			sessions[a.Unmap().WithZone("")] = true
		}
	} else if p.sessions != nil {
		sessions = p.sessions
	}
	p.local, p.sessions, p.at = local, sessions, time.Now()
}

// IsLocal reports whether an address is this host's (loopback included).
func (p *Protector) IsLocal(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if a.IsLoopback() {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.snapshot()
	return p.local[a]
}

// limitedBroadcast is 255.255.255.255, never a client's address.
var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// Refuse says why an address must not be banned, or ok false.
func (p *Protector) Refuse(a netip.Addr) (why string, refused bool) {
	a = a.Unmap().WithZone("")
	switch {
	case !a.IsValid():
		return "not an address", true
	case a.IsLoopback():
		return "it is a loopback address", true
	case a.IsUnspecified() || a.IsMulticast() || a == limitedBroadcast:
		return "it is not a host's address", true
	case Allowed(p.Allowlist, a):
		return "it is on the allowlist", true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.snapshot()
	if p.local[a] {
		return "it is an address of this host", true
	}
	if p.sessions[a] {
		return "it has a logged-in SSH session here", true
	}
	return "", false
}

// InterfaceAddrs lists the addresses of this network namespace's
// interfaces.
func InterfaceAddrs() ([]netip.Addr, error) {
	list, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("interface addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range list {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// sessionTitle is the process title OpenSSH gives a logged-in session
// ("sshd: root@pts/0", "sshd-session: admin@notty"); before the login it
// is "sshd: user [priv]", "[net]", "[preauth]" or "[accepted]", so a
// connection still guessing passwords is never mistaken for a session.
var sessionTitle = lazyRE(`^sshd(?:-session)?: [^\s@]+@\S+$`)

// LoggedInClients lists the client addresses of logged-in SSH sessions:
// established TCP connections whose socket an sshd process holds whose
// title says a user logged in.
func LoggedInClients(procRoot string) ([]netip.Addr, error) {
	dirs, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", procRoot, err)
	}
	inodes := map[string]bool{}
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join(procRoot, d.Name(), "comm"))
		if err != nil {
			continue
		}
		if name := strings.TrimSpace(string(comm)); name != "sshd" && name != "sshd-session" {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join(procRoot, d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		title := strings.TrimRight(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})), " ")
		if !sessionTitle.MatchString(title) || !rootSSHDParent(procRoot, d.Name()) {
			continue
		}
		fdDir := filepath.Join(procRoot, d.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil {
				continue
			}
			if inode, ok := strings.CutPrefix(target, "socket:["); ok {
				inodes[strings.TrimSuffix(inode, "]")] = true
			}
		}
	}
	var out []netip.Addr
	if len(inodes) == 0 {
		return out, nil
	}
	for _, name := range []string{"net/tcp", "net/tcp6"} {
		data, err := os.ReadFile(filepath.Join(procRoot, name))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 10 || f[3] != "01" || !inodes[f[9]] {
				continue
			}
			if a, ok := procAddr(f[2]); ok {
				out = append(out, a)
			}
		}
	}
	return out, nil
}

// rootSSHDParent reports whether process pid's parent is an sshd run by
// root: a logged-in session's process is the child of its root monitor
// ("sshd: user [priv]"). Any local user can start a program named sshd
// with a session's title holding a connection to an address of his
// choice; its parent is his own, so it never shields that address.
func rootSSHDParent(procRoot, pid string) bool {
	ppid, _ := procStatus(filepath.Join(procRoot, pid))
	if ppid <= 0 {
		return false
	}
	dir := filepath.Join(procRoot, strconv.Itoa(ppid))
	comm, err := os.ReadFile(filepath.Join(dir, "comm"))
	if err != nil {
		return false
	}
	if name := strings.TrimSpace(string(comm)); name != "sshd" && name != "sshd-session" {
		return false
	}
	_, uid := procStatus(dir)
	return uid == 0
}

// procStatus reads a process's parent and real user ID from its status
// file (-1 each when unknown).
func procStatus(dir string) (ppid, uid int) {
	ppid, uid = -1, -1
	data, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return ppid, uid
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				ppid = n
			}
		} else if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				if n, err := strconv.Atoi(f[0]); err == nil {
					uid = n
				}
			}
		}
	}
	return ppid, uid
}

// procAddr reads the address of "0100007F:0016" (32-bit words in host
// byte order).
func procAddr(s string) (netip.Addr, bool) {
	h, _, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, false
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, false
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(b[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap(), true
}
