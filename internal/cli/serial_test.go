package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/gctune"
)

// An edit of a small policy stays on the one processor main's
// gctune.StartSerial left it; an edit of a large policy or of one that
// names a blocklist, and every other command (here enable and reload), get the processors back
// before they work. Whatever the processors, the edit is applied.
func TestEditSerialOnlyWhenSmall(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS set: StartSerial leaves the scheduler alone")
	}
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: StartSerial has nothing to take")
	}
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { gctune.Parallel(); runtime.GOMAXPROCS(before) })
	var big strings.Builder
	big.WriteString("default deny incoming\nallow 22/tcp\n")
	for i := 0; big.Len() <= serialPolicyBytes; i++ {
		fmt.Fprintf(&big, "deny from 198.51.%d.%d\n", i/250%250, i%250+1)
	}
	list := filepath.Join(t.TempDir(), "list")
	if err := os.WriteFile(list, []byte("203.0.113.0/24\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	enable := []string{"enable", "--force"}
	for _, c := range []struct {
		name, policy string
		setup, args  []string
		serial       bool
	}{
		{"small edit", "default deny incoming\nallow 22/tcp\n", nil, []string{"allow", "8080/tcp"}, true},
		{"small delete", "default deny incoming\nallow 22/tcp\nallow 8080/tcp\n", enable, []string{"delete", "allow", "8080/tcp"}, true},
		{"small default", "default deny incoming\nallow 22/tcp\n", enable, []string{"default", "reject"}, true},
		{"large edit", big.String(), enable, []string{"allow", "8080/tcp"}, false},
		{"blocklist", "default deny incoming\nallow 22/tcp\nblocklist bad file " + list + "\n", enable, []string{"allow", "8080/tcp"}, false},
		// The parser takes its keywords in any case, and quoted.
		{"BLOCKLIST", "default deny incoming\nallow 22/tcp\n  BlockList bad file " + list + "\n", enable, []string{"allow", "8080/tcp"}, false},
		{"quoted blocklist", "default deny incoming\nallow 22/tcp\n'blocklist' bad file " + list + "\n", enable, []string{"allow", "8080/tcp"}, false},
		{"reload", "default deny incoming\nallow 22/tcp\n", enable, []string{"reload"}, false},
		{"enable", "default deny incoming\nallow 22/tcp\n", nil, []string{"enable", "--force"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := t.TempDir()
			conf := filepath.Join(d, "moat.conf")
			if err := os.WriteFile(conf, []byte(c.policy), 0o644); err != nil {
				t.Fatal(err)
			}
			fake := engine.NewFake("nftables")
			var procs int
			hook := func(o *engine.Options) {
				o.Backends = []engine.Backend{fake}
				o.Detect = func() engine.Backend { return fake }
				o.FindSSH = nil
				// The engine is made once the command runs: what the
				// command has by then is what it works with.
				procs = runtime.GOMAXPROCS(0)
			}
			moat := func(args []string) (int, string) {
				var out bytes.Buffer
				code := run(context.Background(), append([]string{"--config", conf, "--state-dir", filepath.Join(d, "state"), "--backend", "nftables"}, args...), &out, &out, hook)
				return code, out.String()
			}
			if c.setup != nil {
				if code, out := moat(c.setup); code != 0 {
					t.Fatalf("moat %v: exit %d\n%s", c.setup, code, out)
				}
			}
			procs = 0
			gctune.StartSerial()
			code, out := moat(c.args)
			if code != 0 {
				t.Fatalf("moat %v: exit %d\n%s", c.args, code, out)
			}
			if procs == 0 {
				t.Fatalf("moat %v made no engine", c.args)
			}
			if got := procs == 1; got != c.serial {
				t.Errorf("moat %v ran on %d processors, want serial %v", c.args, procs, c.serial)
			}
			gctune.Parallel()
		})
	}
}
