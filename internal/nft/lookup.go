package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/ruleset"
)

// Listing every ban without the kernel's whole dump.
//
// A dump of a set element by element costs the kernel n² (it walks a hash
// set from its start for each 32 KiB part: 3 s of CPU for 200,000 bans,
// 62% of it in rhashtable_walk_next), and nothing in the request makes it
// start elsewhere. A lookup of one element costs the same whatever the
// set's size. The guard records every ban it or 'moat ban' makes, so the
// addresses that may be banned are known; newer kernels (this project's
// 6.18 machines) say how many elements a set holds (NFTA_SET_COUNT). When the
// lookups of the recorded addresses find as many elements as the set
// holds, at one ruleset generation and one count before and after, they
// found every element: the set is listed without a dump. Otherwise (a
// ban the kernel's port scan trap or a hand-written nft command made, a
// ban storm, bans that expired and wait for the kernel's collector, an
// older kernel) the set is dumped as before.

// nftaSetCount is NFTA_SET_COUNT: the number of elements of a set, sent
// with the set by newer kernels (golang.org/x/sys does not name it yet).
const nftaSetCount = 20

// SetCount reads how many elements the kernel holds in a set of moat's
// table (expired ones its collector has not freed included); ok false
// when the kernel does not say (an older kernel).
func SetCount(set string) (n uint32, ok bool, err error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_SET_NAME, Data: []byte(set + "\x00")},
	})
	if err != nil {
		return 0, false, err
	}
	msgs, err := execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSET), Flags: netlink.Request},
		Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return 0, false, fmt.Errorf("nftables: get set %s: %w", set, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, false, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == nftaSetCount && len(ad.Bytes()) == 4 {
				return ad.Uint32(), true, nil
			}
		}
		if err := ad.Err(); err != nil {
			return 0, false, fmt.Errorf("nftables: get set %s: %w", set, err)
		}
	}
	return 0, false, nil
}

// lookupBatch is how many lookups are sent at once: each answer is a
// socket buffer of a page or so queued until it is read, so the batch's
// answers must fit the receive buffer (lookupRcvBuf, doubled by the
// kernel), or the kernel drops them and says ENOBUFS.
const (
	lookupBatch  = 1024
	lookupRcvBuf = 16 << 20
)

// LookupElements asks the kernel for each of addrs in a set of moat's
// table, as `nft get element` does, one request per address sent in
// batches on one socket: the elements found, in no order (an address
// not in the set, or whose timeout passed, is not an error).
func LookupElements(set string, addrs []netip.Addr) ([]Elem, error) {
	if len(addrs) == 0 {
		return nil, nil
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	defer func() { _ = unix.Close(fd) }() // read only
	batch := lookupBatch
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, lookupRcvBuf) != nil {
		batch = 16 // without CAP_NET_ADMIN: what the default buffer holds
	}
	// A bound for a lost answer, not a speed check: a read never waits
	// for ever.
	tv := unix.NsecToTimeval(int64(10 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	// Connected to the kernel: no other process's message reaches it.
	if err := unix.Connect(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	var (
		out []Elem
		req []byte
		buf = make([]byte, 64<<10)
	)
	for start := 0; start < len(addrs); start += batch {
		end := min(start+batch, len(addrs))
		req = req[:0]
		for i := start; i < end; i++ {
			if req, err = appendGetElem(req, set, addrs[i], uint32(i+1)); err != nil {
				return nil, err
			}
		}
		if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return nil, fmt.Errorf("nftables: get elements of %s: %w", set, err)
		}
		seen := make([]bool, end-start)
		for answered := 0; answered < end-start; {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("nftables: get elements of %s: %w", set, err)
			}
			msgs, err := syscall.ParseNetlinkMessage(buf[:n])
			if err != nil {
				return nil, fmt.Errorf("nftables: get elements of %s: %w", set, err)
			}
			for _, m := range msgs {
				seq := int(m.Header.Seq)
				if seq <= start || seq > end || seen[seq-1-start] {
					continue // not an answer to this batch's requests
				}
				seen[seq-1-start] = true
				answered++
				want := addrs[seq-1]
				if m.Header.Type == unix.NLMSG_ERROR {
					if len(m.Data) < 4 {
						return nil, fmt.Errorf("nftables: get element %s from %s: short error message", want, set)
					}
					code := -int32(binary.NativeEndian.Uint32(m.Data[:4]))
					if code == int32(unix.ENOENT) {
						continue // not banned
					}
					return nil, fmt.Errorf("nftables: get element %s from %s: %w", want, set, syscall.Errno(code))
				}
				if len(m.Data) < 4 {
					return nil, fmt.Errorf("nftables: get element %s from %s: short message", want, set)
				}
				els, err := parseElemList(m.Data[4:])
				if err != nil {
					return nil, fmt.Errorf("nftables: get element %s from %s: %w", want, set, err)
				}
				for _, e := range els {
					if a, ok := netip.AddrFromSlice(e.Key); !ok || a.Unmap() != want.Unmap() || e.End {
						return nil, fmt.Errorf("nftables: get element %s from %s: the kernel answered with another element", want, set)
					}
					out = append(out, e)
				}
			}
		}
	}
	return out, nil
}

// appendGetElem appends the request for one element of set (sequence seq).
func appendGetElem(dst []byte, set string, a netip.Addr, seq uint32) ([]byte, error) {
	m, err := getElemRequest(set, a)
	if err != nil {
		return nil, err
	}
	m.Header.Sequence = seq
	m.Header.Length = uint32(unix.NLMSG_HDRLEN + len(m.Data))
	b, err := m.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return append(dst, b...), nil
}

// getElemRequest is the request for one element of a set of moat's table
// (what `nft get element` sends): its answer is the element, or ENOENT.
func getElemRequest(set string, a netip.Addr) (netlink.Message, error) {
	key, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: a.AsSlice()}})
	if err != nil {
		return netlink.Message{}, err
	}
	el, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_KEY, Data: key}})
	if err != nil {
		return netlink.Message{}, err
	}
	list, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: el}})
	if err != nil {
		return netlink.Message{}, err
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(set + "\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: list},
	})
	if err != nil {
		return netlink.Message{}, err
	}
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: netlink.Request,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}, nil
}

