package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/moat-fw/moat/internal/blocklist"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/termtext"
)

// hostileTexts are what an attacker writes into a field moat prints (a
// user name or banner in the journal, a blocklist's comment or ETag, a
// rule's comment read back from the kernel, a process name): ESC and C1
// escape sequences (U+009B is a CSI without ESC), bidi overrides and
// isolates, DEL, NUL, CR, invalid UTF-8, HTML and a very long string.
var hostileTexts = []string{
	"\x1b]0;owned\x07\x1b[2J",
	"x\u009b2J\u0085y\u009d0;t\u009c",
	"evil\u202egnp.exe\u2066x\u2069\u200f\u061c",
	"del\x7f nul\x00 cr\r lf\n tab\t",
	"bad \xff\xfe\x9b utf8 \xc2",
	"<b>&\u2028</b>",
	strings.Repeat("\u009b31m\u202e\x1b[1m", 3000),
}

// fillHostile sets every exported string of v (struct fields, slice
// and map elements, map keys, through pointers) to a hostile text.
func fillHostile(v reflect.Value, n *int, depth int) {
	if depth > 6 {
		return
	}
	next := func() string { *n++; return hostileTexts[*n%len(hostileTexts)] }
	switch v.Kind() {
	case reflect.String:
		if v.CanSet() {
			v.SetString(next())
		}
	case reflect.Pointer:
		if v.IsNil() && v.CanSet() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		if !v.IsNil() {
			fillHostile(v.Elem(), n, depth+1)
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				fillHostile(v.Field(i), n, depth+1)
			}
		}
	case reflect.Slice:
		if v.CanSet() {
			s := reflect.MakeSlice(v.Type(), 2, 2)
			for i := 0; i < 2; i++ {
				fillHostile(s.Index(i), n, depth+1)
			}
			v.Set(s)
		}
	case reflect.Map:
		if v.CanSet() && v.Type().Key().Kind() == reflect.String {
			m := reflect.MakeMap(v.Type())
			for i := 0; i < 2; i++ {
				k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
				k.SetString(next())
				fillHostile(e, n, depth+1)
				m.SetMapIndex(k, e)
			}
			v.Set(m)
		}
	case reflect.Interface:
		if v.CanSet() && v.NumMethod() == 0 {
			v.Set(reflect.ValueOf(next()))
		}
	}
}

func hostileValue[T any]() *T {
	var v T
	n := 0
	fillHostile(reflect.ValueOf(&v).Elem(), &n, 0)
	return &v
}

// terminalSafe fails when out holds a character a terminal takes as a
// control (but a line feed), or invalid UTF-8.
func terminalSafe(t *testing.T, what string, out []byte) {
	t.Helper()
	if !utf8.Valid(out) {
		t.Errorf("%s: invalid UTF-8 printed", what)
	}
	for _, r := range string(out) {
		if r != '\n' && termtext.Dropped(r) {
			t.Errorf("%s: %U printed as it is: %.300q", what, r, out)
			return
		}
	}
}

// sameJSON fails when got does not read as the same values as
// encoding/json's encoding of v (a JSON reader sees no change).
func sameJSON(t *testing.T, what string, got []byte, v any) {
	t.Helper()
	want, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var w, g any
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: not JSON: %v\n%.300q", what, err, got)
	}
	if !reflect.DeepEqual(w, g) {
		t.Errorf("%s: a JSON reader reads other values:\n%.300q\n%.300q", what, want, got)
	}
}

// Every --json report, with a hostile text in each of its strings,
// reaches the terminal as no control character, and a JSON reader reads
// the same strings. encoding/json left DEL, C1 controls and bidi
// controls as they are.
func TestJSONReportsNoTerminalControls(t *testing.T) {
	status := hostileValue[statusReport]()
	noRules := hostileValue[statusReport]()
	noRules.Rules = nil
	for _, c := range []struct {
		cmd   string
		v     any
		write func(a *app) error // a.printJSON(v) when nil
		line  bool               // a.printJSONLine(v): one value a line
	}{
		{"status --json", status, func(a *app) error { return writeStatusJSON(a.out, status) }, false},
		{"status --json (no rules)", noRules, func(a *app) error { return writeStatusJSON(a.out, noRules) }, false},
		{"explain --json", hostileValue[explanation](), nil, false},
		{"audit --json", hostileValue[auditReport](), nil, false},
		{"blocklist list --json", hostileValue[[]blocklistInfo](), nil, false},
		{"blocklist update --json", hostileValue[[]*updateJSON](), nil, false},
		{"log --json", hostileValue[logSummary](), nil, false},
		{"log --follow --json", hostileValue[blockLine](), nil, true},
		{"guard check (line)", hostileValue[checkLine](), nil, true},
		{"guard check (summary)", hostileValue[map[string]checkSummary](), nil, true},
		{"rules --json", hostileValue[policy.RuleJSON](), nil, false},
		{"version --json", hostileValue[BuildInfo](), nil, false},
	} {
		t.Run(c.cmd, func(t *testing.T) {
			var out bytes.Buffer
			a := &app{out: &out}
			var err error
			switch {
			case c.write != nil:
				err = c.write(a)
			case c.line:
				err = a.printJSONLine(c.v)
			default:
				err = a.printJSON(c.v)
			}
			if err != nil {
				t.Fatal(err)
			}
			if out.Len() < 100 {
				t.Fatalf("no hostile text printed: %q", out.String())
			}
			terminalSafe(t, c.cmd, out.Bytes())
			sameJSON(t, c.cmd, out.Bytes(), c.v)
		})
	}
}

