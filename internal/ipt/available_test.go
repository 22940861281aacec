package ipt

import (
	"os"
	"path/filepath"
	"testing"
)

// Available looks the programs up until it finds them all, then no more
// (a command asks several times); a failure is not remembered.
func TestAvailableOnce(t *testing.T) {
	empty := t.TempDir()
	t.Setenv("PATH", empty)
	b := New()
	if err := b.Available(); err == nil {
		t.Fatal("available without the programs")
	}
	bin := t.TempDir()
	for _, p := range []string{"iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore", "ipset"} {
		if err := os.WriteFile(filepath.Join(bin, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bin)
	if err := b.Available(); err != nil {
		t.Fatalf("the programs were installed since: %v", err)
	}
	t.Setenv("PATH", empty)
	if err := b.Available(); err != nil {
		t.Fatalf("looked up again: %v", err)
	}
	if err := New().Available(); err == nil {
		t.Fatal("another backend took the first one's answer")
	}
}
