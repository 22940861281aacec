package ipt

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
)

// The sockets of moat's nf_tables transactions are closed off the
// command's path (nft.CloseLater), and until the kernel frees the rules a
// commit removed (an RCU grace period), a set they used is still
// referenced: ipset refuses to destroy or rename it. An Apply that stops
// using a policy set and destroys it, in one command, must wait for that
// (Backend.runIpset, ipsetWriter.command): here with the rules written
// over netlink, one set used and then dropped, again and again, both
// families. Fails with the waits taken out (the destroy says "in use by a
// kernel component"), and with the sets left behind.
func TestKernelSetDestroyedAfterRulesCommit(t *testing.T) {
	ns := labtest.NS(t, "moatclose")
	ctx := context.Background()
	b := &Backend{Netlink: true, IpsetNetlink: true, Run: execrun.Exec}
	head := "default deny incoming\nallow 22/tcp\n"
	err := ns.Do(func() error {
		if legacyTables() {
			t.Skip("legacy x_tables loaded here")
		}
		for i := 0; i < 4; i++ {
			if err := b.Apply(ctx, compile(t, head+denyList(200, -1))); err != nil {
				t.Fatalf("round %d, the sets used: %v", i, err)
			}
			if err := b.Apply(ctx, compile(t, head+"allow 80/tcp\n")); err != nil {
				t.Fatalf("round %d, the sets dropped: %v", i, err)
			}
			nft.WaitClosed()
			out, err := execrun.Exec(ctx, nil, "ipset", "list", "-n")
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range strings.Fields(string(out)) {
				if strings.Contains(name, "deny") {
					t.Errorf("round %d: set %s left behind", i, name)
				}
			}
		}
		return b.Remove(ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The sets a fingerprint dumps whole are dumped side by side
// (setReader.prefetch): each digest is the one a dump of that set alone
// gives, a member swapped by hand (the count kept) still changes it, and
// the sets read are the calling thread's network namespace's although the
// dumps run on other goroutines (the test runs in a namespace the other
// threads of the process are not in: dialled there, a set is missing and
// its digest says so). Fails with the sockets dialled in the goroutines,
// or a prefetched read given to the wrong name.
func TestKernelSetPrefetchSameAsOneByOne(t *testing.T) {
	b, ns := kernelBackendNS(t)
	b.IpsetNetlink = true
	b.KeyDir = t.TempDir()
	ctx := context.Background()
	restore := func(script string) {
		t.Helper()
		if out, err := b.Run(ctx, []byte(script), "ipset", "restore"); err != nil {
			t.Fatalf("ipset restore: %v\n%s", err, out)
		}
	}
	var s strings.Builder
	s.WriteString("create moat-a4 hash:net family inet maxelem 65536\ncreate moat-b6 hash:net family inet6 maxelem 65536\ncreate moat-c4 hash:net family inet maxelem 65536\n")
	for i := 0; i < 3000; i++ {
		fmt.Fprintf(&s, "add moat-a4 198.18.%d.%d\nadd moat-b6 2001:db8:%x::/64\n", i>>8, i&255, i)
	}
	s.WriteString("add moat-c4 192.0.2.0/24\n")
	restore(s.String())
	used := map[string]bool{"moat-a4": true, "moat-b6": true, "moat-c4": true, "moat-missing": true}
	names := sortedKeys(used)
	digests := func(prefetch bool) map[string]string {
		t.Helper()
		out := map[string]string{}
		err := ns.Do(func() error {
			sr := b.setReader()
			if prefetch {
				sr.prefetch(ctx, used)
				if len(sr.read) != len(used) {
					t.Errorf("prefetched %d sets, want %d", len(sr.read), len(used))
				}
			}
			for _, name := range names {
				out[name] = string(sr.digest(ctx, name))
			}
			if len(sr.read) != 0 {
				t.Errorf("prefetched reads not taken: %v", sortedKeys(sr.read))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	one, both := digests(false), digests(true)
	for _, name := range names {
		if one[name] != both[name] {
			t.Errorf("%s: the prefetched digest differs from the one read alone", name)
		}
	}
	if one["moat-a4"] == one["moat-missing"] || one["moat-b6"] == one["moat-missing"] {
		t.Fatal("a set of the namespace reads as missing")
	}
	// A member swapped by hand, the count kept.
	restore("del moat-b6 2001:db8:7::/64\nadd moat-b6 2001:db8:ffff::/64\n")
	if d := digests(true); d["moat-b6"] == both["moat-b6"] || d["moat-a4"] != both["moat-a4"] {
		t.Error("a member swapped by hand: not seen in the prefetched digest, or seen in the wrong set")
	}
}

// runIpset waits for the transactions' sockets only when ipset may
// destroy or rename a set: the scripts and arguments moat gives it for
// bans, reads and members added do not wait. Fails if a destroy or
// rename (in any of ipset's spellings, anywhere in a restore script) is
// taken for one that does not free a set, or a ban for one that does.
func TestMayFreeSets(t *testing.T) {
	for _, c := range []struct {
		stdin string
		args  []string
		want  bool
	}{
		{"", []string{"destroy", "moat-x"}, true},
		{"", []string{"rename", "a", "b"}, true},
		{"", []string{"-X", "a"}, true},
		{"create a hash:net\nadd a 192.0.2.1\nswap a b\ndestroy a\n", []string{"restore"}, true},
		{"add a 192.0.2.1 -exist\n  destroy a\r\n", []string{"-exist", "restore"}, true},
		{"x a\n", []string{"restore"}, true},
		{"create t hash:net\nswap t a\n", []string{"restore"}, true},
		{"", []string{"swap", "a", "b"}, true},
		{"e a b", []string{"restore"}, true},
		{"add moat-ban4 192.0.2.1 timeout 3600 comment \"destroy x\" -exist\n", []string{"restore"}, false},
		{"del moat-ban4 192.0.2.1 -exist\n", []string{"restore"}, false},
		{"", []string{"test", "moat-ban4", "192.0.2.1"}, false},
		{"", []string{"save", "moat-ban6"}, false},
		{"", []string{"list", "-n"}, false},
	} {
		if got := mayFreeSets([]byte(c.stdin), c.args); got != c.want {
			t.Errorf("mayFreeSets(%q, %q) = %v, want %v", c.stdin, c.args, got, c.want)
		}
	}
}
