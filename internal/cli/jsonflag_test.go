package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestJSONFlagRefused: --json on a command without JSON output is refused
// before anything runs (the script that asked for JSON would get text and
// exit code 0); every command that has it accepts it, and 'app info'
// has it now.
func TestJSONFlagRefused(t *testing.T) {
	apps := t.TempDir()
	if err := os.WriteFile(filepath.Join(apps, "samba"), []byte("[Samba]\ntitle=Samba\ndescription=files\nports=137,138/udp|139,445/tcp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MOAT_APPS_DIRS", apps)
	conf := filepath.Join(t.TempDir(), "moat.conf")
	out, code := runMoat(t, "--config", conf, "init", "--json")
	if code != 1 || !strings.Contains(out, "--json: 'moat init' has no JSON output (commands with --json: status,") {
		t.Errorf("init --json: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(conf); !os.IsNotExist(err) {
		t.Errorf("init --json wrote the policy file (%v)", err)
	}
	out, code = runMoat(t, "app", "info", "Samba", "--json")
	var infos []struct {
		Name  string   `json:"name"`
		Ports []string `json:"ports"`
	}
	if err := json.Unmarshal([]byte(out), &infos); code != 0 || err != nil || len(infos) != 1 || infos[0].Name != "Samba" ||
		strings.Join(infos[0].Ports, " ") != "137,138/udp 139,445/tcp" {
		t.Errorf("app info --json: exit %d, %v\n%s", code, err, out)
	}

	a := &app{}
	root := a.rootCommand()
	for _, c := range []struct {
		args   []string
		dryRun bool
		want   string // "" accepted
	}{
		{[]string{"status"}, false, ""}, {[]string{"bans"}, false, ""}, {[]string{"blocklist", "list"}, false, ""},
		{[]string{"explain"}, false, ""}, {[]string{"audit"}, false, ""}, {[]string{"app", "info"}, false, ""},
		{[]string{"allow"}, true, ""}, {[]string{"insert"}, true, ""},
		{[]string{"allow"}, false, "only with --dry-run"}, {[]string{"route"}, false, "only with --dry-run"},
		{[]string{"check"}, false, "'moat check' has no JSON output"}, {[]string{"show"}, false, "has no JSON output"},
		{[]string{"enable"}, false, "has no JSON output"}, {[]string{"reload"}, false, "has no JSON output"},
		{[]string{"delete"}, false, "has no JSON output"}, {[]string{"ban"}, false, "has no JSON output"},
	} {
		cmd, _, err := root.Find(c.args)
		if err != nil {
			t.Fatal(err)
		}
		a.json, a.dryRun = true, c.dryRun
		err = a.checkJSON(cmd)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v --json (dry run %v): %v", c.args, c.dryRun, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v --json (dry run %v): %v, want %q", c.args, c.dryRun, err, c.want)
		}
	}
}
