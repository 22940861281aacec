package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
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
		{[]string{"check"}, false, ""}, {[]string{"show"}, false, "'moat show' has no JSON output"},
		{[]string{"enable"}, false, "has no JSON output"}, {[]string{"reload"}, false, "has no JSON output"},
		{[]string{"delete"}, false, "has no JSON output"}, {[]string{"ban"}, false, "has no JSON output"},
		{[]string{"route", "delete", "2"}, true, "'moat route delete' has no JSON output"},
		{[]string{"route", "insert", "1", "allow", "in", "on", "eth0"}, true, ""},
	} {
		cmd, rest, err := root.Find(c.args)
		if err != nil {
			t.Fatal(err)
		}
		a.json, a.dryRun = true, c.dryRun
		err = a.checkJSON(cmd, rest)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v --json (dry run %v): %v", c.args, c.dryRun, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v --json (dry run %v): %v, want %q", c.args, c.dryRun, err, c.want)
		}
	}
}

// TestCheckJSON: 'moat check --json' says whether the file is valid, and
// where it is not (file, line, column, message), with exit code 1; the
// covered rules are its warnings.
func TestCheckJSON(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "moat.conf")
	if err := os.WriteFile(conf, []byte("default deny incoming\nallow 99999/tcp\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runMoat(t, "--config", conf, "check", "--json")
	var got struct {
		Valid bool `json:"valid"`
		Error *struct {
			File    string `json:"file"`
			Line    int    `json:"line"`
			Column  int    `json:"column"`
			Message string `json:"message"`
		} `json:"error"`
		Rules    int      `json:"rules"`
		Warnings []string `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(out), &got); code != 1 || err != nil || got.Valid || got.Error == nil ||
		got.Error.File != conf || got.Error.Line != 2 || got.Error.Column != 7 || !strings.Contains(got.Error.Message, "bad port '99999'") {
		t.Errorf("check --json of a broken file: exit %d, %v\n%s", code, err, out)
	}
	p, err := policy.NewDocument(conf, []byte("allow 22/tcp\nlimit ssh\n")).Policy(policy.ParseServices([]byte("ssh 22/tcp\n")))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	a := &app{out: &buf, config: conf}
	if err := a.printCheckJSON(p, nil, ruleset.Shadowed(p), false); err != nil {
		t.Fatal(err)
	}
	got.Error, got.Warnings = nil, nil
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil || !got.Valid || got.Rules != 2 || got.Error != nil || len(got.Warnings) != 1 ||
		!strings.Contains(got.Warnings[0], "'limit ssh' never matches") {
		t.Errorf("check --json of a valid file with a dead rule: %v\n%s", err, buf.String())
	}
}
