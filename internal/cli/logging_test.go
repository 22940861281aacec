package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLogSummary(t *testing.T) {
	out, code := runMoat(t, "log", "--file", "testdata/kern.log", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	var s logSummary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// Four BLOCK lines from the kernel; the ALLOW, ufw's and sshd's lines
	// (a user name can hold '[MOAT BLOCK]') do not count as blocks with an
	// address, except that sshd's has no valid SRC.
	if s.Lines != 7 || s.Sources[1] != (countedString{"203.0.113.7", 3}) || s.Ports[1] != (countedString{"23/tcp", 2}) {
		t.Errorf("summary %+v", s)
	}
	for _, c := range s.Sources {
		if c.Key == "203.0.113.50" || c.Key == "203.0.113.51" || c.Key == "203.0.113.99" {
			t.Errorf("counted %s", c.Key)
		}
	}
	if !strings.Contains(out, `"2001:db8::9"`) {
		t.Errorf("IPv6 source not normalized:\n%s", out)
	}
	text, _ := runMoat(t, "log", "--file", "testdata/kern.log")
	if !strings.Contains(text, "7 blocked packets logged") || !strings.Contains(text, "161/udp") {
		t.Errorf("text summary:\n%s", text)
	}
}

func TestLoggingCommand(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "moat.conf")
	if err := os.WriteFile(conf, []byte("# mine\ndefault deny incoming\nallow 22/tcp\nlogging low\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, lv := range []string{"medium", "off", "full"} {
		if out, code := runMoat(t, "--config", conf, "logging", lv); code != 0 {
			t.Fatalf("logging %s: %d %s", lv, code, out)
		}
	}
	data, _ := os.ReadFile(conf)
	if string(data) != "# mine\ndefault deny incoming\nallow 22/tcp\nlogging full\n" {
		t.Errorf("policy:\n%s", data)
	}
	if out, code := runMoat(t, "--config", conf, "logging", "loud"); code == 0 || !strings.Contains(out, "expected off, low, medium, high or full") {
		t.Errorf("logging loud: %d %s", code, out)
	}
}
