package importer

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/termtext"
)

// TestImportUFWHostileComment: a ufw comment is anyone's text (ufw keeps it
// hex-encoded). What the import makes of it is a line moat's parser takes,
// so the rule is kept: no C1 control (an 8-bit CSI), no bidirectional
// override, no more bytes than a comment may have.
func TestImportUFWHostileComment(t *testing.T) {
	for name, c := range map[string]string{
		"c1":   "ssh\u009b2Jfrom office",
		"bidi": "ssh \u202egnp.exe",
		"long": strings.Repeat("é", 80),
	} {
		dir := t.TempDir()
		rules := "*filter\n### RULES ###\n\n### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in comment=" +
			hex.EncodeToString([]byte(c)) + "\n-A ufw-user-input -p tcp --dport 22 -j ACCEPT\n\n### END RULES ###\nCOMMIT\n"
		if err := os.WriteFile(filepath.Join(dir, "user.rules"), []byte(rules), 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := ImportUFW(UFWSource{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Lines) != 1 {
			t.Fatalf("%s: lines %q, want the one rule", name, res.Lines)
		}
		if _, _, err := policy.ParseLine(res.Lines[0], policy.Pos{}, nil); err != nil {
			t.Errorf("%s: moat refuses the imported line %q: %v", name, res.Lines[0], err)
		}
		if !strings.Contains(strings.Join(res.Notes, "\n"), "the comment lost characters") {
			t.Errorf("%s: no note that the comment changed: %q", name, res.Notes)
		}
	}
}

// TestImportUFWHostileField: a tuple field with a control character (an
// escape sequence in a port or an interface name) is not imported, and the
// note does not carry it raw: notes and refused lines go to the terminal
// and into the policy file as '# NOTE:' lines.
func TestImportUFWHostileField(t *testing.T) {
	dir := t.TempDir()
	rules := "*filter\n### RULES ###\n\n### tuple ### allow tcp 22\x1b]0;owned\x07 0.0.0.0/0 any 0.0.0.0/0 in_eth0\u202e\n" +
		"### tuple ### allow tcp 443 0.0.0.0/0 any 0.0.0.0/0 in\n### END RULES ###\nCOMMIT\n"
	if err := os.WriteFile(filepath.Join(dir, "user.rules"), []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := ImportUFW(UFWSource{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Lines) != 1 || !strings.Contains(res.Lines[0], "443") {
		t.Errorf("lines %q, want only the 443 rule", res.Lines)
	}
	notes := strings.Join(res.Notes, "\n")
	if !strings.Contains(notes, "user.rules:4: not imported") {
		t.Errorf("no note on the hostile tuple: %q", notes)
	}
	for _, l := range append(res.Lines, res.Notes...) {
		if strings.ContainsAny(l, "\x1b\x07\u202e") {
			t.Errorf("raw control characters reach the output: %q", l)
		}
	}
}

// TestImportFail2banHostileValues: fail2ban's values are quoted in the
// notes, which go to the terminal and into the policy file as '# NOTE:'
// lines: control characters in them (an escape sequence, a carriage
// return) never get there raw. A tab still separates list items.
func TestImportFail2banHostileValues(t *testing.T) {
	dir := t.TempDir()
	jail := "[sshd]\nenabled = true\nmaxretry = 3\x1b]0;owned\x07\nbantime = 1h\r\x1b[2J\nignoreip = 192.0.2.1\t198.51.100.0/24\u202e\n"
	if err := os.WriteFile(filepath.Join(dir, "jail.local"), []byte(jail), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := ImportFail2ban(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range append(res.Lines, res.Notes...) {
		if l != termtext.Printable(l) {
			t.Errorf("raw control characters reach the output: %q", l)
		}
	}
	if !strings.Contains(strings.Join(res.Lines, "\n"), "allowlist 192.0.2.1 198.51.100.0/24") {
		t.Errorf("the allowlist is lost: %q", res.Lines)
	}
}

// TestImportUFWHostileConf: ufw.conf's LOGLEVEL and /etc/default/ufw's
// values that are not imported are named in the notes, which go to the
// terminal and into the policy file as '# NOTE:' lines: quoted (no raw
// escape sequence, carriage return or bidi override) and cut, so that the
// file written still parses (a policy line is at most 4096 bytes).
func TestImportUFWHostileConf(t *testing.T) {
	for name, v := range map[string]string{
		"escape": "\x1b]0;owned\x07low",
		"cr":     "bogus\rallow 22/tcp",
		"bidi":   "low\u202e",
		"long":   strings.Repeat("x", 5000),
	} {
		dir := t.TempDir()
		rules := "*filter\n### RULES ###\n\n### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\n### END RULES ###\nCOMMIT\n"
		if err := os.WriteFile(filepath.Join(dir, "user.rules"), []byte(rules), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "ufw.conf"), []byte("ENABLED=no\nLOGLEVEL="+v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		defs := filepath.Join(dir, "default-ufw")
		if err := os.WriteFile(defs, []byte("DEFAULT_APPLICATION_POLICY=\""+v+"\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := ImportUFW(UFWSource{Dir: dir, Defaults: defs})
		if err != nil {
			t.Fatal(err)
		}
		text := res.Text("ufw")
		if !strings.Contains(text, "LOGLEVEL=") || !strings.Contains(text, "DEFAULT_APPLICATION_POLICY=") {
			t.Errorf("%s: no note names the values:\n%s", name, text)
		}
		if strings.ContainsAny(text, "\x1b\x07\r\u202e") {
			t.Errorf("%s: raw control characters reach the output: %q", name, text)
		}
		if _, err := policy.NewDocument("moat.conf", []byte(text)).Policy(nil); err != nil {
			t.Errorf("%s: the imported policy does not parse: %v", name, err)
		}
	}
}
