package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// A large policy (50,000 rules, 1.3 MB) is kept in a text file of the
// state directory that the records name, not inside them: edits, status,
// and the restore at boot (a fresh namespace, the same state directory)
// read it back whole, on both backends.
func TestLargePolicyState(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply(bigPolicy(0, ""))
		e.mustMoat("allow", "80/tcp")
		e.mustMoat("delete", "deny", "from", listSource(1, 0))
		want := e.mustMoat("show")
		kernel := e.kernelState()
		for _, f := range []string{"applied.json", "saved.json"} {
			data, err := os.ReadFile(filepath.Join(e.stateDir(), f))
			if err != nil {
				t.Fatal(err)
			}
			if len(data) > 64<<10 || !strings.Contains(string(data), `"policy_file": "policy.`) {
				t.Errorf("%s holds the policy or names no text file (%d bytes)", f, len(data))
			}
		}
		texts, _ := filepath.Glob(filepath.Join(e.stateDir(), "policy.*"))
		if len(texts) != 1 {
			t.Errorf("text files: %q, want the applied policy's alone", texts)
		}
		if st := e.mustMoat("status"); strings.Contains(st, "not applied") || strings.Contains(st, "changed") {
			t.Errorf("status after the edits:\n%s", st)
		}

		fresh := newEnv(t, b, false)
		fresh.conf = e.conf
		fresh.dir = e.dir
		if out := fresh.mustMoat("restore"); !strings.Contains(out, "Restored the saved ruleset") {
			t.Errorf("restore: %s", out)
		}
		// A hash set's size depends on when its buckets overflowed while
		// it was filled, which its random seed decides: 25,000 networks
		// may end in a set of 4096 or of 8192 buckets.
		hashsize := regexp.MustCompile(` hashsize [0-9]+`)
		kernel = hashsize.ReplaceAllString(kernel, "")
		if got := hashsize.ReplaceAllString(fresh.kernelState(), ""); got != kernel {
			t.Errorf("restored rules differ from the saved ones:\n%s", lineDiff(kernel, got))
		}
		if got := fresh.mustMoat("show"); got != want {
			t.Errorf("moat show differs after restore")
		}
		fresh.expect(false, "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:443 timeout")
	})
}
