package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Outcome is what a probe saw.
type Outcome string

const (
	// Open: the TCP handshake completed, the UDP service answered, or the
	// echo reply came back.
	Open Outcome = "open"
	// Refused: a TCP reset or an ICMP unreachable came back (REJECT, or no
	// listener).
	Refused Outcome = "refused"
	// Timeout: nothing came back in time (DROP).
	Timeout Outcome = "timeout"
)

// DropWait is how long a probe waits before calling a packet dropped. A
// packet that passes crosses a veth in microseconds, so a few hundred
// milliseconds is ample even on a loaded machine.
const DropWait = 400 * time.Millisecond

// Probe describes one connection attempt.
type Probe struct {
	Proto string         // "tcp", "udp" or "icmp" (ICMPv6 for IPv6 addresses)
	Src   netip.Addr     // source address to use; zero: the kernel chooses
	SPort uint16         // source port to use; zero: the kernel chooses
	Dst   netip.AddrPort // port ignored for icmp
	Wait  time.Duration  // zero: DropWait
}

func (p Probe) String() string {
	src := "auto"
	if p.Src.IsValid() {
		src = p.Src.String()
	}
	if p.Proto == "icmp" {
		return fmt.Sprintf("%s %s→%s", p.Proto, src, p.Dst.Addr())
	}
	return fmt.Sprintf("%s %s→%s", p.Proto, src, p.Dst)
}

// Send runs the probe from inside ns.
func (ns *NS) Send(ctx context.Context, p Probe) (Outcome, error) {
	if p.Wait == 0 {
		p.Wait = DropWait
	}
	if p.SPort != 0 && p.Proto != "icmp" {
		// A socket bound to a fixed port must not be copied into a
		// child process: see HoldForks.
		defer HoldForks()()
	}
	var out Outcome
	var perr error
	err := ns.Do(func() error {
		switch p.Proto {
		case "tcp":
			out, perr = probeTCP(ctx, p)
		case "udp":
			out, perr = probeUDP(ctx, p)
		case "icmp":
			out, perr = probeICMP(ctx, p)
		default:
			perr = fmt.Errorf("unknown probe protocol %q", p.Proto)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return out, perr
}

// HoldForks keeps this process from forking until the function it
// returns is called, so that no child process holds a copy of a socket
// opened in between. Whoever opens a socket bound to a fixed port calls
// it first, releases after closing the socket, and starts no program in
// between (that would deadlock). fork(2) copies every descriptor into
// the child, close-on-exec ones too, and the child lets them go only
// when it execs: a probe's socket closed here while the child of a
// concurrent os/exec (another parallel test running moat, nft or ip) had
// not exec'd yet stayed bound, and the next probe from the same fixed
// source port failed with EADDRINUSE (TestBuiltinsBehindGates in the
// parallel CI run; TestProbeFixedPortWhileForking). Go forks only with
// syscall.ForkLock held for writing; a reader holds off forks, never
// other readers. Only sockets on a fixed port need this: the kernel
// picks a free port for the others.
func HoldForks() (release func()) {
	syscall.ForkLock.RLock()
	return syscall.ForkLock.RUnlock
}

func localAddr(network string, src netip.Addr, port uint16) net.Addr {
	if !src.IsValid() && port == 0 {
		return nil
	}
	var ip net.IP
	if src.IsValid() {
		ip = src.AsSlice()
	}
	if network == "tcp" {
		return &net.TCPAddr{IP: ip, Port: int(port)}
	}
	return &net.UDPAddr{IP: ip, Port: int(port)}
}

// classify maps a socket error to an outcome.
func classify(err error) (Outcome, error) {
	var ne net.Error
	switch {
	case err == nil:
		return Open, nil
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH):
		return Refused, nil
	case errors.Is(err, syscall.EPERM):
		// A packet this host sends that its own firewall drops fails
		// with EPERM: it never left, as good as unanswered.
		return Timeout, nil
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return Timeout, nil
	}
	return "", err
}

// pollSlice is the longest a TCP probe waits without looking at its
// context.
const pollSlice = 50 * time.Millisecond

// probeTCP connects with the socket calls themselves, not net.Dial: the
// kernel decides whether the handshake completed within the wait. With
// Dial, a process starved of CPU for longer than the wait (the parallel
// CI run on two shared cores) ran its deadline timer before the goroutine
// that the SYN-ACK had woken, and reported a connection that had been
// answered in microseconds as dropped. poll(2) looks at the socket once
// more after its timeout: a late thread still sees the answer, and a
// dropped SYN (retransmitted only after a second) still times out.
func probeTCP(ctx context.Context, p Probe) (Outcome, error) {
	if err := context.Cause(ctx); err != nil {
		return "", fmt.Errorf("tcp probe %s: %w", p.Dst, err)
	}
	dst := netip.AddrPortFrom(p.Dst.Addr().Unmap(), p.Dst.Port())
	family := unix.AF_INET6
	if dst.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("tcp socket: %w", err)
	}
	defer func() { _ = unix.Close(fd) }() // a probe's socket: nothing to flush
	if p.Src.IsValid() || p.SPort != 0 {
		src := p.Src.Unmap()
		if !src.IsValid() {
			src = netip.IPv6Unspecified()
			if family == unix.AF_INET {
				src = netip.IPv4Unspecified()
			}
		}
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(src, p.SPort))); err != nil {
			return "", fmt.Errorf("bind %s: %w", netip.AddrPortFrom(src, p.SPort), err)
		}
	}
	if p.SPort != 0 {
		// Closed with a reset, not a FIN: a connection this end closes
		// first would wait in TIME_WAIT for a minute, and the next probe
		// from the same port to the same service would fail to bind.
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
			return "", fmt.Errorf("tcp probe linger: %w", err)
		}
	}
	switch err := unix.Connect(fd, sockaddr(dst)); {
	case err == nil:
		return Open, nil
	case !errors.Is(err, unix.EINPROGRESS):
		return classify(err)
	}
	deadline := time.Now().Add(p.Wait)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	for {
		// In slices of at most pollSlice, so that a cancelled context
		// ends the wait; the last poll is made at or after the deadline.
		left := time.Until(deadline)
		ms := max(min(left, pollSlice).Milliseconds(), 0)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, int(ms))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("poll: %w", err)
		}
		if n == 0 {
			if left <= pollSlice {
				return Timeout, nil
			}
			if err := context.Cause(ctx); err != nil {
				return "", fmt.Errorf("tcp probe %s: %w", dst, err)
			}
			continue
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return "", fmt.Errorf("getsockopt: %w", err)
		}
		if soErr == 0 {
			return Open, nil
		}
		return classify(unix.Errno(soErr))
	}
}

