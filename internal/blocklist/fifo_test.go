package blocklist

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A FIFO named as a list file is refused at once: opened blocking, it
// hung every apply (and moat's lock) for good.
func TestReadFileFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "list")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := ReadFile(fifo)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("ReadFile(fifo): %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadFile hangs on a FIFO")
	}
}
