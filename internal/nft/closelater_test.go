package nft

import (
	"runtime"
	"sync"
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

// CloseLater and WaitClosed called at once from many goroutines (the
// guard's bans beside its other work, tests in parallel in one process):
// a sync.WaitGroup panicked ("WaitGroup is reused before previous Wait
// has returned") when a close was added as a wait was ending (e2e
// TestBansDuringBanStorm, once). With the WaitGroup this test fails under
// -race (the Add beside the Wait); the panic itself is rarely hit.
func TestCloseLaterWhileWaiting(t *testing.T) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				CloseLater(func() error { runtime.Gosched(); return nil })
			}
		})
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				WaitClosed()
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	WaitClosed()
}

// WaitClosed returns once every close it waits for has ended, though a
// close given after it started begins before it runs again: waiting for
// a moment with no close at all, it waited without end beside a guard
// closing one socket after another. The interleaving is made by hand,
// under closing.mu: the last close's end, then a new close's start.
func TestWaitClosedNotHeldByLaterCloses(t *testing.T) {
	WaitClosed()
	closing.mu.Lock()
	closeStartLocked() // a close WaitClosed waits for
	closing.mu.Unlock()
	done := make(chan struct{})
	go func() {
		WaitClosed()
		close(done)
	}()
	for {
		closing.mu.Lock()
		w := closing.waiting
		closing.mu.Unlock()
		if w > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	closing.mu.Lock()
	closeEndLocked()   // every close it waited for has ended...
	closeStartLocked() // ...and another begins before it runs again
	closing.mu.Unlock()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("WaitClosed still waits after every close given before it ended")
	}
	closing.mu.Lock()
	closeEndLocked()
	closing.mu.Unlock()
	<-done
}
