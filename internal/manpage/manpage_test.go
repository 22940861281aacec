package manpage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	page, err := os.ReadFile(filepath.Join(dir, "moat.8"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`.TH "MOAT" "8" "Nov 2026"`, "moat-allow(8)", "moat-enable(8)", "moat-version(8)", "SYNOPSIS", "ufw",
		`\fBmoat-version(8)\fP, \fBmoat.conf(5)\fP, \fBufw(8)\fP`} {
		if !strings.Contains(string(page), want) {
			t.Errorf("moat.8 lacks %q", want)
		}
	}
	for _, name := range []string{"moat-allow.8", "moat-delete.8", "moat-guard-check.8"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("no page %s: %v", name, err)
		}
	}
	for _, name := range []string{"moat-watchdog.8", "moat-help.8"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			t.Errorf("internal command page %s installed", name)
		}
	}
	if strings.Contains(string(page), "moat-help(8)") || strings.Contains(string(page), "moat-watchdog") {
		t.Errorf("moat.8 refers to internal commands")
	}
}

// TestWritePreformatted: the indented blocks of the long help (the quick
// start, the rule syntax, audit's table of statuses) keep their layout in
// the pages, in no-fill mode: they were filled into paragraphs, so 'man
// moat' ran the quick start's commands and their comments together.
func TestWritePreformatted(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	for page, lines := range map[string][]string{
		"moat.8": {"  moat enable --confirm 60s       # apply and save for boot; rolled back unless...\n",
			"  PROTO is tcp, udp, icmp, ipv6-icmp, esp, ah, gre, igmp, vrrp or ipv6.\n"},
		"moat-audit.8":   {"\n  closed by moat         moat drops or rejects every new connection\n"},
		"moat-explain.8": {"\n               [on IFACE] [in on IFACE] [out on IFACE] [type N] [state S]\n"},
	} {
		b, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil {
			t.Fatal(err)
		}
		roff := string(b)
		for _, l := range lines {
			i := strings.Index(roff, l)
			if i < 0 {
				t.Errorf("%s lacks the line %q as written", page, l)
				continue
			}
			// In an example block (.EX: no-fill mode) not closed before it.
			before := roff[:i]
			if ex, ee := strings.LastIndex(before, "\n.EX\n"), strings.LastIndex(before, "\n.EE\n"); ex < 0 || ee > ex {
				t.Errorf("%s: %q is not in a no-fill block", page, l)
			}
		}
	}
	if got := preformat("a\n  b\n  c\nd"); got != "a\n\n```\n  b\n  c\n```\n\nd" {
		t.Errorf("preformat: %q", got)
	}
}
