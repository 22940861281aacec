package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Generation is the nftables ruleset generation of this network namespace:
// every committed change of any table (nft, iptables-nft, moat) moves it;
// the packet path's updates of dynamic sets and expiring elements do not.
// The same generation means that no table was changed since.
func Generation() (uint32, error) {
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: netlink.Request,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
	msgs, err := execute(req)
	if err != nil {
		return 0, fmt.Errorf("nftables: ruleset generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("nftables: ruleset generation: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
		if err := ad.Err(); err != nil {
			return 0, fmt.Errorf("nftables: ruleset generation: %w", err)
		}
	}
	return 0, errors.New("nftables: the kernel did not say the ruleset generation")
}

// GenerationScope names where a generation counts: the boot (its id) and
// the calling thread's network namespace (its cookie, never reused while
// the machine runs). The generation counts from boot in each namespace,
// so a generation recorded with another scope says nothing here. ok is
// false when either cannot be told.
func GenerationScope() (boot string, netns uint64, ok bool) {
	boot, err := bootID()
	if err != nil {
		return "", 0, false
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", 0, false
	}
	defer func() { _ = unix.Close(fd) }() // a probe socket: nothing written
	// SO_NETNS_COOKIE (Linux 5.14): a namespace's number for the boot.
	netns, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil || boot == "" || netns == 0 {
		return "", 0, false
	}
	return boot, netns, true
}

// bootID is this boot's id, read once per process: it names the boot,
// which a running process never leaves (a command asked it four times,
// each an open and a read in procfs). A failed read is not kept.
func bootID() (string, error) {
	if id := bootIDRead.Load(); id != nil {
		return *id, nil
	}
	data, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(data))
	bootIDRead.Store(&id)
	return id, nil
}

var bootIDRead atomic.Pointer[string]
