package guard

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The followed log replaced by a FIFO (anyone who may write the log's
// directory can): opening it for reading waits for a writer, so the guard
// hung in open(2), read nothing more, and could not even be stopped. A
// log that is not a regular file is refused at start, and skipped after
// a rotation: the guard reads on when a real file comes back.
func TestFollowRefusesFIFO(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "auth.log")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- (&FileSource{Path: path}).Run(ctx, make(chan Line, 10)) }()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("following a FIFO: %v; want a refusal naming it", err)
		}
	case <-time.After(5 * time.Second):
		// Unblock the hung open so the goroutine ends.
		if f, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			_ = f.Close()
		}
		t.Fatal("following a FIFO hung (and ignored its context)")
	}

	// A regular file rotated into a FIFO, then into a regular file again.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	appendLines(t, path, 0, 0)
	ch := startFollow(t, &FileSource{Path: path, Poll: 50 * time.Millisecond})
	appendLines(t, path, 0, 2)
	expectLines(t, collect(t, ch, 2), 0, 2)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // a few polls meet the FIFO
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	appendLines(t, path, 2, 4)
	expectLines(t, collect(t, ch, 2), 2, 4)
}
