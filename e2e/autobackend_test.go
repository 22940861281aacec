package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
)

// A first enable with backend auto goes through the backend moat
// configures for an explicit name: it writes the records of the sets'
// elements (nft-set.*) that the next commands send their differences
// against. The detected backend was a fresh one without them, so the
// enable wrote none. The server's namespace has no legacy iptables
// tables: auto picks nftables.
func TestAutoBackendFirstEnableRecords(t *testing.T) {
	e := onBackend(t, "nftables")
	writeFile(t, e.conf, "backend auto\ndefault deny incoming\nallow 22/tcp\ndeny from 198.51.100.0/24\ndeny from 203.0.113.0/24\n")
	out, err := e.topo.Server.Run(context.Background(), moatBin, "--config", e.conf, "--state-dir", e.stateDir(), "enable")
	if err != nil {
		t.Fatalf("moat enable with backend auto: %v\n%s", err, out)
	}
	e.expect(false, "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:80 timeout")
	entries, err := os.ReadDir(e.stateDir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	records := 0
	for _, en := range entries {
		names = append(names, en.Name())
		if strings.HasPrefix(en.Name(), "nft-set.") {
			records++
		}
	}
	if records == 0 {
		t.Errorf("a first enable with backend auto wrote no set element records; the state directory holds %q", names)
	}
	if st := e.truth(); !st.InSync {
		t.Errorf("status after the enable: %+v", st)
	}
}
