package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestKillTheRepairToo is the same fault twice on a real kernel: a rule
// edit is killed at a random moment, then the next edit, whose first step
// undoes (or finishes) what the first left, is killed too. A third
// command finds the kernel, the policy file and the records agreeing:
// status sees no drift, nothing interrupted and no change of the file
// left unapplied, each edit's rule is in the file exactly when the
// kernel holds it, and real packets prove the rules filter. Both
// backends; the edits go over netlink (nftables' encoder) or through
// iptables-restore.
func TestKillTheRepairToo(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			requireBackend(t, backend)
			e := newEnv(t, backend, false)
			e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
			took, rng := e.timedMoat(77, "allow", "6000/tcp")
			e.mustMoat("delete", "allow", "6000/tcp")
			counts := map[string]int{}
			for k := 0; k < 8; k++ {
				port := strconv.Itoa(20000 + k)
				src := fmt.Sprintf("203.0.113.%d", 10+k)
				first := e.killMoatAfter(time.Duration(rng.Int64N(int64(took))), "allow", port+"/tcp")
				second := e.killMoatAfter(time.Duration(rng.Int64N(int64(took))), "deny", "from", src)
				counts[fmt.Sprintf("first exited %v, second exited %v", first, second)]++
				e.mustMoat("reload")
				st := e.mustMoat("status")
				for _, bad := range []string{"changed outside moat", "INTERRUPTED", "not applied", "DAMAGED"} {
					if strings.Contains(st, bad) {
						t.Fatalf("round %d: status after two kills and a reload says %q:\n%s", k, bad, st)
					}
				}
				data, err := os.ReadFile(e.conf)
				if err != nil {
					t.Fatal(err)
				}
				file := "\n" + string(data)
				for _, r := range []struct{ line, shown string }{
					{"allow " + port + "/tcp", port + "/tcp "},
					{"deny from " + src, src + " "},
				} {
					inFile, inKernel := strings.Contains(file, "\n"+r.line+"\n"), strings.Contains(st, r.shown)
					if inFile != inKernel {
						t.Fatalf("round %d: %q in the policy file %v, applied %v:\n%s\n%s", k, r.line, inFile, inKernel, data, st)
					}
				}
			}
			t.Logf("%s: %v (an edit took %v)", backend, counts, took)
			e.mustMoat("allow", "443/tcp")
			e.expect(false,
				"client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:443 open",
				"client tcp 192.0.2.1:8080 timeout", "client tcp [2001:db8::1]:443 open", "client tcp [2001:db8::1]:8080 timeout")
		})
	}
}
