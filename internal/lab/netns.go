// Package lab builds throwaway network namespaces joined by veth pairs,
// runs listeners and probes in them, and sends real packets between them.
// The test suite and `moat lab` use it; it never touches the namespace it
// is called from beyond creating and deleting its own namespaces.
package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netns"
)

// NS is a named network namespace made by this package.
type NS struct {
	Name   string
	handle netns.NsHandle
}

var counter atomic.Int64

// UniqueName returns a namespace name no other run on this machine uses
// (process ID and a counter), so parallel tests never collide.
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), counter.Add(1))
}

// NewNS creates a named namespace (visible to `ip netns exec NAME`) with
// its loopback up.
func NewNS(name string) (*NS, error) {
	if len(name) > 200 || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("bad namespace name %q", name)
	}
	var ns *NS
	err := onThread(func() error {
		// NewNamed moves this thread into the new namespace; onThread
		// moves it back.
		h, err := netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create namespace %s: %w", name, err)
		}
		ns = &NS{Name: name, handle: h}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// No duplicate address detection on links made later: a router whose
	// link-local address is still tentative cannot send the neighbour
	// solicitations that forwarding needs, for a second or more.
	for _, key := range []string{"net/ipv6/conf/default/accept_dad", "net/ipv6/conf/all/accept_dad"} {
		if err := ns.Sysctl(key, "0"); err != nil {
			return nil, errors.Join(err, ns.Close())
		}
	}
	if err := ns.linkUp("lo"); err != nil {
		return nil, errors.Join(err, ns.Close())
	}
	// Its maker, for RemoveStale once this process is gone.
	self, err := selfOwner()
	if err == nil {
		err = markOwner(ns, self)
	}
	if err != nil {
		return nil, errors.Join(err, ns.Close())
	}
	return ns, nil
}

// Close deletes the namespace. Sockets still open in it keep it alive in
// the kernel until they close, but its name is gone at once.
func (ns *NS) Close() error {
	if ns == nil {
		return nil
	}
	herr := ns.handle.Close()
	if err := netns.DeleteNamed(ns.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return errors.Join(herr, fmt.Errorf("delete namespace %s: %w", ns.Name, err))
	}
	return herr
}

// Do runs fn with the calling goroutine's thread inside the namespace.
// Sockets fn creates belong to the namespace for their whole life, and
// programs it starts (os/exec) start inside it.
func (ns *NS) Do(fn func() error) error {
	return onThread(func() error {
		if err := netns.Set(ns.handle); err != nil {
			return fmt.Errorf("enter namespace %s: %w", ns.Name, err)
		}
		return fn()
	})
}

// onThread runs fn on a locked thread and puts the thread back into the
// namespace it started in. If that fails the thread stays locked, so Go
// retires it instead of reusing a thread in the wrong namespace.
func onThread(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current namespace: %w", err)
	}
	defer func() { _ = orig.Close() }() // a descriptor of a namespace that stays
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("return to original namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Run starts a program inside the namespace and returns its combined
// output. Arguments are passed as a list, never through a shell.
func (ns *NS) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out []byte
	err := ns.Do(func() error {
		cmd := exec.CommandContext(ctx, name, args...)
		var err error
		out, err = cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s in %s: %w", name, strings.Join(args, " "), ns.Name, err)
		}
		return nil
	})
	return out, err
}

// Start starts a long-running program inside the namespace.
func (ns *NS) Start(cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}

// Sysctl sets a /proc/sys value of the namespace, such as
// "net/ipv4/ip_forward".
func (ns *NS) Sysctl(key, value string) error {
	return ns.Do(func() error {
		if strings.Contains(key, "..") {
			return fmt.Errorf("bad sysctl %q", key)
		}
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	})
}