// lookupSteps are the reads BansOf makes (variables for the tests, which
// answer with made-up sets).
var (
	lookupCount = SetCount
	lookupElems = LookupElements
)

// freshSlack widens the window in which an element found counts as added
// during the lookups: the kernel's times are whole jiffies (up to 10 ms)
// read in whole milliseconds.
const freshSlack = 15 * time.Millisecond

// BansOf lists a ban set by looking up the addresses that may be banned
// (known: the guard's records), without a dump. complete says that the
// lookups found every element of the set: as many as the kernel counts in
// it, at one ruleset generation and one count before and after, and none
// of them added (or its timeout set again) since the first count was
// read. When it is false the bans are nil and the set must be dumped
// (Bans).
//
// The last condition is what makes equal counts a proof. The port scan
// trap adds bans from the packet path, which moves no generation, and
// the kernel's collector frees expired ones, which moves the count down:
// a recorded address the trap banned again during the lookups (found)
// and a ban found that expired and was freed before the second count
// leave both counts and the generation as they were, and the lookups
// would find as many elements as the set counts while a ban nobody
// recorded (the trap's, held all along) was never looked up. An element
// whose time since its timeout was set (timeout minus time left) is
// longer than the lookups took was in the set at the first count and was
// counted in it, as was one a commit put (see addedSince); when every
// element found is such, finding as many as that count is finding every
// one.
func (NetlinkReader) BansOf(set string, known []netip.Addr) (bans []ruleset.Ban, complete bool, err error) {
	// Each address once: two lookups of one address would count its
	// element twice and pass for another element of the set.
	known = slices.Clone(known)
	for i, a := range known {
		known[i] = a.Unmap()
	}
	slices.SortFunc(known, netip.Addr.Compare)
	known = slices.Compact(known)
	start := time.Now() // before the first count: see above
	g0, err := dumpGeneration()
	if err != nil {
		return nil, false, err
	}
	c0, ok, err := lookupCount(set)
	if err != nil || !ok || int(c0) > len(known) {
		return nil, false, err // some elements are not known: dump
	}
	els, err := lookupElems(set, known)
	if err != nil {
		return nil, false, err
	}
	if addedSince(els, time.Since(start)+freshSlack) {
		return nil, false, nil // may not have been counted in c0: dump
	}
	c1, ok, err := lookupCount(set)
	if err != nil || !ok {
		return nil, false, err
	}
	g1, err := dumpGeneration()
	if err != nil {
		return nil, false, err
	}
	if g0 != g1 || c0 != c1 || len(els) != int(c1) {
		return nil, false, nil
	}
	return elemBans(els), true, nil
}

// addedSince says whether an element of els may have been added by the
// packet path (or had its timeout set again) within the last d: the time
// since its timeout was set is less. An element without a timeout or with
// a comment (a ban moat or the guard made: the packet path writes no
// comment) was put by a commit, which moves the generation; one made just
// before the lookups does not send them to the dump.
func addedSince(els []Elem, d time.Duration) bool {
	for _, e := range els {
		if e.Timeout > 0 && e.Comment == "" && e.Timeout-e.Expires < d {
			return true
		}
	}
	return false
}
