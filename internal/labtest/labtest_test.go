package labtest

import (
	"context"
	"os"
	"strings"
	"testing"
)

// Programs run by Runner see the namespace's interfaces, not the host's;
// the namespace is gone once the test ends.
func TestRunnerRunsInside(t *testing.T) {
	var name string
	t.Run("ns", func(t *testing.T) {
		ns := NS(t, "moatlt")
		name = ns.Name
		out, err := Runner(ns)(context.Background(), nil, "ip", "-o", "link", "show")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 || !strings.Contains(lines[0], ": lo:") {
			t.Fatalf("a new namespace has only lo; ip link shows:\n%s", out)
		}
		out, err = Runner(ns)(context.Background(), []byte("hello"), "cat")
		if err != nil || string(out) != "hello" {
			t.Fatalf("stdin: %q %v", out, err)
		}
	})
	if name == "" {
		t.Skip("not root")
	}
	if _, err := os.Stat("/run/netns/" + name); !os.IsNotExist(err) {
		t.Errorf("namespace %s left behind: %v", name, err)
	}
}
