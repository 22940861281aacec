package ipt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/nft"
)

// ipset's netlink interface (linux/netfilter/ipset/ip_set.h), read
// directly: `ipset list` of a set of 50,000 networks is a process that
// formats every member as text for moat to parse and sort again (about
// 60 ms of the 100 ms a refresh at 100,000 spent reading its two policy
// sets, twice per command); the dump itself is 17 to 20 ms.
const (
	nfnlSubsysIPSet = 6
	ipsetCmdList    = 7
	ipsetProtocol   = 7

	ipsetAttrProtocol = 1
	ipsetAttrSetname  = 2
	ipsetAttrTypename = 3
	ipsetAttrRevision = 4
	ipsetAttrFamily   = 5
	ipsetAttrFlags    = 6
	ipsetAttrData     = 7
	ipsetAttrADT      = 8
	ipsetAttrLineno   = 9

	// Inside IPSET_ATTR_DATA.
	ipsetAttrIP         = 1
	ipsetAttrCIDR       = 3
	ipsetAttrInitval    = 17 // the header's: random hash seed
	ipsetAttrHashsize   = 18
	ipsetAttrMaxelem    = 19
	ipsetAttrElements   = 24
	ipsetAttrReferences = 25
	ipsetAttrMemsize    = 26
	ipsetAttrIPAddrV4   = 1
	ipsetAttrIPAddrV6   = 2

	ipsetFlagListSetname = 1 << 1
	ipsetFlagListHeader  = 1 << 2

	nlaTypeMask = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
)

// errIpsetNetlink marks a netlink answer moat cannot read (another
// protocol version, a message cut short): the caller asks the ipset
// program instead.
var errIpsetNetlink = errors.New("ipset netlink")

// ipsetAnswerTimeout bounds the wait for the kernel's whole answer to one
// netlink request of this package (ipset's, and the dumps of moat's
// chains and rules: executeWithin); a dump of 200,000 members takes well
// under a second. A kernel that never answers (wedged, or a module that
// lost the request) must not hang a command, nor the guard, forever.
var ipsetAnswerTimeout = 30 * time.Second

// errIpsetTimeout is the error of a request the kernel did not answer
// within ipsetAnswerTimeout (a read then falls back to the ipset program,
// a load to ipset restore).
var errIpsetTimeout = errors.New("the kernel did not answer")

// timeoutError is errIpsetTimeout with the time waited.
func timeoutError() error {
	return fmt.Errorf("%w within %s", errIpsetTimeout, ipsetAnswerTimeout)
}

// dialIpsetFD opens the raw netlink socket of dumpSet and ipsetWriter,
// bound, and connected to the kernel: only the kernel's messages reach
// it (another process's are refused), and requests are written to it.
// Tests replace it with a socket that never answers.
var dialIpsetFD = func() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("%w: %w", errIpsetNetlink, err)
	}
	kernel := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	if err := unix.Bind(fd, kernel); err != nil {
		_ = unix.Close(fd) // the bind error is the one to report
		return -1, fmt.Errorf("%w: %w", errIpsetNetlink, err)
	}
	if err := unix.Connect(fd, kernel); err != nil {
		_ = unix.Close(fd) // the connect error is the one to report
		return -1, fmt.Errorf("%w: %w", errIpsetNetlink, err)
	}
	return fd, nil
}

// closeFDLater releases fd, a socket of dialIpsetFD, off the caller's
// path (ipsetConn.Close).
func closeFDLater(fd int) {
	nft.CloseLater(func() error { return unix.Close(fd) })
}

// sendFD writes one request to a socket of dialIpsetFD.
func sendFD(fd int, b []byte) error {
	for {
		_, err := unix.Write(fd, b)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// recvWithin reads one datagram of fd into buf (flags: unix.MSG_TRUNC),
// waiting until deadline at most, and no longer than ctx lives.
func recvWithin(ctx context.Context, fd int, buf []byte, flags int, deadline time.Time) (int, error) {
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return 0, timeoutError()
		}
		// In slices, so that a cancelled ctx is seen soon.
		ms := int(min(left, 100*time.Millisecond)/time.Millisecond) + 1
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
		if errors.Is(err, unix.EINTR) || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return 0, err
		}
		n, _, err = unix.Recvfrom(fd, buf, flags|unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		return n, err
	}
}

