package ipt

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
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

// fillSet loads f over c.
func (c *ipsetConn) fillSet(f fill) error {
	if err := c.addNets(f.tmp, f.nets); err != nil {
		return fmt.Errorf("add the networks of ipset %s to %s: %w", f.name, f.tmp, err)
	}
	if !f.swap {
		if err := c.command(ipsetCmdRename, f.tmp, f.name); err != nil {
			return fmt.Errorf("rename ipset %s to %s: %w", f.tmp, f.name, err)
		}
		return nil
	}
	// The rules keep pointing at the name while it is swapped.
	if err := c.command(ipsetCmdSwap, f.tmp, f.name); err != nil {
		return fmt.Errorf("swap ipset %s with %s: %w", f.tmp, f.name, err)
	}
	if err := c.command(ipsetCmdDestroy, f.tmp, ""); err != nil {
		return fmt.Errorf("destroy ipset %s: %w", f.tmp, err)
	}
	return nil
}

// command sends one of DESTROY (name), RENAME and SWAP (name, name2) and
// waits for the kernel's answer.
func (c *ipsetConn) command(cmd int, name, name2 string) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint8(ipsetAttrProtocol, ipsetProtocol)
	ae.String(ipsetAttrSetname, name)
	if name2 != "" {
		ae.String(ipsetAttrSetname2, name2)
	}
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	return c.send(cmd, attrs)
}

func (c *ipsetConn) send(cmd int, attrs []byte) error {
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysIPSet<<8 | cmd), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append([]byte{unix.AF_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	_, err := c.c.Execute(req)
	return err
}

// addNets adds nets to the set name, as `ipset -exist add` does (a
// member there already is no error), many to a message.
func (c *ipsetConn) addNets(name string, nets []netip.Prefix) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint8(ipsetAttrProtocol, ipsetProtocol)
	ae.String(ipsetAttrSetname, name)
	ae.Uint32(ipsetAttrLineno, 0) // required with a list of members
	head, err := ae.Encode()
	if err != nil {
		return err
	}
	buf := make([]byte, 0, len(head)+4+ipsetBatch+64)
	for len(nets) > 0 {
		buf = append(buf[:0], head...)
		adt := len(buf)
		buf = appendAttrHead(buf, 0, ipsetAttrADT|unix.NLA_F_NESTED)
		for len(nets) > 0 && len(buf)-adt < ipsetBatch {
			buf = appendMember(buf, nets[0])
			nets = nets[1:]
		}
		binary.NativeEndian.PutUint16(buf[adt:], uint16(len(buf)-adt))
		if err := c.send(ipsetCmdAdd, buf); err != nil {
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
