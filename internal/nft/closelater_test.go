package nft

import (
	"testing"
	"time"
)

// CloseLater runs the close on a goroutine of its own and returns at
// once; WaitClosed returns only when every close given so far returned.
// Fails if CloseLater waits for the close, or WaitClosed does not.
func TestCloseLater(t *testing.T) {
	release := make(chan struct{})
	closed := make(chan struct{}, 2)
	slow := func() error {
		<-release
		closed <- struct{}{}
		return nil
	}
	done := make(chan struct{})
	go func() {
		CloseLater(slow)
		CloseLater(slow)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("CloseLater waited for the close")
	}
	waited := make(chan struct{})
	go func() {
		WaitClosed()
		close(waited)
	}()
	select {
	case <-waited:
		t.Fatal("WaitClosed returned before the closes")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("WaitClosed did not return once the closes did")
	}
	if len(closed) != 2 {
		t.Fatalf("%d closes ran, want 2", len(closed))
	}
}
