package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Documentation addresses used by the lab (RFC 5737, RFC 3849).
var (
	ServerV4  = netip.MustParseAddr("192.0.2.1")
	ClientV4  = netip.MustParseAddr("192.0.2.2")
	ServerV6  = netip.MustParseAddr("2001:db8::1")
	ClientV6  = netip.MustParseAddr("2001:db8::2")
	RouterV4  = netip.MustParseAddr("198.51.100.1") // the server's address towards the backend
	BackendV4 = netip.MustParseAddr("198.51.100.2")
	RouterV6  = netip.MustParseAddr("2001:db8:1::1")
	BackendV6 = netip.MustParseAddr("2001:db8:1::2")
)

// ClientAlt are further client addresses, so a test can send from an
// address a rule names and from one it does not.
var ClientAlt = []netip.Addr{
	netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("192.0.2.4"),
	netip.MustParseAddr("2001:db8::3"), netip.MustParseAddr("2001:db8::4"),
}

// Topology is a client and a server joined by a veth pair (eth0 on both
// sides); with a backend, the server routes between the client and a
// backend host behind its eth1.
//
//	client eth0 ── eth0 server eth1 ── eth0 backend
//	192.0.2.2       192.0.2.1  198.51.100.1   198.51.100.2
//	2001:db8::2     2001:db8::1  2001:db8:1::1  2001:db8:1::2
type Topology struct {
	Client, Server, Backend *NS
}

// NewTopology builds the namespaces. withBackend adds the routed backend.
// On error everything made so far is removed.
func NewTopology(prefix string, withBackend bool) (_ *Topology, err error) {
	t := &Topology{}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close())
		}
	}()
	if t.Server, err = NewNS(UniqueName(prefix + "-srv")); err != nil {
		return nil, err
	}
	if t.Client, err = NewNS(UniqueName(prefix + "-cli")); err != nil {
		return nil, err
	}
	if withBackend {
		// Forwarding is switched on before any link exists: flipping it
		// later resets IPv6 state on the links already up.
		for _, key := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv6/conf/default/forwarding"} {
			if err = t.Server.Sysctl(key, "1"); err != nil {
				return nil, err
			}
		}
	}
	clientAddrs := []netip.Prefix{netip.PrefixFrom(ClientV4, 24), netip.PrefixFrom(ClientV6, 64)}
	for _, a := range ClientAlt {
		clientAddrs = append(clientAddrs, netip.PrefixFrom(a, a.BitLen()))
	}
	if err = link(t.Server, "eth0", []netip.Prefix{netip.PrefixFrom(ServerV4, 24), netip.PrefixFrom(ServerV6, 64)},
		t.Client, "eth0", clientAddrs); err != nil {
		return nil, err
	}
	if !withBackend {
		return t, nil
	}
	if t.Backend, err = NewNS(UniqueName(prefix + "-bak")); err != nil {
		return nil, err
	}
	if err = link(t.Server, "eth1", []netip.Prefix{netip.PrefixFrom(RouterV4, 24), netip.PrefixFrom(RouterV6, 64)},
		t.Backend, "eth0", []netip.Prefix{netip.PrefixFrom(BackendV4, 24), netip.PrefixFrom(BackendV6, 64)}); err != nil {
		return nil, err
	}
	if err = defaultRoutes(t.Client, ServerV4, ServerV6); err != nil {
		return nil, err
	}
	if err = defaultRoutes(t.Backend, RouterV4, RouterV6); err != nil {
		return nil, err
	}
	return t, nil
}

// Close deletes the namespaces (and so their links).
func (t *Topology) Close() error {
	if t == nil {
		return nil
	}
	var errs []error
	for _, ns := range []*NS{t.Client, t.Server, t.Backend} {
		if ns != nil {
			errs = append(errs, ns.Close())
		}
	}
	return errors.Join(errs...)
}

