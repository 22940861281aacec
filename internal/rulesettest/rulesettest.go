// Package rulesettest holds what the backends' tests share: compiling a
// policy text, and comparing a rendering with its golden file.
package rulesettest

import (
	"os"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// Compile parses text as moat.conf, with services as the services file,
// and compiles it; a policy that does not parse fails the test.
func Compile(t testing.TB, text, services string) *ruleset.Ruleset {
	t.Helper()
	p, err := policy.NewDocument("moat.conf", []byte(text)).Policy(policy.ParseServices([]byte(services)))
	if err != nil {
		t.Fatal(err)
	}
	return ruleset.Compile(p)
}

// CompileFile is Compile of a file's text.
func CompileFile(t testing.TB, path, services string) *ruleset.Ruleset {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return Compile(t, string(data), services)
}

// Golden compares got with the golden file, which update rewrites first.
func Golden(t testing.TB, file, got string, update bool) {
	t.Helper()
	if update {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("script differs from %s (go test -update to accept):\n%s", file, got)
	}
}
