package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/audit"
	"github.com/moat-fw/moat/internal/foreign"
)

// A process name is any text its process chose: the table keeps its
// escape sequences and bidirectional controls off the terminal; JSON
// escapes them.
func TestAuditHostileProcessName(t *testing.T) {
	hostile := "evil\x1b]0;pwned\x07\x1b[2J\u202egnp.exe\r\n"
	rep := auditReport{Active: true, Evaluated: "applied", Warnings: []string{"note \x1b[31mred"}, OtherFiltering: []foreign.Finding{},
		Sockets:      []audit.Finding{{Proto: "tcp", Family: "ipv4", Address: "0.0.0.0", Port: 80, PID: 42, Process: hostile, Status: audit.Open}},
		UnusedAllows: []audit.UnusedAllow{{Line: 3, Rule: "allow 9/tcp # \x1b[2J", Proto: "tcp", Ports: "9"}}}
	var out bytes.Buffer
	a := &app{out: &out}
	a.printAudit(rep)
	s := out.String()
	for _, bad := range []string{"\x1b", "\x07", "\u202e", "\r"} {
		if strings.Contains(s, bad) {
			t.Errorf("table holds %q:\n%q", bad, s)
		}
	}
	if !strings.Contains(s, `evil]0;pwned[2Jgnp.exe\r\n[42]`) || !strings.Contains(s, "open to anyone") {
		t.Errorf("table:\n%s", s)
	}
	if strings.Count(s, "\n") != 6 {
		t.Errorf("a name's newline made a line of its own:\n%s", s)
	}
	out.Reset()
	a.json = true
	if err := a.printJSON(rep); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(out.String(), "\x1b\x07\r") {
		t.Errorf("JSON holds control characters: %q", out.String())
	}
	var back auditReport
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back.Sockets[0].Process != hostile {
		t.Errorf("JSON does not carry the name as it is: %v %q", err, back.Sockets[0].Process)
	}
}
