package gctune

import (
	"os"
	"runtime"
	"sync"
)

// A short command (an edit of a small policy: a few netlink round trips,
// a few state files) runs on one processor. Its few goroutines (the SSH
// scan, the journal and records written beside the compile and the
// commit) then take turns on one thread instead of waking a second one
// each time one starts or blocks: an ordinary edit spent about a tenth of
// its CPU in the scheduler (other threads spinning for work, futex wake
// and sleep, new threads), and took 1.5-2 ms less CPU on one processor
// (docs/benchmarks.md, "Eighth session"). Large work (a big policy, a
// blocklist, the guard, status) gets every processor back before it
// starts: at 100,000 rules the search for covered rules and the
// collector run beside the apply.
var serial struct {
	mu sync.Mutex
	on bool
}

// StartSerial, called first in main, runs the Go scheduler on one
// processor until Parallel. Nothing changes when the environment sets
// GOMAXPROCS (the admin's choice wins) or there is one processor.
func StartSerial() {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	serial.mu.Lock()
	defer serial.mu.Unlock()
	if serial.on {
		return
	}
	if prev := runtime.GOMAXPROCS(1); prev > 1 {
		serial.on = true
	}
}

// Parallel gives back the processors StartSerial took (nothing when it
// took none): the runtime's default, as if GOMAXPROCS had never been set,
// which goes on following the CPUs the process may use and its cgroup's
// CPU limit (a long-running guard whose limit changes). Setting back the
// number found at start would fix it for good.
func Parallel() {
	serial.mu.Lock()
	defer serial.mu.Unlock()
	if !serial.on {
		return
	}
	runtime.SetDefaultGOMAXPROCS()
	serial.on = false
}

// Serial reports whether the command runs on the one processor
// StartSerial left it.
func Serial() bool {
	serial.mu.Lock()
	defer serial.mu.Unlock()
	return serial.on
}
