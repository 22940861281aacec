package blocklist

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHostileStatusLine: the reason phrase of an HTTP status line is the
// server's to write; an error (shown on the admin's terminal and kept in
// the list's state file) carries the status code and Go's own text, never
// the server's bytes.
func TestHostileStatusLine(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() }) // test listener: nothing to report
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }() // the test reads the client's side
		_, _ = http.ReadRequest(bufio.NewReader(c))
		_, _ = c.Write([]byte("HTTP/1.1 503 \x1b]0;owned\x07\x1b[2J gone\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
	}()
	f := &Fetcher{Client: &http.Client{}, Timeout: 5 * time.Second}
	_, err = f.Fetch(context.Background(), "http://"+ln.Addr().String()+"/drop.txt", Meta{})
	if err == nil {
		t.Fatal("a 503 was taken for the list")
	}
	if strings.ContainsAny(err.Error(), "\x1b\x07") || strings.Contains(err.Error(), "owned") {
		t.Errorf("the server's reason phrase reached the error: %q", err)
	}
	if !strings.Contains(err.Error(), "server answered 503 Service Unavailable") {
		t.Errorf("error %q does not name the status", err)
	}
}