// runHostile runs moat's command line as main does, with a policy file
// and a state directory of the test's own.
func runHostile(t *testing.T, policyText string, setup func(stateDir string), args ...string) (stdout, stderr []byte, code int) {
	t.Helper()
	dir := t.TempDir()
	if setup != nil {
		setup(filepath.Join(dir, "state"))
	}
	conf := filepath.Join(dir, "moat.conf")
	if err := os.WriteFile(conf, []byte(policyText), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code = run(context.Background(), append([]string{"--config", conf, "--state-dir", filepath.Join(dir, "state")}, args...), &out, &errb, nil)
	return out.Bytes(), errb.Bytes(), code
}

// Commands reading text an attacker writes print it with no control to
// the terminal: 'moat guard check' (user names in sshd's lines and in
// journal entries), 'moat log' (a kernel log), and the error of a
// policy file holding such text.
func TestCommandsNoTerminalControls(t *testing.T) {
	dir := t.TempDir()
	var auth, kern strings.Builder
	for _, h := range hostileTexts {
		h1 := strings.NewReplacer("\n", " ", "\r", " ").Replace(h)
		auth.WriteString("sshd[42]: Failed password for invalid user " + h1 + " from 192.0.2.50 port 22 ssh2\n")
		auth.WriteString("Nov 26 09:00:00 host sshd[42]: Invalid user " + h1 + " from 198.51.100.7 port 22\n")
		auth.WriteString(h1 + "\n")
		kern.WriteString("kernel: [MOAT BLOCK] IN=" + h1 + " SRC=192.0.2.9 DST=198.51.100.1 PROTO=TCP DPT=22\n")
	}
	authLog, kernLog := filepath.Join(dir, "auth.log"), filepath.Join(dir, "kern.log")
	for f, s := range map[string]string{authLog: auth.String(), kernLog: kern.String()} {
		if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A list's record in the state directory (damaged, or written by
	// whoever got to write there) with hostile text in its last error.
	listFile := filepath.Join(dir, "bad.netset")
	listPolicy := "allow 22/tcp\nblocklist bad file " + listFile + "\n"
	hostileRecord := func(stateDir string) {
		m := blocklist.Meta{Name: "bad", Source: "file", Where: listFile, SHA256: "00", LastError: strings.Join(hostileTexts[:6], " | ")}
		if err := blocklist.WriteMeta(stateDir, m); err != nil {
			t.Fatal(err)
		}
	}
	badPolicy := "allow 22/tcp\nallow 80/tcp comment \"\x1b]0;owned\x07\u009b2J\u202egnp\x7f\"\n"
	for _, c := range []struct {
		name   string
		policy string
		setup  func(stateDir string)
		args   []string
		json   bool // stdout is JSON values
	}{
		{"guard check", "", nil, []string{"guard", "check", authLog}, true},
		{"log --json", "", nil, []string{"log", "--file", kernLog, "--json"}, true},
		{"log", "", nil, []string{"log", "--file", kernLog}, false},
		{"blocklist list", listPolicy, hostileRecord, []string{"blocklist", "list"}, false},
		{"blocklist list --json", listPolicy, hostileRecord, []string{"blocklist", "list", "--json"}, true},
		{"blocklist list --json (policy error)", badPolicy, nil, []string{"blocklist", "list", "--json"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runHostile(t, c.policy, c.setup, c.args...)
			terminalSafe(t, "stdout", out)
			terminalSafe(t, "stderr", bytes.ReplaceAll(errOut, []byte("\t"), nil))
			if len(out)+len(errOut) == 0 {
				t.Fatalf("nothing printed (exit %d)", code)
			}
			if c.json { // a stream of JSON values
				dec := json.NewDecoder(bytes.NewReader(out))
				for {
					var v any
					if err := dec.Decode(&v); err == io.EOF {
						break
					} else if err != nil {
						t.Fatalf("not JSON: %v\n%.300q", err, out)
					}
				}
			}
			if c.policy == listPolicy && !bytes.Contains(out, []byte("del")) {
				t.Errorf("the list's last error not shown:\n%s", out)
			}
			if c.policy == badPolicy && (code == 0 || !bytes.Contains(errOut, []byte("moat.conf:2"))) {
				t.Errorf("exit %d, the policy's error not said:\n%s", code, errOut)
			}
		})
	}
}
