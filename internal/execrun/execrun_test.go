package execrun

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
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

// ExecFrom's program reads a complete sealed file, never a pipe, holding
// exactly what write wrote; a write that fails starts no program.
func TestExecFromWritesAFile(t *testing.T) {
	big := strings.Repeat("add moat-x 192.0.2.0/24\n", 200000) // 4.8 MB: many buffer flushes
	write := func(w io.Writer) error {
		for i := 0; i < len(big); i += 1000 {
			if _, err := io.WriteString(w, big[i:min(i+1000, len(big))]); err != nil {
				return err
			}
		}
		return nil
	}
	out, err := ExecFrom(context.Background(), write, "readlink", "/proc/self/fd/0")
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(string(out), "pipe:") {
		t.Fatalf("stdin is a pipe: %s", out)
	}
	got, err := ExecFrom(context.Background(), write, "cat")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != big {
		t.Fatalf("cat returned %d bytes of %d", len(got), len(big))
	}
	dir := t.TempDir()
	mark := filepath.Join(dir, "ran")
	_, err = ExecFrom(context.Background(), func(w io.Writer) error {
		_, _ = io.WriteString(w, "half")
		return errors.New("render failed")
	}, "touch", mark)
	if err == nil || !strings.Contains(err.Error(), "render failed") {
		t.Fatalf("error: %v", err)
	}
	if _, err := os.Stat(mark); err == nil {
		t.Fatal("the program ran with an input whose writing failed")
	}
	// Buffered hands a Runner the same bytes.
	var seen []byte
	fake := func(_ context.Context, stdin []byte, _ string, _ ...string) ([]byte, error) {
		seen = stdin
		return nil, nil
	}
	if _, err := Buffered(fake)(context.Background(), write, "x"); err != nil || string(seen) != big {
		t.Fatalf("Buffered: %v, %d bytes of %d", err, len(seen), len(big))
	}
}

func TestLookPathRemembersFoundOnly(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("PATH", dir)
	prog := filepath.Join(dir, "moat-lookpath-test")
	if _, err := LookPath("moat-lookpath-test"); err == nil {
		t.Fatal("found a program that does not exist")
	}
	// Installed after a failed lookup: found (failures are not kept).
	if err := os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := LookPath("moat-lookpath-test")
	if err != nil || p != prog {
		t.Fatalf("LookPath = %q, %v; want %q", p, err, prog)
	}
	// Found once: remembered for this PATH, but checked again: a program
	// removed since (the admin uninstalled it while the guard ran) is
	// not found, as a fresh command would not find it; one made no
	// longer executable neither; one installed in another directory of
	// the PATH is found there.
	if err := os.Chmod(prog, 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := LookPath("moat-lookpath-test"); err == nil {
		t.Fatalf("LookPath of a program no longer executable = %q", p)
	}
	if err := os.Chmod(prog, 0o755); err != nil {
		t.Fatal(err)
	}
	if p, err := LookPath("moat-lookpath-test"); err != nil || p != prog {
		t.Fatalf("LookPath = %q, %v; want %q", p, err, prog)
	}
	if err := os.Remove(prog); err != nil {
		t.Fatal(err)
	}
	if p, err := LookPath("moat-lookpath-test"); err == nil {
		t.Fatalf("LookPath after removal = %q; want not found", p)
	}
	other := t.TempDir()
	t.Setenv("PATH", dir+":"+other)
	if p, err := LookPath("moat-lookpath-test"); err == nil {
		t.Fatalf("LookPath = %q; want not found", p)
	}
	moved := filepath.Join(other, "moat-lookpath-test")
	if err := os.WriteFile(moved, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if p, err := LookPath("moat-lookpath-test"); err != nil || p != moved {
		t.Fatalf("LookPath = %q, %v; want %q", p, err, moved)
	}
	if err := os.Remove(moved); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if p, err := LookPath("moat-lookpath-test"); err != nil || p != prog {
		t.Fatalf("LookPath after a move back = %q, %v; want %q", p, err, prog)
	}
	// Another PATH: looked up there.
	t.Setenv("PATH", t.TempDir())
	if _, err := LookPath("moat-lookpath-test"); err == nil {
		t.Fatal("another PATH used what was found in the first")
	}
}