// ipsetConn is one netlink socket for a command's ipset reads.
type ipsetConn struct {
	c *netlink.Conn
	// broken: a request was not answered in time, and the socket was
	// closed to end it; every later request fails.
	broken error
}

// execute sends req and reads the answer, within ipsetAnswerTimeout and
// while ctx lives: else the socket is closed (which ends a blocked read).
func (c *ipsetConn) execute(ctx context.Context, req netlink.Message) ([]netlink.Message, error) {
	if c.broken != nil {
		return nil, c.broken
	}
	msgs, ended, err := executeWithin(ctx, c.c, req)
	if ended {
		c.broken = err
	}
	return msgs, err
}

// executeWithin is c.Execute(req) waiting ipsetAnswerTimeout at most, and
// no longer than ctx lives: then c is closed, which ends the blocked read
// (ended: c is closed, any later request on it fails).
func executeWithin(ctx context.Context, c *netlink.Conn, req netlink.Message) (msgs []netlink.Message, ended bool, err error) {
	type answer struct {
		msgs []netlink.Message
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		msgs, err := c.Execute(req)
		done <- answer{msgs, err}
	}()
	t := time.NewTimer(ipsetAnswerTimeout)
	defer t.Stop()
	select {
	case a := <-done:
		return a.msgs, false, a.err
	case <-t.C:
		err = timeoutError()
	case <-ctx.Done():
		err = ctx.Err()
	}
	_ = c.Close() // ends the read; the error is err
	return nil, true, err
}

func dialIpset() (*ipsetConn, error) {
	// Receive buffers of 64 KiB: the kernel sizes each part of a dump
	// after the reader's buffer (up to 32 KiB), and a buffer sized to
	// each message kept the parts at 4 KiB: 327 parts for 50,000 IPv4
	// networks instead of 38, each a walk of the set from its start.
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{MessageBufferSize: 1 << 16})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errIpsetNetlink, err)
	}
	return &ipsetConn{c: c}, nil
}

// Close releases the socket off the caller's path (nft.CloseLater: the
// release of a netfilter socket waits for the kernel to free what an
// nf_tables commit replaced, this command's or another's).
func (c *ipsetConn) Close() error {
	nft.CloseLater(c.c.Close)
	return nil
}

// list dumps one set (name) or every set (name ""), with flags
// (ipsetFlagList*: names or headers only).
func (c *ipsetConn) list(ctx context.Context, name string, flags uint32) ([]netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint8(ipsetAttrProtocol, ipsetProtocol)
	if name != "" {
		ae.String(ipsetAttrSetname, name)
	}
	if flags != 0 {
		ae.Bytes(ipsetAttrFlags|unix.NLA_F_NET_BYTEORDER, binary.BigEndian.AppendUint32(nil, flags))
	}
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysIPSet<<8 | ipsetCmdList), Flags: netlink.Request | netlink.Dump | netlink.Acknowledge},
		Data:   append([]byte{unix.AF_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	msgs, err := c.execute(ctx, req)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: list %q: %w", errIpsetNetlink, name, err)
	}
	if interrupted(msgs) {
		// No ipset kernel says so today; one that does is believed.
		return nil, fmt.Errorf("%w: list %q: %w", errIpsetNetlink, name, errDumpInterrupted)
	}
	return msgs, nil
}

