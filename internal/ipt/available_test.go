package ipt

import (
	"context"
	"os"
	"path/filepath"
	"strings"
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

// The fingerprint reads the chains (iptables-save, ip6tables-save, every
// table: moat's are in filter and raw) and
// the headers of the policy sets they use, not the list of every ipset
// (one process less per fingerprint); it says when it covers sets.
func TestFingerprintCommands(t *testing.T) {
	for _, c := range []struct {
		name, v4 string
		sets     bool
		want     string
	}{
		{"bans only", "*filter\n:MOAT-INPUT - [0:0]\n-A INPUT -j MOAT-INPUT\n-A MOAT-INPUT -m set --match-set moat-ban4 src -j DROP\nCOMMIT\n",
			false, "iptables-save \nip6tables-save "},
		{"a policy set", "*filter\n:MOAT-INPUT - [0:0]\n-A INPUT -j MOAT-INPUT\n-A MOAT-INPUT -m set --match-set moat-0123abcd src -j DROP\nCOMMIT\n",
			true, "iptables-save \nip6tables-save \nipset list -t moat-0123abcd"},
	} {
		host := &fakeHost{save: map[string]string{"iptables-save": c.v4, "ip6tables-save": "*filter\nCOMMIT\n"}}
		fp, sets, err := (&Backend{Run: host.run}).FingerprintSets(context.Background())
		if err != nil || fp == "" || sets != c.sets {
			t.Errorf("%s: %q, sets %v, %v", c.name, fp, sets, err)
		}
		var cmds []string
		for _, call := range host.calls {
			cmds = append(cmds, call.args)
		}
		if got := strings.Join(cmds, "\n"); got != c.want {
			t.Errorf("%s: commands:\n%s\nwant:\n%s", c.name, got, c.want)
		}
	}
}
