package cli

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A command reads the application profiles once (the policy and the
// engine each need them); a long-running process (the guard reloading
// its policy) and another set of directories read them anew.
func TestAppsReadOncePerCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, port string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte("["+name+"]\ntitle=t\ndescription=d\nports="+port+"/tcp\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("Web", "8080")
	t.Setenv("MOAT_APPS_DIRS", dir)
	a := &app{}
	if got := a.apps(); got["Web"] == nil || len(got) != 1 {
		t.Fatalf("first read: %v", got.Names())
	}
	write("Mail", "25")
	if got := a.apps(); len(got) != 1 {
		t.Errorf("the same command read the profiles twice: %v", got.Names())
	}
	a.appsRead.when = time.Now().Add(-2 * time.Second)
	if got := a.apps(); got["Mail"] == nil {
		t.Errorf("a second later the profiles were not read anew: %v", got.Names())
	}
	other := t.TempDir()
	t.Setenv("MOAT_APPS_DIRS", other)
	if got := a.apps(); len(got) != 0 {
		t.Errorf("other directories gave the cached profiles: %v", got.Names())
	}
}
