package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStatusProfileGone: a profile that the applied policy (and the file)
// names is removed. status panicked (nothing parsed: the file names an
// unknown profile, and what was applied was read with today's profiles);
// it now shows what was applied with the profiles of then, says that the
// profiles changed and the file's error, on both backends; explain
// evaluates that too (it failed on the file's error).
func TestStatusProfileGone(t *testing.T) {
	apps := t.TempDir()
	profile := filepath.Join(apps, "test")
	// Not parallel: the moat processes the tests start read this.
	t.Setenv("MOAT_APPS_DIRS", apps)
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			requireBackend(t, b)
			writeFile(t, profile, "[OpenSSH]\ntitle=Secure shell server\nports=22/tcp\n")
			e := newEnv(t, b, false)
			e.apply("default deny incoming\nallow OpenSSH\nallow 80/tcp\n")
			writeFile(t, profile, "[Other]\nports=2222/tcp\n")
			for _, mode := range [][]string{{"status"}, {"status", "verbose"}, {"status", "numbered"}} {
				out, err := e.moat(mode...)
				if strings.Contains(out, "panic") || !strings.Contains(out, "Status: active") || !strings.Contains(out, "OpenSSH") {
					t.Errorf("%v with the profile gone: %v\n%s", mode, err, out)
				}
			}
			out, err := e.moat("status", "--json")
			var st struct {
				FileError   string `json:"file_error"`
				AppsChanged bool   `json:"apps_changed"`
				Rules       []struct {
					ToApp string `json:"to_app"`
				} `json:"rules"`
			}
			if jerr := json.Unmarshal([]byte(out), &st); jerr != nil || !strings.Contains(st.FileError, "OpenSSH") ||
				len(st.Rules) != 2 || st.Rules[0].ToApp != "OpenSSH" {
				t.Errorf("status --json with the profile gone: %v %v %+v\n%s", err, jerr, st, out)
			}
			e.expect(false, "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:80 open")
			// explain evaluates what is applied, as the kernel does (it
			// failed on the file's error).
			if ex, err := e.moat("explain", "in", "tcp", "to", "port", "22"); err != nil || !strings.HasPrefix(ex, "ACCEPT\n") ||
				!strings.Contains(ex, "application profiles changed") {
				t.Errorf("explain with the profile gone: %v\n%s", err, ex)
			}
			// Without the profiles of then (nothing saved for boot),
			// what was applied is not known: said, no empty table.
			if err := os.Remove(filepath.Join(e.stateDir(), "saved.json")); err != nil {
				t.Fatal(err)
			}
			out, err = e.moat("status", "verbose")
			if err != nil || !strings.Contains(out, "What moat applied is not known") || strings.Contains(out, "Default:  (incoming)") {
				t.Errorf("status verbose, nothing known: %v\n%s", err, out)
			}
		})
	}
}
