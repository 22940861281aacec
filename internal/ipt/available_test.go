package ipt

import (
	"context"
	"os"
	"path/filepath"
	"slices"
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
// the policy sets they use, members included, not the list of every ipset
// (one process less per fingerprint); it says when it covers sets.
func TestFingerprintCommands(t *testing.T) {
	for _, c := range []struct {
		name, v4 string
		sets     bool
		want     string
	}{
		{"bans only", "*filter\n:MOAT-INPUT - [0:0]\n-A INPUT -j MOAT-INPUT\n-A MOAT-INPUT -m set --match-set moat-ban4 src -j DROP\nCOMMIT\n",
			false, "iptables-save \nip6tables-save "},
		{"the protected set after the ban set", "*raw\n:MOAT-PREROUTING - [0:0]\n-A PREROUTING -j MOAT-PREROUTING\n-A MOAT-PREROUTING -m set --match-set moat-ban4 src -m set ! --match-set moat-protect4 src -j DROP\nCOMMIT\n",
			// then the other sets ProtectedFingerprint reads, for the
			// hash of the protected sets (none is a policy set).
			true, "iptables-save \nip6tables-save \nipset list moat-protect4\nipset list moat-early4\nipset list moat-early6\nipset list moat-protect6"},
		{"a policy set", "*filter\n:MOAT-INPUT - [0:0]\n-A INPUT -j MOAT-INPUT\n-A MOAT-INPUT -m set --match-set moat-0123abcd src -j DROP\nCOMMIT\n",
			true, "iptables-save \nip6tables-save \nipset list moat-0123abcd"},
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

// A policy set whose members changed by hand while its number of entries
// stayed (one address added, another deleted) has another fingerprint:
// the header alone (ipset list -t) vouched for it.
func TestFingerprintSetMembers(t *testing.T) {
	v4 := "*filter\n:MOAT-INPUT - [0:0]\n-A INPUT -j MOAT-INPUT\n-A MOAT-INPUT -m set --match-set moat-0123abcd src -j DROP\nCOMMIT\n"
	list := func(member string) string {
		return "Name: moat-0123abcd\nType: hash:net\nRevision: 7\nHeader: family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5c2a8e2f\n" +
			"Size in memory: 504\nReferences: 1\nNumber of entries: 2\nMembers:\n192.0.2.4\n" + member + "\n"
	}
	var fps []string
	for _, member := range []string{"192.0.2.3", "192.0.2.2"} {
		host := &fakeHost{save: map[string]string{"iptables-save": v4, "ip6tables-save": "*filter\nCOMMIT\n"}, sets: list(member)}
		run := func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
			out, err := host.run(ctx, stdin, name, args...)
			if name == "ipset" && slices.Contains(args, "-t") { // the header alone
				head, _, _ := strings.Cut(string(out), "Members:")
				return []byte(head + "Members:\n"), err
			}
			return out, err
		}
		fp, _, err := (&Backend{Run: run}).FingerprintSets(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		fps = append(fps, fp)
	}
	if fps[0] == fps[1] {
		t.Error("a set with another member of the same count has the same fingerprint")
	}
	// The same members listed in another order (ipset lists in hash
	// order, seeded at random per set): the same fingerprint.
	reordered := strings.Replace(list("192.0.2.3"), "Members:\n192.0.2.4\n192.0.2.3\n", "Members:\n192.0.2.3\n192.0.2.4\n", 1)
	host := &fakeHost{save: map[string]string{"iptables-save": v4, "ip6tables-save": "*filter\nCOMMIT\n"}, sets: reordered}
	fp, _, err := (&Backend{Run: host.run}).FingerprintSets(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if fp != fps[0] {
		t.Error("the same members in another order give another fingerprint")
	}
}

// With the protected sets as the only sets besides the bans', the
// fingerprint says the hash of their listings and the early lists',
// which ProtectedFingerprint reads again with four `ipset list` and
// nothing else (the early lists are missing here); a member added by
// hand changes it. With a policy set there is none.
func TestProtectedFingerprint(t *testing.T) {
	v4 := "*raw\n:MOAT-PREROUTING - [0:0]\n-A PREROUTING -j MOAT-PREROUTING\n-A MOAT-PREROUTING -m set --match-set moat-ban4 src -m set ! --match-set moat-protect4 src -j DROP\nCOMMIT\n"
	v6 := strings.ReplaceAll(strings.ReplaceAll(v4, "ban4", "ban6"), "protect4", "protect6")
	list := "Name: moat-protect4\nType: hash:net\nHeader: family inet hashsize 1024 maxelem 65536 initval 0x5c2a8e2f\nSize in memory: 504\nReferences: 1\nNumber of entries: 1\nMembers:\n192.0.2.4\n"
	host := &fakeHost{save: map[string]string{"iptables-save": v4, "ip6tables-save": v6}, sets: list}
	b := &Backend{Run: host.run}
	k, err := b.FingerprintKernel(context.Background())
	if err != nil || k.Fingerprint == "" || !k.Sets || k.Protected == "" {
		t.Fatalf("%+v, %v", k, err)
	}
	host.calls = nil
	if got := b.ProtectedFingerprint(context.Background()); got != k.Protected {
		t.Errorf("read again: %s, with the fingerprint: %s", got, k.Protected)
	}
	if len(host.calls) != 4 || host.calls[0].args != "ipset list moat-early4" || host.calls[1].args != "ipset list moat-early6" ||
		host.calls[2].args != "ipset list moat-protect4" || host.calls[3].args != "ipset list moat-protect6" {
		t.Errorf("commands: %+v", host.calls)
	}
	host.sets = strings.Replace(list, "Number of entries: 1\nMembers:\n", "Number of entries: 2\nMembers:\n192.0.2.2\n", 1)
	if b.ProtectedFingerprint(context.Background()) == k.Protected {
		t.Error("a member added by hand leaves the protected sets' hash")
	}
	host.save["iptables-save"] = strings.Replace(v4, "COMMIT\n", "-A MOAT-PREROUTING -m set --match-set moat-0123abcd src -j DROP\nCOMMIT\n", 1)
	if k, err := b.FingerprintKernel(context.Background()); err != nil || k.Protected != "" {
		t.Errorf("with a policy set: %+v, %v", k, err)
	}
}
