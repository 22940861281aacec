package ipt

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/nft"
)

// Loading a policy set's members over ipset's netlink interface
// (linux/netfilter/ipset/ip_set.h) instead of `ipset restore` text: at
// 100,000 networks the ipset program spent 0.1 s of CPU parsing the 4.7 MB
// of text moat formatted for it (and moat 30 ms formatting it), for
// 0.15 s of kernel work. The set itself is created by the ipset program
// (writeSets), which picks the type revision its own listings read; only
// its members go over netlink, in messages of up to 60 KiB (about 2,500
// IPv4 or 1,700 IPv6 networks each), then the set is renamed or swapped
// in, as the text did.
const (
	ipsetCmdDestroy = 3
	ipsetCmdRename  = 5
	ipsetCmdSwap    = 6
	ipsetCmdAdd     = 9
	ipsetCmdDel     = 10

	ipsetAttrSetname2 = 3 // RENAME and SWAP: the other name

	// ipsetBatch bounds the members' attributes of one message.
	ipsetBatch = 60 << 10
)

// fill is a policy set writeSets leaves to the caller: nets go into tmp,
// which is then renamed to name, or swapped with it and destroyed.
type fill struct {
	tmp, name string
	swap      bool
	nets      []netip.Prefix
}

// ipsetWriter is a netlink socket of its own for a command's ipset
// changes, each message built in one buffer and sent as it is (no copy of
// the 60 KiB messages).
type ipsetWriter struct {
	fd  int
	seq uint32
	buf []byte
	ans []byte
}

func dialIpsetWriter() (*ipsetWriter, error) {
	fd, err := dialIpsetFD()
	if err != nil {
		return nil, err
	}
	// A send buffer that takes a whole message whatever the host's
	// default (net.core.wmem_default below 64 KiB would refuse every
	// message: EMSGSIZE), forced as root past wmem_max; and the kernel's
	// errors without a copy of the refused message (which would not fit
	// the answer buffer).
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4*ipsetBatch) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4*ipsetBatch) // the kernel's cap: a send may then fail, with its error
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1) // without it: the copy comes, and fits the answer buffer
	return &ipsetWriter{fd: fd, buf: make([]byte, 0, ipsetBatch+1024), ans: make([]byte, 1<<17)}, nil
}

// Close releases the socket off the caller's path (ipsetConn.Close).
func (w *ipsetWriter) Close() error {
	closeFDLater(w.fd)
	return nil
}

// fillSet loads f.
func (w *ipsetWriter) fillSet(ctx context.Context, f fill) error {
	if err := w.addNets(ctx, f.tmp, f.nets); err != nil {
		return fmt.Errorf("add the networks of ipset %s to %s: %w", f.name, f.tmp, err)
	}
	if !f.swap {
		if err := w.command(ctx, ipsetCmdRename, f.tmp, f.name); err != nil {
			return fmt.Errorf("rename ipset %s to %s: %w", f.tmp, f.name, err)
		}
		return nil
	}
	// The rules keep pointing at the name while it is swapped.
	if err := w.command(ctx, ipsetCmdSwap, f.tmp, f.name); err != nil {
		return fmt.Errorf("swap ipset %s with %s: %w", f.tmp, f.name, err)
	}
	if err := w.command(ctx, ipsetCmdDestroy, f.tmp, ""); err != nil {
		return fmt.Errorf("destroy ipset %s: %w", f.tmp, err)
	}
	return nil
}

// start begins a message of cmd in w.buf: the netlink and netfilter
// headers, the protocol version and the set's name.
func (w *ipsetWriter) start(cmd int, name string) {
	b := append(w.buf[:0], make([]byte, unix.SizeofNlMsghdr)...)
	b = append(b, unix.AF_INET, unix.NFNETLINK_V0, 0, 0)
	b = nft.AppendAttr(b, ipsetAttrProtocol, []byte{ipsetProtocol})
	b = nft.AppendAttr(b, ipsetAttrSetname, append([]byte(name), 0))
	binary.NativeEndian.PutUint16(b[4:6], uint16(nfnlSubsysIPSet<<8|cmd))
	binary.NativeEndian.PutUint16(b[6:8], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	w.buf = b
}

// command sends one of DESTROY (name), RENAME and SWAP (name, name2).
func (w *ipsetWriter) command(ctx context.Context, cmd int, name, name2 string) error {
	if cmd == ipsetCmdDestroy || cmd == ipsetCmdRename || cmd == ipsetCmdSwap {
		nft.WaitClosed() // a set a removed rule used, or a dump cut short, may hold it until then (Backend.runIpset)
	}
	w.start(cmd, name)
	if name2 != "" {
		w.buf = nft.AppendAttr(w.buf, ipsetAttrSetname2, append([]byte(name2), 0))
	}
	return w.send(ctx)
}

// send sends the message in w.buf and waits for the kernel's answer.
func (w *ipsetWriter) send(ctx context.Context) error {
	w.seq++
	binary.NativeEndian.PutUint32(w.buf[0:4], uint32(len(w.buf)))
	binary.NativeEndian.PutUint32(w.buf[8:12], w.seq)
	if err := sendFD(w.fd, w.buf); err != nil {
		return err
	}
	deadline := time.Now().Add(ipsetAnswerTimeout)
	for {
		n, err := recvWithin(ctx, w.fd, w.ans, 0, deadline)
		if err != nil {
			return err
		}
		for b := w.ans[:n]; len(b) >= unix.SizeofNlMsghdr; {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return fmt.Errorf("%w: an answer of length %d in %d bytes", errIpsetNetlink, l, len(b))
			}
			typ, seq := binary.NativeEndian.Uint16(b[4:6]), binary.NativeEndian.Uint32(b[8:12])
			msg := b[unix.SizeofNlMsghdr:l]
			b = b[min((l+3)&^3, len(b)):]
			if seq != w.seq || typ != unix.NLMSG_ERROR {
				continue
			}
			if len(msg) < 4 {
				return fmt.Errorf("%w: an answer cut short", errIpsetNetlink)
			}
			if errno := -int32(binary.NativeEndian.Uint32(msg[0:4])); errno != 0 {
				return ipsetError(errno)
			}
			return nil
		}
	}
}

