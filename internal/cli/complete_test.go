package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// complete runs moat's hidden completion command as the shells do and
// returns the candidates (without descriptions).
func complete(t *testing.T, config string, words ...string) []string {
	t.Helper()
	var out, errOut bytes.Buffer
	args := append([]string{"--config", config, "__complete"}, words...)
	if code := Main(context.Background(), args, &out, &errOut); code != 0 {
		t.Fatalf("__complete %q: exit %d: %s", words, code, errOut.String())
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if strings.HasPrefix(line, ":") {
			continue
		}
		got = append(got, line)
	}
	return got
}

func names(cands []string) []string {
	var out []string
	for _, c := range cands {
		n, _, _ := strings.Cut(c, "\t")
		out = append(out, n)
	}
	return out
}

func TestCompletion(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "moat.conf")
	if err := os.WriteFile(conf, []byte("# admins\nallow 22/tcp comment 'admins'\ndefault deny incoming\ndeny from 203.0.113.0/24 # noisy\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		words      []string
		want, not  []string
		exactFirst string
	}{
		{words: []string{"allow", ""}, want: []string{"in", "out", "on", "log", "proto", "from", "to", "comment"}, not: []string{"port"}},
		{words: []string{"allow", "proto", ""}, want: []string{"tcp", "udp", "ipv6-icmp"}, not: []string{"from"}},
		{words: []string{"allow", "proto", "tcp", "from", ""}, want: []string{"any"}},
		{words: []string{"allow", "proto", "tcp", "from", "198.51.100.0/24", ""}, want: []string{"port", "to", "comment"}, not: []string{"proto", "from", "in"}},
		{words: []string{"deny", "in", ""}, want: []string{"on", "log", "proto"}, not: []string{"in", "out"}},
		{words: []string{"route", ""}, want: []string{"allow", "deny", "reject", "insert", "delete"}, not: []string{"proto"}},
		{words: []string{"route", "insert", ""}, want: []string{"1", "2"}, exactFirst: "1\tallow 22/tcp comment 'admins'"},
		{words: []string{"route", "insert", "1", ""}, want: []string{"allow", "deny", "reject"}},
		{words: []string{"route", "delete", ""}, want: []string{"1", "allow"}},
		{words: []string{"route", "delete", "allow", ""}, want: []string{"in", "out", "proto"}},
		{words: []string{"show", ""}, want: []string{"raw", "added"}},
		{words: []string{"route", "allow", ""}, want: []string{"in", "out", "proto"}},
		{words: []string{"default", ""}, want: []string{"allow", "deny", "reject"}},
		{words: []string{"default", "deny", ""}, want: []string{"incoming", "outgoing", "routed"}},
		{words: []string{"delete", ""}, want: []string{"1", "2", "allow", "route"}, exactFirst: "1\tallow 22/tcp comment 'admins'"},
		{words: []string{"delete", "3"}, not: []string{"3"}},
		{words: []string{"insert", ""}, want: []string{"1", "2"}, exactFirst: "1\tallow 22/tcp comment 'admins'"},
		{words: []string{"insert", "2", ""}, want: []string{"allow", "deny", "limit"}},
		{words: []string{"insert", "2", "allow", "proto", ""}, want: []string{"tcp"}},
		{words: []string{"status", ""}, want: []string{"numbered", "verbose"}},
	}
	for _, c := range cases {
		got := complete(t, conf, c.words...)
		n := names(got)
		for _, w := range c.want {
			if !slices.Contains(n, w) {
				t.Errorf("%q: %q missing from %q", c.words, w, n)
			}
		}
		for _, w := range c.not {
			if slices.Contains(n, w) {
				t.Errorf("%q: %q offered: %q", c.words, w, n)
			}
		}
		if c.exactFirst != "" && (len(got) == 0 || got[0] != c.exactFirst) {
			t.Errorf("%q: first candidate %q, want %q", c.words, got, c.exactFirst)
		}
	}
	// The second rule is the 'deny' line: its text, not its comment.
	got := complete(t, conf, "delete", "2")
	if len(got) != 1 || got[0] != "2\tdeny from 203.0.113.0/24" {
		t.Errorf("delete 2: %q", got)
	}
}

func TestCompletionServices(t *testing.T) {
	if _, err := os.Stat("/etc/services"); err != nil {
		t.Skip("no /etc/services")
	}
	got := names(complete(t, filepath.Join(t.TempDir(), "none.conf"), "allow", "proto", "tcp", "to", "any", "port", "ss"))
	if !slices.Contains(got, "ssh") {
		t.Errorf("port ss: %q, want ssh", got)
	}
	got = names(complete(t, filepath.Join(t.TempDir(), "none.conf"), "limit", "ss"))
	if !slices.Contains(got, "ssh") {
		t.Errorf("limit ss: %q, want ssh", got)
	}
}

func TestVersion(t *testing.T) {
	old := [3]string{Version, Commit, BuildDate}
	t.Cleanup(func() { Version, Commit, BuildDate = old[0], old[1], old[2] })
	Version, Commit, BuildDate = "1.2.3", "abc123", "2026-01-02T03:04:05Z"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out, errOut bytes.Buffer
		if code := Main(context.Background(), args, &out, &errOut); code != 0 {
			t.Fatalf("%q: exit %d: %s", args, code, errOut.String())
		}
		for _, want := range []string{"moat 1.2.3\n", "commit:     abc123\n", "built:      2026-01-02T03:04:05Z\n", "go:         go1."} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%q: %q missing from\n%s", args, want, out.String())
			}
		}
	}
	var out bytes.Buffer
	if code := Main(context.Background(), []string{"version", "--json"}, &out, &out); code != 0 || !strings.Contains(out.String(), `"commit": "abc123"`) {
		t.Errorf("version --json: %s", out.String())
	}
}
