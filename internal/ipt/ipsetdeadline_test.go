package ipt

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// silentIpset makes every ipset netlink socket one that takes requests
// and never answers (the kernel's side of a socket pair nobody reads),
// and the wait for an answer short.
func silentIpset(t *testing.T) {
	t.Helper()
	oldDial, oldTimeout := dialIpsetFD, ipsetAnswerTimeout
	t.Cleanup(func() { dialIpsetFD, ipsetAnswerTimeout = oldDial, oldTimeout })
	ipsetAnswerTimeout = 300 * time.Millisecond
	dialIpsetFD = func() (int, error) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		// A receive buffer that takes a whole 60 KiB request.
		_ = unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
		t.Cleanup(func() { _ = unix.Close(fds[1]) })
		return fds[0], nil
	}
}

// within runs fn and fails the test if it has not returned after a
// while (before the deadline existed, it never did).
func within(t *testing.T, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: still waiting for the kernel's answer after 10s", what)
		return nil
	}
}

// A kernel that never answers an ipset read or write (wedged, or a
// request lost) ends the read with a clear error after
// ipsetAnswerTimeout, and a cancelled context ends it at once: a command
// does not hang.
func TestIpsetNetlinkNoAnswer(t *testing.T) {
	silentIpset(t)
	ctx := context.Background()
	check := func(what string, err error, want error) {
		t.Helper()
		t.Logf("%s: %v", what, err)
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	}
	err := within(t, "dump", func() error {
		_, err := dumpSet(ctx, "moat-x", 0, func([]byte) error { return nil })
		return err
	})
	check("a dump", err, errIpsetTimeout)

	w, err := dialIpsetWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Close() }()
	err = within(t, "fill", func() error {
		return w.fillSet(ctx, fill{tmp: "moat-x-tmp", name: "moat-x", nets: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	})
	check("a load", err, errIpsetTimeout)
	err = within(t, "diff", func() error {
		return sendDiffs(ctx, []setDiff{{name: "moat-x", add: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}})
	})
	check("a difference", err, errIpsetTimeout)

	// Cancelled: at once, whatever the timeout.
	ipsetAnswerTimeout = time.Hour
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(100*time.Millisecond, cancel)
	err = within(t, "cancelled dump", func() error {
		_, err := dumpSet(cctx, "moat-x", 0, func([]byte) error { return nil })
		return err
	})
	check("a cancelled dump", err, context.Canceled)
}

// The same for the reads of ipsetConn (names, headers, a set's name by
// its index), over a netlink connection whose peer never answers: the
// connection is closed, and any later request on it fails at once.
func TestIpsetConnNoAnswer(t *testing.T) {
	old := ipsetAnswerTimeout
	t.Cleanup(func() { ipsetAnswerTimeout = old })
	ipsetAnswerTimeout = 300 * time.Millisecond
	never := make(chan struct{})
	t.Cleanup(func() { close(never) })
	dial := func() *ipsetConn {
		return &ipsetConn{c: nltest.Dial(func([]netlink.Message) ([]netlink.Message, error) {
			<-never
			return nil, errors.New("closed")
		})}
	}
	c := dial()
	defer func() { _ = c.Close() }()
	ctx := context.Background()
	err := within(t, "names", func() error { _, err := c.names(ctx); return err })
	if !errors.Is(err, errIpsetTimeout) || !errors.Is(err, errIpsetNetlink) {
		t.Errorf("names: %v, want %v", err, errIpsetTimeout)
	}
	start := time.Now()
	if _, _, err := c.kind(ctx, "moat-x"); !errors.Is(err, errIpsetTimeout) {
		t.Errorf("a request after the timeout: %v, want %v", err, errIpsetTimeout)
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("a request on a connection that timed out waited %s", d)
	}
	if n := c.maxelem(ctx, "moat-x"); n != 0 {
		t.Errorf("maxelem: %d, want 0 (unknown)", n)
	}

	ipsetAnswerTimeout = time.Hour
	c2 := dial()
	defer func() { _ = c2.Close() }()
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(100*time.Millisecond, cancel)
	err = within(t, "cancelled", func() error { _, err := c2.setNameByIndex(cctx, 3); return err })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled request: %v, want %v", err, context.Canceled)
	}
}

// moat's chains read over netlink (the fingerprint of the iptables
// backend), and the search for the rules iptables-save cannot print, end
// with the same error when the kernel never answers, instead of hanging
// the command.
func TestChainsNetlinkNoAnswer(t *testing.T) {
	oldTimeout, oldDial, oldGen := ipsetAnswerTimeout, dialNetfilter, nftGeneration
	t.Cleanup(func() { ipsetAnswerTimeout, dialNetfilter, nftGeneration = oldTimeout, oldDial, oldGen })
	ipsetAnswerTimeout = 300 * time.Millisecond
	never := make(chan struct{})
	t.Cleanup(func() { close(never) })
	dialNetfilter = func() (*netlink.Conn, error) {
		return nltest.Dial(func([]netlink.Message) ([]netlink.Message, error) {
			<-never
			return nil, errors.New("closed")
		}), nil
	}
	nftGeneration = func() (uint32, error) { return 7, nil }
	ctx := context.Background()
	err := within(t, "chains", func() error { _, err := hashChainsNetlink(ctx, sha256.New()); return err })
	if !errors.Is(err, errIpsetTimeout) {
		t.Errorf("moat's chains: %v, want %v", err, errIpsetTimeout)
	}
	err = within(t, "incompatible", func() error { _, err := incompatibleParts(unix.NFPROTO_IPV4, "filter"); return err })
	if !errors.Is(err, errIpsetTimeout) {
		t.Errorf("the incompatible rules: %v, want %v", err, errIpsetTimeout)
	}
	// The command's context ends the read of moat's chains at once (an
	// interrupted command), whatever the timeout.
	ipsetAnswerTimeout = time.Hour
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(100*time.Millisecond, cancel)
	err = within(t, "cancelled chains", func() error { _, err := hashChainsNetlink(cctx, sha256.New()); return err })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("moat's chains, cancelled: %v, want %v", err, context.Canceled)
	}
}
