package nft

import (
	"context"
	"sync"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// While reads share a socket, each namespace still reads its own kernel:
// the socket opened in one namespace is never lent to a thread in
// another (the drift check's scratch namespace, tests).
func TestShareReadsEachNamespace(t *testing.T) {
	withTable, a := kernelNS(t)
	_, b := kernelNS(t)
	if _, err := withTable.run(context.Background(), []byte("add table inet "+TableName+"\n"), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	defer Share()()
	for i, want := range []bool{true, false, true, false} {
		ns := a
		if !want {
			ns = b
		}
		var got bool
		if err := ns.Do(func() (err error) {
			got, err = NetlinkReader{}.TableExists()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("read %d: table exists %v, want %v (a socket of the other namespace)", i, got, want)
		}
	}
}

// A reply left unread on the shared socket (a read that failed half way)
// is never taken for the next request's: the socket is closed instead of
// lent again.
func TestShareDropsSocketWithUnreadReply(t *testing.T) {
	_, ns := kernelNS(t)
	defer Share()()
	err := ns.Do(func() error {
		want, err := Generation()
		if err != nil {
			return err
		}
		_, nl, ok := lend()
		if !ok {
			t.Fatal("the shared socket was not lent")
		}
		req := netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
			Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
		}
		if _, err := nl.Send(req); err != nil {
			return err
		}
		giveBack() // the reply is still queued
		shared.mu.Lock()
		kept := shared.nl == nl
		shared.mu.Unlock()
		if kept {
			t.Error("a socket with a reply queued is lent again")
		}
		got, err := Generation()
		if err != nil {
			return err
		}
		if got != want {
			t.Errorf("generation %d, want %d", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Reads from many goroutines at once while the socket is shared: each
// gets its own answer (the socket is lent to one at a time; the others
// dial). Run with -race.
func TestShareConcurrentReads(t *testing.T) {
	withTable, ns := kernelNS(t)
	if _, err := withTable.run(context.Background(), []byte("add table inet "+TableName+"\nadd chain inet "+TableName+" "+SyncChain+"\nadd rule inet "+TableName+" "+SyncChain+" return comment \"x\"\n"), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	defer Share()()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for range 8 {
		wg.Go(func() {
			errs <- ns.Do(func() error {
				for range 5 {
					ok, err := NetlinkReader{}.TableExists()
					if err != nil {
						return err
					}
					if !ok {
						t.Error("table not found")
					}
					c, err := NetlinkReader{}.SyncComments()
					if err != nil {
						return err
					}
					if len(c) != 1 || c[0] != "x" {
						t.Errorf("sync comments %q", c)
					}
					if _, err := Generation(); err != nil {
						return err
					}
				}
				return nil
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}
