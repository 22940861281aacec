package guard

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/moat-fw/moat/internal/statedir"
)

// runFile is held locked (flock) by a running guard for its whole life and
// holds its PID (Service.Lock). The kernel drops the lock when the process dies, even by
// kill -9, so a stale file never passes for a running guard.
const runFile = "guard.pid"

// ErrRunning says another guard already follows the log with this state.
var ErrRunning = errors.New("another moat guard is running")

// Running reports whether a guard holds the state in dir, and its PID (0
// while a starting guard has not written it yet). It changes nothing.
func Running(dir string) (pid int, ok bool) {
	f, err := statedir.OpenFile(dir, runFile, os.O_RDONLY, 0)
	if err != nil {
		return 0, false
	}
	defer func() { _ = f.Close() }() // read only
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		// Nobody holds it: no guard runs. Closing releases our lock.
		return 0, false
	}
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0) // io.EOF with the PID read is the normal case
	pid, _ = strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	return pid, true
}
