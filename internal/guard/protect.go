package guard

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/moat-fw/moat/internal/safeapply"
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

// LoggedInClients lists the client addresses of logged-in SSH sessions:
// established TCP connections held by an OpenSSH process titled
// "sshd: USER@TTY" whose parent is root's sshd, or by a dropbear session
// with a child under root's dropbear (safeapply.SSHState.LoggedIn: the
// lockout check's scan, so both name the same clients).
func LoggedInClients(procRoot string) ([]netip.Addr, error) {
	st, err := safeapply.FindSSH(procRoot, "")
	if err != nil {
		return nil, err
	}
	return st.LoggedIn, nil
}
