package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
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
	if s.Lines != 8 || s.Sources[1] != (countedString{"203.0.113.7", 3}) || s.Ports[1] != (countedString{"23/tcp", 2}) {
		t.Errorf("summary %+v", s)
	}
	for _, c := range s.Sources {
		if c.Key == "203.0.113.50" || c.Key == "198.51.100.77" || c.Key == "203.0.113.51" || c.Key == "203.0.113.99" {
			t.Errorf("counted %s", c.Key)
		}
	}
	if !strings.Contains(out, `"2001:db8::9"`) {
		t.Errorf("IPv6 source not normalized:\n%s", out)
	}
	text, _ := runMoat(t, "log", "--file", "testdata/kern.log")
	if !strings.Contains(text, "8 blocked packets logged") || !strings.Contains(text, "161/udp") {
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

func TestLogFollow(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kern.log")
	if err := os.WriteFile(f, []byte("old host kernel: [MOAT BLOCK] SRC=203.0.113.1 DST=192.0.2.1 PROTO=TCP DPT=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan int)
	go func() {
		done <- Main(ctx, []string{"--state-dir", t.TempDir(), "log", "--follow", "--json", "--file", f}, &out, &out)
	}()
	time.Sleep(300 * time.Millisecond)
	fh, err := os.OpenFile(f, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fh.WriteString("host kernel: [MOAT BLOCK] IN=eth0 SRC=203.0.113.2 DST=192.0.2.1 PROTO=UDP DPT=53\n")
	_ = fh.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "203.0.113.2") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d", code)
	}
	got := out.String()
	if !strings.Contains(got, `"src":"203.0.113.2"`) || !strings.Contains(got, `"dport":53`) || strings.Contains(got, "203.0.113.1") {
		t.Errorf("follow printed:\n%s", got)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
