package boundedfile

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"
)

func TestReadFileRegular(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	want := bytes.Repeat([]byte("moat\n"), 1000)
	if err := os.WriteFile(p, want, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ReadFile(p, int64(len(want)))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("ReadFile = %d bytes, %v; want %d bytes", len(got), err, len(want))
	}
	// Empty file: no bytes, no error.
	e := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(e, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadFile(e, 10); err != nil || len(got) != 0 {
		t.Fatalf("empty: %q %v", got, err)
	}
}

func TestMissingIsNotExist(t *testing.T) {
	_, err := ReadFile(filepath.Join(t.TempDir(), "nope"), 10)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want ErrNotExist", err)
	}
}

// A FIFO is refused at once: the open does not wait for a writer.
func TestFIFORefusedWithoutBlocking(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := ReadFile(p, 10); done <- err }()
	select {
	case err := <-done:
		var nr *NotRegularError
		if !errors.Is(err, ErrNotRegular) || !errors.As(err, &nr) || nr.Path != p || nr.Mode&os.ModeNamedPipe == 0 {
			t.Fatalf("err = %v (%+v), want not a regular file naming the FIFO", err, nr)
		}
		if !strings.Contains(err.Error(), p+": not a regular file") {
			t.Fatalf("err = %q", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("opening a FIFO blocked")
	}
}

func TestDeviceAndDirectoryRefused(t *testing.T) {
	for _, p := range []string{"/dev/zero", "/dev/null", t.TempDir()} {
		if _, err := ReadFile(p, 10); !errors.Is(err, ErrNotRegular) {
			t.Errorf("%s: err = %v, want not a regular file", p, err)
		}
	}
}

// A link is followed to what it names (still refused unless regular);
// with O_NOFOLLOW it is not opened at all.
func TestSymlink(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	if err := os.WriteFile(reg, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	toReg, toDev := filepath.Join(dir, "toreg"), filepath.Join(dir, "todev")
	if err := os.Symlink(reg, toReg); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", toDev); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadFile(toReg, 10); err != nil || string(got) != "x" {
		t.Fatalf("link to a regular file: %q %v", got, err)
	}
	if _, err := ReadFile(toDev, 10); !errors.Is(err, ErrNotRegular) {
		t.Fatalf("link to a device: %v", err)
	}
	if _, _, err := OpenFile(toReg, os.O_RDONLY|syscall.O_NOFOLLOW, 0); !errors.Is(err, syscall.ELOOP) {
		t.Fatalf("O_NOFOLLOW on a link: %v, want ELOOP", err)
	}
}

func TestOverLimit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(p, make([]byte, 11), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ReadFile(p, 10)
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Size != 11 || tl.Max != 10 || err.Error() != "11 bytes is more than the 10 allowed" {
		t.Fatalf("err = %v (%+v)", err, tl)
	}
	// Exactly at the limit is read.
	if got, err := ReadFile(p, 11); err != nil || len(got) != 11 {
		t.Fatalf("at the limit: %d %v", len(got), err)
	}
}

// A file that grows past the limit after it was opened is refused while
// being read (its size at open said it was small).
func TestGrewPastLimit(t *testing.T) {
	_, err := ReadAll(strings.NewReader(strings.Repeat("a", 100)), 5, 10)
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Size != -1 || err.Error() != "more than the 10 bytes allowed" {
		t.Fatalf("err = %v (%+v)", err, tl)
	}
	// An endless reader stops at the limit.
	_, err = ReadAll(iotest.OneByteReader(zeros{}), 0, 1000)
	if !errors.As(err, &tl) {
		t.Fatalf("endless: %v", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// Short reads, and a file shorter than its size at open, are read whole.
func TestShortReads(t *testing.T) {
	want := strings.Repeat("0123456789", 50)
	got, err := ReadAll(iotest.HalfReader(strings.NewReader(want)), int64(len(want)), 1000)
	if err != nil || string(got) != want {
		t.Fatalf("half reads: %d bytes, %v", len(got), err)
	}
	got, err = ReadAll(strings.NewReader("abc"), 400, 1000) // shrank
	if err != nil || string(got) != "abc" {
		t.Fatalf("shrunk: %q %v", got, err)
	}
	// A read error is returned as it is.
	boom := errors.New("boom")
	if _, err := ReadAll(iotest.ErrReader(boom), 0, 10); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}

// Into appends to what the buffer holds and counts only what it read.
func TestIntoStringBuilder(t *testing.T) {
	var b strings.Builder
	b.WriteString("prefix:")
	if err := Into(&b, strings.NewReader("0123456789"), 10, 10); err != nil || b.String() != "prefix:0123456789" {
		t.Fatalf("%q %v", b.String(), err)
	}
}

// The file is opened non-blocking and close-on-exec.
func TestOpenFlags(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, _, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	fl, err := fcntl(f, syscall.F_GETFL)
	if err != nil || fl&syscall.O_NONBLOCK == 0 {
		t.Fatalf("F_GETFL = %#x %v, want O_NONBLOCK", fl, err)
	}
	fd, err := fcntl(f, syscall.F_GETFD)
	if err != nil || fd&syscall.FD_CLOEXEC == 0 {
		t.Fatalf("F_GETFD = %#x %v, want FD_CLOEXEC", fd, err)
	}
	if b, err := io.ReadAll(f); err != nil || string(b) != "x" {
		t.Fatalf("read: %q %v", b, err)
	}
}

func fcntl(f *os.File, cmd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), uintptr(cmd), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
