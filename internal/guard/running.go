package guard

import (
	"errors"

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
	return statedir.Held(dir, runFile)
}
