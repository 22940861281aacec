package drift

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// The scratch namespace is never made on the main thread: the runtime
// keeps a main thread whose goroutine ended locked (it cannot end it), and
// /proc/self/net is the main thread's namespace. moat read its socket
// table there, found no SSH session, and the lockout check let 'delete
// allow 22/tcp' through.
func TestScratchLeavesMainThreadAlone(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run this test as root")
		}
		t.Skip("needs root for network namespaces")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatal("nft is not installed")
	}
	p, err := policy.NewDocument("moat.conf", []byte("default deny incoming\nallow 22/tcp\n")).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	rs := ruleset.Compile(p)
	before, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 60 {
		if _, err := Loaded(context.Background(), "nftables", rs, nil); err != nil {
			t.Fatal(err)
		}
		if after, _ := os.Readlink("/proc/self/ns/net"); after != before {
			t.Fatalf("after %d scratch loads the main thread is in %s, not %s", i+1, after, before)
		}
	}
}