// ipsetError names the errors of ipset's own numbers (ip_set.h) an add
// or a rename can meet.
func ipsetError(errno int32) error {
	if msg, ok := map[int32]string{
		4097: "ipset protocol error", 4099: "the most sets the kernel keeps exist", 4100: "the set is in use",
		4101: "a set of the new name exists", 4102: "the sets are not of one type", 4104: "invalid prefix length",
		4106: "an address of the other family", 4352: "the set is full (maxelem)",
	}[errno]; ok {
		return fmt.Errorf("%s (%w)", msg, unix.Errno(errno))
	}
	return unix.Errno(errno)
}

// addNets adds nets to the set name, as `ipset -exist add` does (a
// member there already is no error), many to a message.
func (w *ipsetWriter) addNets(ctx context.Context, name string, nets []netip.Prefix) error {
	return w.adtNets(ctx, ipsetCmdAdd, name, nets)
}

// adtNets adds (ipsetCmdAdd) or deletes (ipsetCmdDel) nets, as `ipset
// -exist` does (without NLM_F_EXCL: a member there already, or not there,
// is no error), many to a message.
func (w *ipsetWriter) adtNets(ctx context.Context, cmd int, name string, nets []netip.Prefix) error {
	for len(nets) > 0 {
		w.start(cmd, name)
		b := nft.AppendAttr(w.buf, ipsetAttrLineno, binary.NativeEndian.AppendUint32(nil, 0)) // required with a list of members
		adt := len(b)
		b = appendAttrHead(b, 0, ipsetAttrADT|unix.NLA_F_NESTED)
		for len(nets) > 0 && len(b)-adt < ipsetBatch {
			b = appendMember(b, nets[0])
			nets = nets[1:]
		}
		binary.NativeEndian.PutUint16(b[adt:], uint16(len(b)-adt))
		w.buf = b
		if err := w.send(ctx); err != nil {
			return err
		}
	}
	return nil
}

// appendMember appends one member of a hash:net set: its address (in
// network byte order, which the kernel checks) and prefix length.
func appendMember(b []byte, p netip.Prefix) []byte {
	data := len(b)
	b = appendAttrHead(b, 0, ipsetAttrData|unix.NLA_F_NESTED)
	ip := len(b)
	b = appendAttrHead(b, 0, ipsetAttrIP|unix.NLA_F_NESTED)
	if a := p.Addr(); a.Is4() {
		v := a.As4()
		b = appendAttrHead(b, 8, ipsetAttrIPAddrV4|unix.NLA_F_NET_BYTEORDER)
		b = append(b, v[:]...)
	} else {
		v := a.As16()
		b = appendAttrHead(b, 20, ipsetAttrIPAddrV6|unix.NLA_F_NET_BYTEORDER)
		b = append(b, v[:]...)
	}
	binary.NativeEndian.PutUint16(b[ip:], uint16(len(b)-ip))
	b = appendAttrHead(b, 5, ipsetAttrCIDR)
	b = append(b, byte(p.Bits()), 0, 0, 0) // padded to 4 bytes
	binary.NativeEndian.PutUint16(b[data:], uint16(len(b)-data))
	return b
}

// appendAttrHead appends a netlink attribute's header (length l: 0 for
// one filled in later).
func appendAttrHead(b []byte, l int, typ uint16) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	return binary.NativeEndian.AppendUint16(b, typ)
}

// setDiff is a change of one policy set's networks: the networks to add
// and those to delete.
type setDiff struct {
	name     string
	add, del []netip.Prefix
}

// text is d as ipset restore input: the adds, then the deletes.
func (d setDiff) text(w *strings.Builder) {
	for _, p := range d.add {
		fmt.Fprintf(w, "add %s %s\n", d.name, p)
	}
	for _, p := range d.del {
		fmt.Fprintf(w, "del %s %s\n", d.name, p)
	}
}

// sendDiffs sends the changes over netlink, in the order ipset restore
// of their text would make them (each set's adds, then its deletes): no
// ipset program to start and no text to format and parse for a change of
// a few networks. An error leaves some of them made: the caller sends
// them all again as text, which -exist makes the same.
func sendDiffs(ctx context.Context, diffs []setDiff) error {
	w, err := dialIpsetWriter()
	if err != nil {
		return err
	}
	defer func() { _ = w.Close() }() // the answers were read
	for _, d := range diffs {
		if err := w.adtNets(ctx, ipsetCmdAdd, d.name, d.add); err != nil {
			return fmt.Errorf("add to ipset %s: %w", d.name, err)
		}
		if err := w.adtNets(ctx, ipsetCmdDel, d.name, d.del); err != nil {
			return fmt.Errorf("delete from ipset %s: %w", d.name, err)
		}
	}
	return nil
}
