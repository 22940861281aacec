// Package execrun runs the kernel tools moat drives (nft, iptables-restore,
// ipset) with an argument list, never through a shell, and hands them their
// input in a way that cannot be cut short.
package execrun

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
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
	var f *os.File
	if stdin != nil {
		var err error
		if f, err = inputFile(stdin); err != nil {
			return nil, fmt.Errorf("%s: input: %w", name, err)
		}
		defer func() { _ = f.Close() }() // read-only for us; the program has its own copy
	}
	return run(ctx, f, name, args...)
}

// Writer is a Runner whose program's standard input is what write writes.
type Writer func(ctx context.Context, write func(io.Writer) error, name string, args ...string) ([]byte, error)

// ExecFrom is Exec with the input written by write, straight into the
// sealed file the program reads (a large input, 4.7 MB of ipset restore
// at 100,000 networks, is never held whole in moat's memory). The program
// starts only once write returned and the file is complete and sealed: a
// moat killed while writing leaves no program, and an error from write
// starts none.
func ExecFrom(ctx context.Context, write func(io.Writer) error, name string, args ...string) ([]byte, error) {
	f, err := inputFileFrom(write, true)
	if err != nil {
		return nil, fmt.Errorf("%s: input: %w", name, err)
	}
	defer func() { _ = f.Close() }() // read-only for us; the program has its own copy
	return run(ctx, f, name, args...)
}

// Buffered is ExecFrom over a Runner: the input is written whole into
// memory and handed to run (the fakes tests use see it as with Exec).
func Buffered(run Runner) Writer {
	return func(ctx context.Context, write func(io.Writer) error, name string, args ...string) ([]byte, error) {
		var b bytes.Buffer
		if err := write(&b); err != nil {
			return nil, fmt.Errorf("%s: input: %w", name, err)
		}
		return run(ctx, b.Bytes(), name, args...)
	}
}

// run runs a program with stdin (nil: none).
func run(ctx context.Context, stdin *os.File, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	// If moat is killed, the tool dies with it: the lock moat held is
	// free at once, and an orphan must not commit its change after the
	// next moat command has repaired the state.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Start()
	if err == nil {
		if started, ok := ctx.Value(startedKey{}).(func(int)); ok && started != nil {
			started(cmd.Process.Pid)
		}
		err = cmd.Wait()
	}
	if err != nil {
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
	return inputFileFrom(func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}, false)
}

// inputFileFrom is inputFile of what write writes, through a 64 KiB
// buffer when buffer is set (write writes a line at a time).
func inputFileFrom(write func(io.Writer) error, buffer bool) (*os.File, error) {
	fd, err := unix.MemfdCreate("moat-input", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return tempInput(write, buffer)
	}
	f := os.NewFile(uintptr(fd), "moat-input")
	if err := writeAll(f, write, buffer); err != nil {
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

// writeAll writes what write writes into f, 64 KiB at a time with
// buffer.
func writeAll(f *os.File, write func(io.Writer) error, buffer bool) error {
	if !buffer {
		return write(f)
	}
	bw := bufio.NewWriterSize(f, 64<<10)
	if err := write(bw); err != nil {
		return err
	}
	return bw.Flush()
}

func tempInput(write func(io.Writer) error, buffer bool) (*os.File, error) {
	f, err := os.CreateTemp("", "moat-input-")
	if err != nil {
		return nil, err
	}
	_ = os.Remove(f.Name()) // unlinked while open: nothing is left behind; a failure leaves a temp file, not an error
	if err := writeAll(f, write, buffer); err != nil {
		_ = f.Close() // the write error is the one to report
		return nil, err
	}
	if _, err := f.Seek(0, 0); err != nil {
		_ = f.Close() // the write error is the one to report
		return nil, err
	}
	return f, nil
}

type startedKey struct{}

// WithStarted returns a context under which Exec and ExecFrom tell
// started the PID of each program they start, once it runs (a caller
// that watches the nf_tables commits tells the program's from others').
func WithStarted(ctx context.Context, started func(pid int)) context.Context {
	return context.WithValue(ctx, startedKey{}, started)
}