// link creates a veth pair with one end in each namespace, adds the
// addresses (IPv6 without duplicate address detection, so they work at
// once) and brings both ends up.
func link(a *NS, aName string, aAddrs []netip.Prefix, b *NS, bName string, bAddrs []netip.Prefix) error {
	ha, err := netlink.NewHandleAt(a.handle)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", a.Name, err)
	}
	defer ha.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName, PeerNamespace: netlink.NsFd(int(b.handle))}
	if err := ha.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s/%s between %s and %s: %w", aName, bName, a.Name, b.Name, err)
	}
	if err := configure(a, aName, aAddrs); err != nil {
		return err
	}
	if err := configure(b, bName, bAddrs); err != nil {
		return err
	}
	if err := waitOperUp(a, aName); err != nil {
		return err
	}
	if err := waitOperUp(b, bName); err != nil {
		return err
	}
	if err := waitLinkLocal(a, aName); err != nil {
		return err
	}
	return waitLinkLocal(b, bName)
}

// waitLinkLocal waits until the link has its IPv6 link-local address, past
// the tentative state. The kernel adds it only once the carrier is seen
// (after the link reports up) and clears "tentative" from a work queue
// even without duplicate address detection: until then there is no
// fe80::/64 route (a link-local dial fails with "network is unreachable")
// or the kernel picks a global source address for a link-local
// destination.
func waitLinkLocal(ns *NS, name string) error {
	var addrs []netlink.Addr
	return waitLink(ns, name, func(h *netlink.Handle, l netlink.Link) (bool, error) {
		var err error
		if addrs, err = h.AddrList(l, netlink.FAMILY_V6); err != nil {
			return false, fmt.Errorf("addresses of %s in %s: %w", name, ns.Name, err)
		}
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				return true, nil
			}
		}
		return false, nil
	}, func() error {
		return fmt.Errorf("%s in %s has no usable IPv6 link-local address after 5s: %v", name, ns.Name, addrs)
	})
}

// handleIn is a netlink handle in ns.
func handleIn(ns *NS) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(ns.handle)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", ns.Name, err)
	}
	return h, nil
}

// waitLink reads the link name in ns every 5 ms until ready says it is
// ready, for 5 s at most; then the error is notReady's.
func waitLink(ns *NS, name string, ready func(h *netlink.Handle, l netlink.Link) (bool, error), notReady func() error) error {
	h, err := handleIn(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", name, ns.Name, err)
		}
		if ok, err := ready(h, l); ok || err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return notReady()
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func configure(ns *NS, name string, addrs []netip.Prefix) error {
	h, err := handleIn(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", name, ns.Name, err)
	}
	for i, p := range addrs {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
			if i > 1 {
				// Extra addresses are deprecated: usable when a probe binds
				// them, never picked by the kernel as a reply's source.
				addr.PreferedLft, addr.ValidLft = 0, 0xffffffff
			}
		}
		if err := h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("add %s to %s in %s: %w", p, name, ns.Name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s in %s: %w", name, ns.Name, err)
	}
	return nil
}

// waitOperUp waits until the link has carrier, so that the first packets
// of a test are not lost to a link still coming up.
func waitOperUp(ns *NS, name string) error {
	var state netlink.LinkOperState
	return waitLink(ns, name, func(_ *netlink.Handle, l netlink.Link) (bool, error) {
		state = l.Attrs().OperState
		return state == netlink.OperUp, nil
	}, func() error {
		return fmt.Errorf("%s in %s is not up after 5s (state %s)", name, ns.Name, state)
	})
}

func (ns *NS) linkUp(name string) error {
	h, err := handleIn(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", name, ns.Name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s in %s: %w", name, ns.Name, err)
	}
	return nil
}

func defaultRoutes(ns *NS, gw4, gw6 netip.Addr) error {
	h, err := handleIn(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	for _, gw := range []netip.Addr{gw4, gw6} {
		r := &netlink.Route{Gw: gw.AsSlice()}
		if gw.Is6() {
			r.Family = netlink.FAMILY_V6
		} else {
			r.Family = netlink.FAMILY_V4
		}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("default route via %s in %s: %w", gw, ns.Name, err)
		}
	}
	return nil
}
