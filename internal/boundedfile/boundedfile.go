// Package boundedfile opens files moat reads from places others may write
// (a policy, an sshd configuration and its Includes, a blocklist file, the
// state directory, a log the guard follows) without hanging on a FIFO and
// without reading a device or an endless file: only a regular file is
// opened, and it is read up to a bound.
package boundedfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// ErrNotRegular is what Open's *NotRegularError satisfies.
var ErrNotRegular = errors.New("not a regular file")

// NotRegularError says that a path names something other than a regular
// file (a FIFO, a device, a directory, a socket).
type NotRegularError struct {
	Path string
	Mode fs.FileMode
}

func (e *NotRegularError) Error() string { return e.Path + ": not a regular file" }

// Is makes errors.Is(err, ErrNotRegular) true.
func (e *NotRegularError) Is(target error) bool { return target == ErrNotRegular }

// OpenFile opens path with flag (os.O_RDONLY, or a write mode with
// os.O_CREATE and perm), adding O_NONBLOCK and O_CLOEXEC: opening a FIFO
// for reading would otherwise wait for a writer, and hang moat and the
// lock it holds. Anything but a regular file is closed again and refused
// with a *NotRegularError. The file stays non-blocking (which changes
// nothing for a regular file). An error from the open itself is returned
// as os.OpenFile gave it (errors.Is(err, os.ErrNotExist),
// errors.Is(err, syscall.ELOOP) with O_NOFOLLOW).
func OpenFile(path string, flag int, perm os.FileMode) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NONBLOCK|syscall.O_CLOEXEC, perm)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, errors.Join(err, f.Close())
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, errors.Join(&NotRegularError{Path: path, Mode: fi.Mode().Type()}, f.Close())
	}
	return f, fi, nil
}

// Open is OpenFile for reading.
func Open(path string) (*os.File, os.FileInfo, error) {
	return OpenFile(path, os.O_RDONLY, 0)
}

// TooLargeError says that a file holds more than Max bytes. Size is the
// size the file had when it was opened, or -1 when it was within Max then
// and grew past it while being read.
type TooLargeError struct {
	Size, Max int64
}

func (e *TooLargeError) Error() string {
	if e.Size < 0 {
		return fmt.Sprintf("more than the %d bytes allowed", e.Max)
	}
	return fmt.Sprintf("%d bytes is more than the %d allowed", e.Size, e.Max)
}

// Buffer is where Into reads: a *bytes.Buffer or a *strings.Builder.
type Buffer interface {
	io.Writer
	Grow(n int)
	Len() int
}

// Into reads r into b, which is grown once to size (the file's size when
// opened; 0 if unknown) so that a large file is read in one allocation.
// A size over max is refused unread; past max, reading stops and the file
// is refused: it may grow after it was opened. Errors over max are
// *TooLargeError.
func Into(b Buffer, r io.Reader, size, max int64) error {
	if size > max {
		return &TooLargeError{Size: size, Max: max}
	}
	start := b.Len()
	if size > 0 {
		b.Grow(int(size) + bytes.MinRead)
	}
	if _, err := io.Copy(b, io.LimitReader(r, max+1)); err != nil {
		return err
	}
	if int64(b.Len()-start) > max {
		return &TooLargeError{Size: -1, Max: max}
	}
	return nil
}

// ReadAll reads r whole, at most max bytes (Into).
func ReadAll(r io.Reader, size, max int64) ([]byte, error) {
	var b bytes.Buffer
	if err := Into(&b, r, size, max); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// ReadFile opens path (Open) and reads it whole, at most max bytes.
func ReadFile(path string, max int64) ([]byte, error) {
	f, fi, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read only
	return ReadAll(f, fi.Size(), max)
}
