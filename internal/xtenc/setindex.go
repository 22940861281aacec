package xtenc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ipset netlink (linux/netfilter/ipset/ip_set.h).
const (
	nfnlSubsysIPSet   = 6
	ipsetCmdGetByName = 14 // IPSET_CMD_GET_BYNAME
	ipsetProtocol     = 7  // IPSET_PROTOCOL
	ipsetAttrProtocol = 1
	ipsetAttrSetname  = 2
	ipsetAttrIndex    = 11
	ipsetInvalidID    = 0xffff
	nlaTypeMask       = 0x3fff
)

// SetIndexTimeout bounds each lookup of KernelSetIndex: the kernel
// serializes ipset commands, and one that holds them long (a big
// restore) must not hold moat without end.
var SetIndexTimeout = 5 * time.Second

// ErrSetIndexTimeout: the kernel did not answer a set lookup in time.
var ErrSetIndexTimeout = errors.New("the kernel did not answer the ipset lookup in time")

// KernelSetIndex returns a SetIndex asking the kernel of the calling
// thread's network namespace (IPSET_CMD_GET_BYNAME over netlink: the
// index libxt_set gets with getsockopt IP_SET_OP_GET_BYNAME), each lookup
// bounded by SetIndexTimeout. Answers are kept for the SetIndex's life:
// make one per transaction, after the last ipset change it depends on
// (ipset rename and swap give a name another set's index). A set that
// does not exist is an error, not ErrUnsupported (iptables refuses such a
// rule too): the sets a rule names must exist before it is encoded. close
// releases the socket; it waits for no lookup still blocked in the
// kernel.
func KernelSetIndex() (SetIndex, func() error, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("ipset netlink: %w", err)
	}
	var (
		mu    sync.Mutex
		cache = map[string]uint16{}
		// stuck: a lookup timed out and may still hold the socket.
		stuck bool
	)
	lookup := func(name string) (uint16, error) {
		if name == "" || len(name) > maxSetName {
			return 0, fmt.Errorf("ipset name %q: %w", name, ErrUnsupported)
		}
		mu.Lock()
		defer mu.Unlock()
		if idx, ok := cache[name]; ok {
			return idx, nil
		}
		if stuck {
			return 0, fmt.Errorf("ipset %q: %w (an earlier lookup)", name, ErrSetIndexTimeout)
		}
		type answer struct {
			idx uint16
			err error
		}
		ch := make(chan answer, 1)
		go func() {
			idx, err := getByName(c, name)
			ch <- answer{idx, err}
		}()
		select {
		case a := <-ch:
			if a.err != nil {
				return 0, a.err
			}
			cache[name] = a.idx
			return a.idx, nil
		case <-time.After(SetIndexTimeout):
			stuck = true
			return 0, fmt.Errorf("ipset %q: %w", name, ErrSetIndexTimeout)
		}
	}
	return lookup, c.Close, nil
}

func getByName(c *netlink.Conn, name string) (uint16, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: ipsetAttrProtocol, Data: []byte{ipsetProtocol}},
		{Type: ipsetAttrSetname, Data: append([]byte(name), 0)},
	})
	if err != nil {
		return 0, err
	}
	if err := c.SetDeadline(time.Now().Add(SetIndexTimeout)); err != nil {
		return 0, fmt.Errorf("ipset %q: %w", name, err)
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysIPSet<<8 | ipsetCmdGetByName), Flags: netlink.Request},
		Data:   append([]byte{unix.AF_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return 0, fmt.Errorf("ipset %q: the kernel's index: %w", name, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("ipset %q: %w", name, err)
		}
		for ad.Next() {
			if ad.Type()&nlaTypeMask == ipsetAttrIndex {
				b := ad.Bytes()
				if len(b) != 2 {
					return 0, fmt.Errorf("ipset %q: an index of %d bytes", name, len(b))
				}
				idx := binary.BigEndian.Uint16(b)
				if idx == ipsetInvalidID {
					return 0, fmt.Errorf("ipset %q does not exist", name)
				}
				return idx, nil
			}
		}
		if err := ad.Err(); err != nil {
			return 0, fmt.Errorf("ipset %q: %w", name, err)
		}
	}
	return 0, fmt.Errorf("ipset %q: no index in the kernel's answer", name)
}
