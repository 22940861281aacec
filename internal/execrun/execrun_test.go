package execrun

import (
	"context"
	"strings"
	"testing"
)

// The program's standard input is a complete file, never a pipe that a
// dying moat could leave half-written.
func TestStdinIsAFile(t *testing.T) {
	out, err := Exec(context.Background(), []byte("x"), "readlink", "/proc/self/fd/0")
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(string(out), "pipe:") {
		t.Fatalf("stdin is a pipe: %s", out)
	}
	big := strings.Repeat("add element inet moat s { 192.0.2.1 }\n", 50000)
	got, err := Exec(context.Background(), []byte(big), "cat")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != big {
		t.Fatalf("cat returned %d bytes of %d", len(got), len(big))
	}
}

func TestErrorNamesProgramAndStderr(t *testing.T) {
	_, err := Exec(context.Background(), nil, "sh", "-c", "echo refused >&2; exit 3")
	if err == nil || !strings.Contains(err.Error(), "sh: exit status 3: refused") {
		t.Fatalf("error: %v", err)
	}
}
