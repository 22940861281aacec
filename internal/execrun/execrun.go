// Package execrun runs the kernel tools moat drives (nft, iptables-restore,
// ipset) with an argument list, never through a shell, and hands them their
// input in a way that cannot be cut short.
package execrun

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Runner runs a program with arguments and standard input and returns its
// standard output. It is the seam tests use to see exact commands.
type Runner func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)

// Exec runs programs for real. Standard input is never a pipe: it is a
// sealed in-memory file (memfd) written whole before the program starts. A
// pipe fed by moat ends early if moat is killed mid-write, and `nft -f -`
// then commits the truncated transaction; a file the program holds is
// complete whatever happens to moat afterwards.
func Exec(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		f, err := inputFile(stdin)
		if err != nil {
			return nil, fmt.Errorf("%s: input: %w", name, err)
		}
		defer func() { _ = f.Close() }() // read-only for us; the program has its own copy
		cmd.Stdin = f
	}
	// If moat is killed, the tool dies with it: the lock moat held is
	// free at once, and an orphan must not commit its change after the
	// next moat command has repaired the state.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return nil, fmt.Errorf("%s: %w: %s", name, err, msg)
	}
	return stdout.Bytes(), nil
}

// inputFile returns a read-only file holding data, positioned at its
// start: a sealed memfd, or an unlinked temporary file where memfd is not
// available. Either way nothing is left behind if moat dies.
func inputFile(data []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate("moat-input", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return tempInput(data)
	}
	f := os.NewFile(uintptr(fd), "moat-input")
	if _, err := f.Write(data); err != nil {
		_ = f.Close() // the write error is the one to report
		return nil, err
	}
	// Sealed: nobody can change the input once written.
	_, _ = unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL)
	if _, err := f.Seek(0, 0); err != nil {
		_ = f.Close() // the write error is the one to report
		return nil, err
	}
	return f, nil
}

func tempInput(data []byte) (*os.File, error) {
	f, err := os.CreateTemp("", "moat-input-")
	if err != nil {
		return nil, err
	}
	_ = os.Remove(f.Name()) // unlinked while open: nothing is left behind; a failure leaves a temp file, not an error
	if _, err := f.Write(data); err != nil {
		_ = f.Close() // the write error is the one to report
		return nil, err
	}
	if _, err := f.Seek(0, 0); err != nil {
		_ = f.Close() // the write error is the one to report
		return nil, err
	}
	return f, nil
}
