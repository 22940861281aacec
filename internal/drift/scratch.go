package drift

import (
	"context"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/ruleset"
)

// Loaded is the layout, rule bodies included, that a kernel holds after
// moat loads rs with backend into an empty network namespace: one made for
// this on a thread of its own, which ends with it (nothing is left behind,
// and nothing of the caller's namespace is touched). Compared with what
// Read finds in the real kernel, it shows rules changed in place, which
// tags and verdicts alone cannot.
func Loaded(ctx context.Context, backend string, rs *ruleset.Ruleset, want *Layout) (*Layout, error) {
	type result struct {
		l   *Layout
		err error
	}
	done := make(chan result, 1)
	go onOtherThread(func() {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("a scratch network namespace: %w", err)}
			return
		}
		var err error
		switch backend {
		case "nftables":
			err = (&nft.Backend{Run: execrun.Exec, Full: true}).Apply(ctx, rs)
		case "iptables":
			err = (&ipt.Backend{Run: execrun.Exec, Full: true}).Apply(ctx, rs)
		default:
			err = fmt.Errorf("drift: unknown backend %q", backend)
		}
		if err != nil {
			done <- result{err: fmt.Errorf("load into a scratch namespace: %w", err)}
			return
		}
		l, err := Read(ctx, backend, nil, want)
		done <- result{l, err}
	})
	select {
	case r := <-done:
		return r.l, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// onOtherThread runs fn locked to a thread that is not the main one and
// ends with it (never unlocked: the runtime ends the thread with the
// goroutine, and a namespace fn enters with it). The main thread cannot
// end: the runtime keeps it, locked and idle, in whatever namespace fn
// left it, and /proc/self/net is the main thread's namespace, so the
// lockout check read an empty socket table there and found no SSH
// session. On the main thread, it holds it while another goroutine
// (which cannot run there meanwhile) does the work.
func onOtherThread(fn func()) {
	runtime.LockOSThread()
	if unix.Gettid() != unix.Getpid() {
		fn()
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		onOtherThread(fn)
	}()
	<-done
	runtime.UnlockOSThread()
}

// InPlace compares moat's rules in the kernel with what loading rs into an
// empty kernel gives, rule bodies included: nil when they agree.
func InPlace(ctx context.Context, backend string, rs *ruleset.Ruleset, script string) ([]string, error) {
	want := ParseScript(backend, script)
	fresh, err := Loaded(ctx, backend, rs, want)
	if err != nil {
		return nil, err
	}
	got, err := Read(ctx, backend, nil, want)
	if err != nil {
		return nil, err
	}
	return Compare(fresh, got), nil
}
