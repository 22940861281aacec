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
	for _, want := range []string{`.TH "MOAT" "8" "Nov 2026"`, "moat-allow(8)", "moat-enable(8)", "moat-version(8)", "SYNOPSIS", "ufw"} {
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
