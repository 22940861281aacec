package ipt

import (
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A policy may hold hundreds of sets (each run of rules that differ only
// in their address is one): the drift check's prefetch dumps at most as
// many at once as there are processors (two at least), not all of them
// (a socket, the kernel's queued answers and a 64 KiB buffer each), and
// every set still reads as the kernel says. The kernel here is a fake:
// each socket's other end answers a dump 'no such set' after a while,
// counting the dumps it holds at once. Fails when prefetch dumps every
// set at once.
func TestPrefetchDumpsBounded(t *testing.T) {
	var (
		now, most atomic.Int32
		served    sync.WaitGroup
	)
	oldDial := dialIpsetFD
	t.Cleanup(func() { dialIpsetFD = oldDial })
	dialIpsetFD = func() (int, error) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		served.Go(func() {
			defer func() { _ = unix.Close(fds[1]) }()
			req := make([]byte, 4096)
			n, err := unix.Read(fds[1], req)
			if err != nil || n < unix.SizeofNlMsghdr {
				t.Errorf("fake kernel: a request of %d bytes: %v", n, err)
				return
			}
			for m := now.Add(1); ; {
				if old := most.Load(); m <= old || most.CompareAndSwap(old, m) {
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
			now.Add(-1)
			// NLMSG_ERROR, ENOENT, the request's sequence number.
			ans := make([]byte, unix.SizeofNlMsghdr+4+unix.SizeofNlMsghdr)
			binary.NativeEndian.PutUint32(ans[0:4], uint32(len(ans)))
			binary.NativeEndian.PutUint16(ans[4:6], unix.NLMSG_ERROR)
			copy(ans[8:12], req[8:12])
			errno := -int32(unix.ENOENT)
			binary.NativeEndian.PutUint32(ans[16:20], uint32(errno))
			if _, err := unix.Write(fds[1], ans); err != nil {
				t.Errorf("fake kernel: answer: %v", err)
			}
		})
		return fds[0], nil
	}
	b := &Backend{IpsetNetlink: true}
	sr := b.setReader()
	used := map[string]bool{}
	for i := range 40 {
		used[fmt.Sprintf("moat-in_allow_src4_%d", i)] = true
	}
	sr.prefetch(context.Background(), used)
	served.Wait()
	if len(sr.read) != len(used) {
		t.Fatalf("prefetched %d sets, want %d", len(sr.read), len(used))
	}
	for name, r := range sr.read {
		if r.err != nil || !r.missing {
			t.Errorf("%s: missing %v, err %v; want missing", name, r.missing, r.err)
		}
	}
	limit := int32(max(2, runtime.GOMAXPROCS(0)))
	t.Logf("at most %d dumps at once (limit %d)", most.Load(), limit)
	if most.Load() > limit {
		t.Errorf("%d dumps at once, want at most %d", most.Load(), limit)
	}
}
