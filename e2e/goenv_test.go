package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/moat-fw/moat/packaging"
)

// The Go runtime reads GOGC and GOMEMLIMIT before moat's first line runs.
// A GOGC it cannot read it takes as 100 without a word: moat says so and
// goes on. A GOMEMLIMIT it cannot read stops the program in the runtime's
// start (schedinit), before any of moat's code, with "fatal error:
// malformed GOMEMLIMIT" and exit 2: nothing in Go can catch it. The
// units that must not fail on it (the boot ruleset, the blocklist
// update) drop both from their environment; this test says if a Go
// release changes the runtime's behaviour.
func TestMalformedGoEnvironment(t *testing.T) {
	run := func(env ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(moatBin, "version")
		cmd.Env = append(os.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return stderr.String(), 0
		case errors.As(err, &ee):
			return stderr.String(), ee.ExitCode()
		}
		t.Fatal(err)
		return "", 0
	}
	out, code := run("GOGC=bogus", "GOMEMLIMIT=")
	if code != 0 || !strings.Contains(out, `moat: warning: GOGC="bogus" is not a whole number or "off"`) {
		t.Errorf("GOGC=bogus: exit %d, stderr:\n%s", code, out)
	}
	if out, code := run("GOGC=150", "GOMEMLIMIT=1GiB"); code != 0 || out != "" {
		t.Errorf("good GOGC and GOMEMLIMIT: exit %d, stderr:\n%s", code, out)
	}
	out, code = run("GOMEMLIMIT=bogus")
	if code != 2 || !strings.Contains(out, "malformed GOMEMLIMIT") {
		t.Errorf("GOMEMLIMIT=bogus: exit %d (the runtime used to stop with 2), stderr:\n%s", code, out)
	}
	for name, unit := range map[string]string{"moat.service": packaging.MoatService, "moat-blocklist.service": packaging.BlocklistService} {
		if !strings.Contains(unit, "\nUnsetEnvironment=GOMEMLIMIT GOGC\n") {
			t.Errorf("%s keeps GOMEMLIMIT from systemd's environment: a malformed one stops it before it runs", name)
		}
	}
}
