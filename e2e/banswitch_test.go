package e2e

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Two processes at once: the guard bans while 'moat enable' moves moat's
// rules from one backend to the other and back, three times (ending in the other one). Every
// address the guard banned is banned, in the end, in the backend that
// holds moat's rules. Before, the guard kept banning into the backend it
// found at its start: a ban made in the instant of a switch was lost with
// the old backend's sets, and every ban after the first switch failed.
// The guard's bans now wait for a switch's read-to-removal (the bans
// lock) and follow moat's rules to the other backend.
func TestGuardBansAcrossBackendSwitches(t *testing.T) {
	requireBackend(t, "nftables")
	requireBackend(t, "iptables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	logFile := e.newFile("auth.log", "")
	policy := "default deny incoming\nallow 22/tcp\nguard sshd maxretry 1 findtime 10m bantime 1h\n"
	writeFile(t, e.conf, "backend nftables\n"+policy)
	if out, err := e.moatPlain("enable"); err != nil {
		t.Fatalf("enable: %v\n%s", err, out)
	}
	e.startGuard("--log-file", logFile)

	var mu sync.Mutex
	var written []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(15 * time.Millisecond):
			}
			a := fmt.Sprintf("203.0.113.%d", i%250+1)
			if i > 250 {
				a = fmt.Sprintf("2001:db8::%x", i)
			}
			f, err := os.OpenFile(logFile, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Error(err)
				return
			}
			_, err = fmt.Fprintf(f, "Nov 25 11:40:01 srv sshd[%d]: Failed password for root from %s port 4242 ssh2\n", 1000+i, a)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			written = append(written, a)
			mu.Unlock()
		}
	}()
	backends := []string{"iptables", "nftables", "iptables"}
	for _, b := range backends {
		writeFile(t, e.conf, "backend "+b+"\n"+policy)
		if out, err := e.moatPlain("enable"); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("enable (%s): %v\n%s", b, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	mu.Lock()
	want := append([]string(nil), written...)
	mu.Unlock()
	if len(want) < 10 {
		t.Fatalf("only %d failures written during the switches", len(want))
	}
	var missing []string
	waitFor(t, 20*time.Second, "every address the guard saw fail is banned", func() bool {
		bans := e.bans()
		missing = missing[:0]
		for _, a := range want {
			if _, ok := bans[a]; !ok {
				missing = append(missing, a)
			}
		}
		return len(missing) == 0
	})
	if len(missing) > 0 {
		t.Errorf("%d of %d not banned: %s", len(missing), len(want), strings.Join(missing[:min(len(missing), 10)], " "))
	}
}
