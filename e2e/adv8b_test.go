package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// A reload on nftables while another program commits without pause
// (each commit moves the generation, and a dump of a blocklist's set
// that a commit lands in is read again, then given up): that moat could
// not compare its rules is said once a command, not once for each run
// of its check (the generations it names differ from run to run).
func TestUnverifiedSaidOnceDuringChurn(t *testing.T) {
	e := newEnv(t, "nftables", false)
	list := filepath.Join(e.dir, "big.netset")
	bigList(t, list, 20_000)
	e.apply(fmt.Sprintf("default deny incoming\nallow 22/tcp\nblocklist big file %s\n", list))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	repeatUntil(&wg, stop, func() bool {
		_, err := e.ns("server").Run(context.Background(), "nft", "add table inet churn; delete table inet churn")
		return err == nil
	})
	defer func() { close(stop); wg.Wait() }()
	for i := range 3 {
		out, err := e.moat("reload")
		if err != nil && !strings.Contains(out, "again and again") {
			t.Fatalf("reload %d during the churn: %v\n%s", i, err, out)
		}
		// Refused after its tries (the apply's generation check, against
		// a commit every few milliseconds) is said as such, nothing
		// changed: not what this test is about.
		if n := strings.Count(out, "could not be compared"); n > 1 {
			t.Errorf("reload %d: 'could not be compared' said %d times:\n%s", i, n, out)
		}
	}
}
