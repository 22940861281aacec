// Package labtest gives tests a network namespace of their own and a
// runner of programs inside it (for the backends' kernel tests).
package labtest

import (
	"context"
	"os"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/lab"
)

// NS makes a network namespace with a unique name starting with prefix,
// removed when the test ends. Without root the test is skipped.
func NS(t testing.TB, prefix string) *lab.NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	ns, err := lab.NewNS(lab.UniqueName(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	return ns
}

// Runner runs programs inside ns.
func Runner(ns *lab.NS) execrun.Runner {
	return func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		var out []byte
		err := ns.Do(func() error {
			var err error
			out, err = execrun.Exec(ctx, stdin, name, args...)
			return err
		})
		return out, err
	}
}
