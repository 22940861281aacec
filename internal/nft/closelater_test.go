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
	first := closeStartLocked() // a close WaitClosed waits for
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
	closeEndLocked(first)       // every close it waited for has ended...
	later := closeStartLocked() // ...and another begins before it runs again
	closing.mu.Unlock()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("WaitClosed still waits after every close given before it ended")
	}
	closing.mu.Lock()
	closeEndLocked(later)
	closing.mu.Unlock()
	<-done
}

// WaitClosed waits for the closes given before it, not for those given
// while it waits: another goroutine's stream of closes (a guard's bans)
// kept it waiting as long as one of them was running. Fails when
// WaitClosed waits for a close given after it started.
func TestWaitClosedNotForLaterCloses(t *testing.T) {
	WaitClosed()
	first, later := make(chan struct{}), make(chan struct{})
	var releaseFirst sync.Once
	defer func() {
		releaseFirst.Do(func() { close(first) })
		close(later)
	}()
	CloseLater(func() error { <-first; return nil })
	waited := make(chan struct{})
	go func() {
		WaitClosed()
		close(waited)
	}()
	time.Sleep(50 * time.Millisecond) // WaitClosed is waiting for the first
	CloseLater(func() error { <-later; return nil })
	select {
	case <-waited:
		t.Fatal("WaitClosed returned before the close given before it")
	case <-time.After(50 * time.Millisecond):
	}
	releaseFirst.Do(func() { close(first) })
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("WaitClosed waited for a close given after it")
	}
}

// With maxPendingCloses closes running, CloseLater closes on the caller:
// a process whose sockets the kernel releases slower than it opens them
// (a guard's bans in a storm, the machine's load delaying the kernel's
// frees) holds a bounded number of sockets and goroutines. Fails when
// CloseLater returns before the close past the bound ran.
func TestCloseLaterBounded(t *testing.T) {
	WaitClosed()
	release := make(chan struct{})
	for range maxPendingCloses {
		CloseLater(func() error { <-release; return nil })
	}
	defer func() {
		close(release)
		WaitClosed()
	}()
	ran := make(chan struct{})
	returned := make(chan struct{})
	gate := make(chan struct{})
	go func() {
		CloseLater(func() error { <-gate; close(ran); return nil })
		close(returned)
	}()
	select {
	case <-returned:
		close(gate)
		t.Fatalf("CloseLater returned with %d closes running, before its close ran", maxPendingCloses)
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("CloseLater did not return once its close ran")
	}
	select {
	case <-ran:
	default:
		t.Fatal("CloseLater returned before its close ran")
	}
}
