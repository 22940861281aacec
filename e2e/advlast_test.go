package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/blocklist"
)

// The kernel's sets after 'moat blocklist update' equal those of a fresh
// 'moat reload' of the same list, through lists that look plain but are
// not, unsorted and overlapping entries, a v4-only list turned v6-only,
// and an empty one; a newly listed address is dropped at once.
func TestAdvLastUpdateSameAsReload(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		list := e.newFile("l.netset", "192.0.2.3\n")
		e.apply(fmt.Sprintf("default deny incoming\nallow 22/tcp\nblocklist l file %s\n", list))
		sets := func() string { return e.blocklistSets("l") }
		steps := []struct{ content, dropped, open string }{
			{"198.51.100.0/25\r\n192.0.2.8/29 \t; x\n198.51.100.128/25\n192.0.2.8/30\n192.0.2.6\n::ffff:192.0.2.4\n", "client/192.0.2.4 tcp 192.0.2.1:22", "client/192.0.2.3 tcp 192.0.2.1:22"},
			{"2001:db8::3\n2001:db8::/127\n2001:db8:1::/48\n", "client/2001:db8::3 tcp [2001:db8::1]:22", "client/192.0.2.4 tcp 192.0.2.1:22"},
			{"", "", "client/2001:db8::3 tcp [2001:db8::1]:22"},
			{"192.0.2.3/32\n192.0.2.3\n2001:db8::3/128\n2001:db8::3\n", "client/192.0.2.3 tcp 192.0.2.1:22", "client tcp 192.0.2.1:22"},
		}
		for i, s := range steps {
			writeFile(t, list, s.content)
			if out, err := e.moat("blocklist", "update"); err != nil {
				t.Fatalf("step %d: update: %v\n%s", i, err, out)
			}
			var probes []string
			if s.dropped != "" {
				probes = append(probes, s.dropped+" timeout")
			}
			probes = append(probes, s.open+" open")
			e.expect(false, probes...)
			got := sets()
			e.mustMoat("reload")
			if want := sets(); got != want {
				t.Errorf("step %d: sets after update:\n%s\nafter reload:\n%s", i, got, want)
			}
			if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") {
				t.Errorf("step %d: status sees drift:\n%s", i, st)
			}
		}
		// The saved copy edited on disk (one byte, same size), then
		// replaced by a symlink: the update does not trust it, and the
		// kernel ends as a reload of the list leaves it.
		saved := filepath.Join(e.stateDir(), blocklist.Dir, "l.list")
		writeFile(t, list, "192.0.2.4\n2001:db8::4\n")
		for i, tamper := range []func(){
			func() {
				data, err := os.ReadFile(saved)
				if err != nil {
					t.Fatal(err)
				}
				data[len(data)-2] = '3' // 2001:db8::3
				writeFile(t, saved, string(data))
			},
			func() {
				other := e.newFile("other.list", "# moat blocklist l: 0 networks, merged\n")
				if err := os.Remove(saved); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(other, saved); err != nil {
					t.Fatal(err)
				}
			},
		} {
			e.mustMoat("blocklist", "update")
			tamper()
			out, err := e.moat("blocklist", "update")
			t.Logf("tamper %d: %v\n%s", i, err, out)
			e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:22 timeout", "client/2001:db8::4 tcp [2001:db8::1]:22 timeout", "client/2001:db8::3 tcp [2001:db8::1]:22 open")
			got := sets()
			e.mustMoat("reload")
			if want := sets(); got != want {
				t.Errorf("tamper %d: sets after update:\n%s\nafter reload:\n%s", i, got, want)
			}
		}
	})
}
