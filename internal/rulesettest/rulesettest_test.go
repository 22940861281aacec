package rulesettest

import (
	"path/filepath"
	"testing"
)

func TestCompile(t *testing.T) {
	rs := Compile(t, "default deny incoming\nallow ssh\n", "ssh 22/tcp\n")
	if len(rs.Chains) == 0 {
		t.Fatalf("no chains: %+v", rs)
	}
}

// failures records Errorf instead of failing the test.
type failures struct {
	testing.TB
	n int
}

func (f *failures) Errorf(string, ...any) { f.n++ }

// Golden fails on a difference and passes once update wrote the file.
func TestGolden(t *testing.T) {
	file := filepath.Join(t.TempDir(), "golden")
	f := &failures{TB: t}
	Golden(f, file, "one\n", true)
	Golden(f, file, "one\n", false)
	if f.n != 0 {
		t.Fatalf("the same script failed %d times", f.n)
	}
	Golden(f, file, "two\n", false)
	if f.n != 1 {
		t.Error("a different script passed")
	}
}