// sockaddr converts an address and port for the socket calls.
func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if a := ap.Addr(); a.Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if z := ap.Addr().Zone(); z != "" {
		// A device's name, or its index (as net.Dial takes both).
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		} else if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			sa.ZoneId = uint32(n)
		}
	}
	return sa
}

func probeUDP(ctx context.Context, p Probe) (Outcome, error) {
	d := net.Dialer{LocalAddr: localAddr("udp", p.Src, p.SPort)}
	c, err := d.DialContext(ctx, "udp", p.Dst.String())
	if err != nil {
		return "", err
	}
	defer func() { _ = c.Close() }() // the outcome is decided by then
	deadline := time.Now().Add(p.Wait)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := c.SetDeadline(deadline); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte("moat-probe")); err != nil && !errors.Is(err, syscall.EPERM) {
		return classify(err)
	}
	// EPERM: this host's firewall stopped the datagram. If it rejected it,
	// an ICMP error reaches the socket next; if it dropped it, nothing.
	buf := make([]byte, 64)
	_, err = c.Read(buf)
	return classify(err)
}

func probeICMP(ctx context.Context, p Probe) (Outcome, error) {
	dst := p.Dst.Addr()
	network, listen := "ip4:icmp", "0.0.0.0"
	var typ icmp.Type = ipv4.ICMPTypeEcho
	var replyType icmp.Type = ipv4.ICMPTypeEchoReply
	proto := 1
	if dst.Is6() {
		network, listen, typ, replyType, proto = "ip6:ipv6-icmp", "::", ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	if p.Src.IsValid() {
		listen = p.Src.String()
	}
	c, err := icmp.ListenPacket(network, listen)
	if err != nil {
		return "", fmt.Errorf("icmp socket: %w", err)
	}
	defer func() { _ = c.Close() }() // the outcome is decided by then
	id := int(counter.Add(1) & 0xffff)
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("moat-probe")}}
	wb, err := msg.Marshal(nil)
	if err != nil {
		return "", err
	}
	if _, err := c.WriteTo(wb, &net.IPAddr{IP: dst.AsSlice()}); err != nil && !errors.Is(err, syscall.EPERM) {
		return classify(err)
	}
	deadline := time.Now().Add(p.Wait)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := c.SetReadDeadline(deadline); err != nil {
		return "", err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return classify(err)
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		fromIP, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		if fromIP.Unmap() != dst {
			continue
		}
		switch m.Type {
		case replyType:
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id {
				return Open, nil
			}
		case ipv4.ICMPTypeDestinationUnreachable, ipv6.ICMPTypeDestinationUnreachable:
			if u, ok := m.Body.(*icmp.DstUnreach); ok && quotesEcho(u.Data, dst.Is6(), id) {
				return Refused, nil
			}
		}
	}
}

// quotesEcho reports whether an ICMP error quotes our echo request (the
// raw socket sees every ICMP message, also errors for other probes).
func quotesEcho(data []byte, v6 bool, id int) bool {
	var icmpStart int
	var echoType byte
	if v6 {
		if len(data) < 40 || data[6] != 58 {
			return false
		}
		icmpStart, echoType = 40, 128
	} else {
		if len(data) < 20 || data[9] != 1 {
			return false
		}
		icmpStart, echoType = int(data[0]&0x0f)*4, 8
	}
	if len(data) < icmpStart+6 {
		return false
	}
	h := data[icmpStart:]
	return h[0] == echoType && int(h[4])<<8|int(h[5]) == id
}