// names lists the names of every set.
func (c *ipsetConn) names(ctx context.Context) ([]string, error) {
	msgs, err := c.list(ctx, "", ipsetFlagListSetname)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range msgs {
		err := walkAttrs(nfPayload(m), func(typ uint16, v []byte) {
			if typ == ipsetAttrSetname {
				out = append(out, cString(v))
			}
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// maxelem is the most entries a set takes, from its header (0: unknown).
func (c *ipsetConn) maxelem(ctx context.Context, name string) int {
	msgs, err := c.list(ctx, name, ipsetFlagListHeader)
	if err != nil {
		return 0
	}
	n := 0
	for _, m := range msgs {
		_ = walkAttrs(nfPayload(m), func(typ uint16, v []byte) {
			if typ != ipsetAttrData {
				return
			}
			_ = walkAttrs(v, func(typ uint16, v []byte) {
				if typ == ipsetAttrMaxelem && len(v) == 4 {
					n = int(binary.BigEndian.Uint32(v))
				}
			})
		})
	}
	return n
}

// ipsetMember is a member of a set as the kernel dumps it: its network
// and, in the order dumped, any other attribute (a flag such as nomatch,
// a timeout, a comment, a port), so that a member added by hand with
// one differs from the plain network.
type ipsetMember struct {
	p     netip.Prefix
	extra string
}

// parseMember reads one member's attributes.
func parseMember(v []byte) (ipsetMember, error) {
	var mb ipsetMember
	var addr netip.Addr
	bits := -1
	var extra []string
	err := walkAttrs(v, func(typ uint16, v []byte) {
		switch {
		case typ == ipsetAttrIP && !addr.IsValid():
			_ = walkAttrs(v, func(t uint16, v []byte) {
				if (t == ipsetAttrIPAddrV4 || t == ipsetAttrIPAddrV6) && !addr.IsValid() {
					addr, _ = netip.AddrFromSlice(v)
					return
				}
				extra = append(extra, fmt.Sprintf("ip %d %x", t, v))
			})
		case typ == ipsetAttrCIDR && len(v) == 1 && bits < 0:
			bits = int(v[0])
		default:
			extra = append(extra, fmt.Sprintf("%d %x", typ, v))
		}
	})
	if !addr.IsValid() {
		extra = append(extra, fmt.Sprintf("raw %x", v))
	} else {
		if bits < 0 {
			bits = addr.BitLen()
		}
		p := netip.PrefixFrom(addr, bits)
		if !p.IsValid() {
			extra = append(extra, fmt.Sprintf("cidr %d", bits))
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		mb.p = p
	}
	mb.extra = strings.Join(extra, ",")
	return mb, err
}

// nfPayload is a netfilter message's attributes (after struct nfgenmsg).
func nfPayload(m netlink.Message) []byte {
	if len(m.Data) < 4 {
		return nil
	}
	return m.Data[4:]
}

// walkAttrs calls fn for each netlink attribute of b, its type without
// the nested and byte-order flags. It allocates nothing: a dump of
// 50,000 members has 150,000 of them.
func walkAttrs(b []byte, fn func(typ uint16, v []byte)) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return fmt.Errorf("attribute cut short (%d bytes)", len(b))
		}
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < 4 || l > len(b) {
			return fmt.Errorf("attribute of length %d in %d bytes", l, len(b))
		}
		fn(typ, b[4:l])
		al := (l + 3) &^ 3
		if al > len(b) {
			al = len(b)
		}
		b = b[al:]
	}
	return nil
}

// cString is a NUL-terminated netlink string.
func cString(v []byte) string {
	if i := slices.Index(v, 0); i >= 0 {
		v = v[:i]
	}
	return string(v)
}

// kind is a set's type and family as the kernel lists them in its header
// ("hash:net inet"; family 0 for types without one, such as list:set).
func (c *ipsetConn) kind(ctx context.Context, name string) (typ string, family uint8, err error) {
	msgs, err := c.list(ctx, name, ipsetFlagListHeader)
	if err != nil {
		return "", 0, err
	}
	for _, m := range msgs {
		err := walkAttrs(nfPayload(m), func(t uint16, v []byte) {
			switch {
			case t == ipsetAttrTypename && typ == "":
				typ = cString(v)
			case t == ipsetAttrFamily && len(v) == 1 && family == 0:
				family = v[0]
			}
		})
		if err != nil {
			return "", 0, fmt.Errorf("%w: set %s: %w", errIpsetNetlink, name, err)
		}
	}
	return typ, family, nil
}
