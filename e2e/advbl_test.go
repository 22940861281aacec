package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// A 'moat blocklist update' fetches its lists before it takes the
// engine's lock. A reload in that time that takes the list from another
// source (here a file instead of the URL) must win: the update must not
// load the old URL's networks under the list's name. It fails, saying
// why, the kernel keeps the reload's list (real packets, IPv4 and IPv6),
// and the next update loads the new source. Both backends.
func TestAdvBlocklistSourceChangedDuringFetch(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		ls := e.startListServer()
		ls.set("/drop.txt", "192.0.2.3\n2001:db8::3\n", 0)
		file := filepath.Join(e.dir, "b.netset")
		writeFile(t, file, "192.0.2.4\n2001:db8::4\n")
		e.apply(fmt.Sprintf("default deny incoming\nallow 80/tcp\nblocklist drop url %s refresh 1h\n", ls.url("/drop.txt")))

		arrived, release := make(chan struct{}), make(chan struct{})
		ls.mu.Lock()
		ls.gate = func() { arrived <- struct{}{}; <-release }
		ls.mu.Unlock()
		type res struct {
			out string
			err error
		}
		done := make(chan res, 1)
		go func() {
			out, err := e.moatTLS(ls, "blocklist", "update")
			done <- res{out, err}
		}()
		<-arrived
		e.apply("default deny incoming\nallow 80/tcp\nblocklist drop file " + file + "\n")
		ls.mu.Lock()
		ls.gate = nil
		ls.mu.Unlock()
		close(release)
		r := <-done
		if exitCode(r.err) != 1 || !strings.Contains(r.out, "run 'moat blocklist update' again") {
			t.Errorf("the update of the old source: exit %d, want 1 saying to run it again:\n%s", exitCode(r.err), r.out)
		}
		drops := []string{
			"client/192.0.2.3 tcp 192.0.2.1:80 open",
			"client/2001:db8::3 tcp [2001:db8::1]:80 open",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout",
			"client/2001:db8::4 tcp [2001:db8::1]:80 timeout",
		}
		e.expect(false, drops...)
		if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") {
			t.Errorf("status sees drift:\n%s", st)
		}
		if out, err := e.moatTLS(ls, "blocklist", "update"); err != nil {
			t.Fatalf("the next update: %v\n%s", err, out)
		}
		e.expect(false, drops...)
		e.mustMoat("reload")
		e.expect(false, drops...)
	})
}
