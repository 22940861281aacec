package ipt

import (
	"errors"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// legacyTables says whether the legacy x_tables hold tables (then moat's
// chains may be there, out of nftables' sight).
//
// It is asked a dozen times in one command (each decision that trusts the
// nftables generation asks again, so a legacy table made while the
// command runs is seen by the next decision), and each answer is read
// afresh from the kernel: what changed is only how. The two files are
// read with one open, read and close each (os.ReadFile added a poller
// registration, a stat and a second read, and a stat of the directory
// came first every time: 13 system calls a question, 6 now).
func legacyTables() bool {
	dir := legacyDir()
	return tablesListed(dir+"ip_tables_names") || tablesListed(dir+"ip6_tables_names")
}

// legacyDir is where the calling thread's network namespace lists its
// tables: /proc/thread-self/net (/proc/net is the thread group leader's:
// a test's thread moved into a namespace read the host's), or /proc/net
// on a kernel without thread-self (before 3.17). Which one the kernel
// has does not change while moat runs: it is looked up once.
var legacyDir = sync.OnceValue(func() string {
	if _, err := os.Stat("/proc/thread-self/net/"); err != nil {
		return "/proc/net/"
	}
	return "/proc/thread-self/net/"
})

// tablesListed says whether the file lists a table: it holds anything
// but white space (a missing or unreadable file lists none, as before).
func tablesListed(path string) bool {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer func() { _ = unix.Close(fd) }() // read only: nothing to lose
	var buf [64]byte
	for {
		n, err := unix.Read(fd, buf[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n <= 0 {
			return false
		}
		for _, c := range buf[:n] {
			switch c {
			case ' ', '\t', '\n', '\r', '\v', '\f':
			default:
				return true
			}
		}
	}
}
