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
	ipsetAttrFamily   = 5
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
// index and family libxt_set gets with getsockopt IP_SET_OP_GET_FNAME),
// each lookup bounded by SetIndexTimeout. A set of the rule's family or
// of none (list:set) is found; one of the other family is an error.
// Answers are kept for the SetIndex's life: make one per transaction,
// after the last ipset change it depends on. A swap keeps each name's
// index (the two sets, of one family and kind, trade their members); a
// rename, or a destroy and a create, gives a name another index
// (TestKernelSetIndexAcrossSwapAndRename). A set that does
// not exist is an error, not ErrUnsupported (iptables refuses such a
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
		cache = map[string]setID{}
		// stuck: a lookup timed out and may still hold the socket.
		stuck bool
	)
	lookup := func(name string) (setID, error) {
		if name == "" || len(name) > maxSetName {
			return setID{}, fmt.Errorf("ipset name %q: %w", name, ErrUnsupported)
		}
		mu.Lock()
		defer mu.Unlock()
		if id, ok := cache[name]; ok {
			return id, nil
		}
		if stuck {
			return setID{}, fmt.Errorf("ipset %q: %w (an earlier lookup)", name, ErrSetIndexTimeout)
		}
		type answer struct {
			id  setID
			err error
		}
		ch := make(chan answer, 1)
		go func() {
			id, err := getByName(c, name)
			ch <- answer{id, err}
		}()
		select {
		case a := <-ch:
			if a.err != nil {
				return setID{}, a.err
			}
			cache[name] = a.id
			return a.id, nil
		case <-time.After(SetIndexTimeout):
			stuck = true
			return setID{}, fmt.Errorf("ipset %q: %w", name, ErrSetIndexTimeout)
		}
	}
	return func(name string, proto uint8) (uint16, error) {
		id, err := lookup(name)
		if err != nil {
			return 0, err
		}
		if id.family != unix.NFPROTO_UNSPEC && id.family != proto {
			return 0, fmt.Errorf("ipset %q is of family %s, not applicable to an %s rule", name, familyName(id.family), familyName(proto))
		}
		return id.idx, nil
	}, c.Close, nil
}

// setID is what the kernel says of a set: its index and family
// (NFPROTO_UNSPEC for a list:set).
type setID struct {
	idx    uint16
	family uint8
}

func familyName(f uint8) string {
	switch f {
	case unix.NFPROTO_IPV4:
		return "IPv4"
	case unix.NFPROTO_IPV6:
		return "IPv6"
	}
	return fmt.Sprintf("number %d", f)
}

func getByName(c *netlink.Conn, name string) (setID, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: ipsetAttrProtocol, Data: []byte{ipsetProtocol}},
		{Type: ipsetAttrSetname, Data: append([]byte(name), 0)},
	})
	if err != nil {
		return setID{}, err
	}
	if err := c.SetDeadline(time.Now().Add(SetIndexTimeout)); err != nil {
		return setID{}, fmt.Errorf("ipset %q: %w", name, err)
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysIPSet<<8 | ipsetCmdGetByName), Flags: netlink.Request},
		Data:   append([]byte{unix.AF_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return setID{}, fmt.Errorf("ipset %q: the kernel's index: %w", name, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return setID{}, fmt.Errorf("ipset %q: %w", name, err)
		}
		var id setID
		haveIdx, haveFamily := false, false
		for ad.Next() {
			switch ad.Type() & nlaTypeMask {
			case ipsetAttrIndex:
				b := ad.Bytes()
				if len(b) != 2 {
					return setID{}, fmt.Errorf("ipset %q: an index of %d bytes", name, len(b))
				}
				id.idx, haveIdx = binary.BigEndian.Uint16(b), true
			case ipsetAttrFamily:
				b := ad.Bytes()
				if len(b) != 1 {
					return setID{}, fmt.Errorf("ipset %q: a family of %d bytes", name, len(b))
				}
				id.family, haveFamily = b[0], true
			}
		}
		if err := ad.Err(); err != nil {
			return setID{}, fmt.Errorf("ipset %q: %w", name, err)
		}
		if haveIdx && id.idx == ipsetInvalidID {
			return setID{}, fmt.Errorf("ipset %q does not exist", name)
		}
		if haveIdx && haveFamily {
			return id, nil
		}
	}
	return setID{}, fmt.Errorf("ipset %q: no index and family in the kernel's answer", name)
}
