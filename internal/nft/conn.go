package nft

import (
	"errors"
	"fmt"
	"sync"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// A command reads the kernel's nftables state over netlink about twenty
// times (the generation, moat's table, its sync chain, the fingerprint):
// each read on a socket of its own cost a socket, its bind and its
// netpoller registration, and mdlayher/netlink seeds a math/rand source for
// each (a tenth of a millisecond of CPU a command for the seeding alone).
// Between Share and its release, the reads of the calling thread's network
// namespace go over one socket instead.
//
// The socket is lent to one read at a time (a concurrent read dials a
// socket of its own), only to a thread in the namespace it was opened in
// (tests and the drift check's scratch namespace move threads between
// namespaces), and it is closed rather than lent again when anything is
// left unread on it (a read that failed half way), so a reply can never
// be taken for the next request's. Writes (the netlink transactions of
// batch.go) keep sockets of their own.
var shared struct {
	mu   sync.Mutex
	on   int // Share calls not yet released
	ns   nsID
	c    *gnft.Conn    // lasting; nil until first lent
	nl   *netlink.Conn // c's socket
	busy bool
}

// nsID names a network namespace (the device and inode of its nsfs file).
type nsID struct{ dev, ino uint64 }

// threadNS is the network namespace of the calling thread.
func threadNS() (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return nsID{}, err
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// Share makes the nftables reads of this process share one netlink socket
// until the returned function is called (a command calls it at its start
// and releases at its end). Calls nest.
func Share() (release func()) {
	shared.mu.Lock()
	shared.on++
	shared.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			shared.mu.Lock()
			defer shared.mu.Unlock()
			shared.on--
			if shared.on == 0 && !shared.busy {
				closeSharedLocked()
			}
		})
	}
}

// closeSharedLocked closes the shared socket; shared.mu is held.
func closeSharedLocked() {
	if shared.c != nil {
		_ = shared.c.CloseLasting() // read only
	}
	shared.c, shared.nl = nil, nil
}

// Conn is a connection for reads of the calling thread's namespace: the
// shared one when it is free and in that namespace, else one that dials a
// socket for each operation (google/nftables' default). done must be
// called when the reads are over; the connection is not used after.
func Conn() (c *gnft.Conn, done func(), err error) {
	if c, _, ok := lend(); ok {
		return c, giveBack, nil
	}
	c, err = gnft.New()
	return c, func() {}, err
}

// lend lends the shared connection, opening it if need be.
func lend() (*gnft.Conn, *netlink.Conn, bool) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.on == 0 || shared.busy {
		return nil, nil, false
	}
	ns, err := threadNS()
	if err != nil {
		return nil, nil, false
	}
	if shared.c != nil && shared.ns != ns {
		return nil, nil, false
	}
	if shared.c == nil {
		var nl *netlink.Conn
		c, err := gnft.New(gnft.AsLasting(), gnft.WithSockOptions(func(n *netlink.Conn) error {
			nl = n
			return nil
		}))
		if err != nil || nl == nil {
			if c != nil {
				_ = c.CloseLasting() // never used
			}
			return nil, nil, false
		}
		shared.c, shared.nl, shared.ns = c, nl, ns
	}
	shared.busy = true
	return shared.c, shared.nl, true
}

// giveBack returns the shared connection. A socket with anything left to
// read (a dump cut short by an error) is closed: the next read dials a new
// one.
func giveBack() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	shared.busy = false
	if shared.on == 0 || pending(shared.nl) {
		closeSharedLocked()
	}
}

// pending says whether a netlink socket has anything unread (or cannot
// tell).
func pending(nl *netlink.Conn) bool {
	if nl == nil {
		return true
	}
	raw, err := nl.SyscallConn()
	if err != nil {
		return true
	}
	left := true
	buf := make([]byte, 1)
	cerr := raw.Control(func(fd uintptr) {
		_, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		left = !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EWOULDBLOCK)
	})
	return cerr != nil || left
}

// execute sends one request and reads its reply over the shared socket
// when it is lent, else over a socket of its own.
func execute(req netlink.Message) ([]netlink.Message, error) {
	if _, nl, ok := lend(); ok {
		defer giveBack()
		return nl.Execute(req)
	}
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	defer CloseLater(nl.Close) // read only; off the caller's path (closeLater)
	return nl.Execute(req)
}
