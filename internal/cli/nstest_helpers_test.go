package cli

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"testing"

	"github.com/moat-fw/moat/internal/ruleset"
)

// needRootAnd skips a test that makes a network namespace unless it runs
// as root and every one of progs is installed.
func needRootAnd(t *testing.T, progs ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	for _, prog := range progs {
		if _, err := exec.LookPath(prog); err != nil {
			t.Skip("no " + prog)
		}
	}
}

// quietApp is an app on the state folder dir that logs nowhere, and the
// ruleset of the policy text it parses as the applied one.
func quietApp(t *testing.T, dir, text string) (*app, *ruleset.Ruleset) {
	t.Helper()
	a := &app{stateDir: dir, config: "moat.conf", out: io.Discard, errOut: io.Discard, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	p, err := a.parseApplied(text)
	if err != nil {
		t.Fatal(err)
	}
	return a, ruleset.Compile(p)
}
