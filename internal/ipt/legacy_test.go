package ipt

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
)

// legacyTablesReadFile is legacyTables as it was read before (a stat of
// the directory, then os.ReadFile of each file): the reader must answer
// as it did.
func legacyTablesReadFile() bool {
	dir := "/proc/thread-self/net/"
	if _, err := os.Stat(dir); err != nil {
		dir = "/proc/net/"
	}
	for _, f := range []string{dir + "ip_tables_names", dir + "ip6_tables_names"} {
		data, err := os.ReadFile(f)
		if err == nil && len(bytes.TrimSpace(data)) > 0 {
			return true
		}
	}
	return false
}

func TestTablesListed(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, text string
		want       bool
	}{
		{"empty", "", false},
		{"blank", " \n\t\r\n", false},
		{"one", "filter\n", true},
		{"two", "raw\nfilter\n", true},
		{"no newline", "x", true},
		// Past the reader's 64-byte buffer: the name is found in a later read.
		{"blank then name", strings.Repeat(" \n", 100) + "filter\n", true},
		{"long blank", strings.Repeat("\n", 1000), false},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_"))
		if err := os.WriteFile(p, []byte(c.text), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := tablesListed(p); got != c.want {
			t.Errorf("%s: tablesListed %v, want %v", c.name, got, c.want)
		}
		if want := len(bytes.TrimSpace([]byte(c.text))) > 0; want != c.want {
			t.Fatalf("%s: the case disagrees with the old reading", c.name)
		}
	}
	if tablesListed(filepath.Join(dir, "missing")) {
		t.Error("a missing file lists a table")
	}
	if tablesListed(dir) {
		t.Error("a directory lists a table")
	}
}

// The kernel's files, read in a namespace of the test's: no legacy table,
// then one made by iptables-legacy while the process runs (the next
// question must see it, as each did before: the answer is never kept),
// and the host's, each answered as the old reader answers.
func TestKernelLegacyTablesAsBefore(t *testing.T) {
	if got, want := legacyTables(), legacyTablesReadFile(); got != want {
		t.Errorf("host namespace: %v, the old reader %v", got, want)
	}
	ns := labtest.NS(t, "moatlegq")
	err := ns.Do(func() error {
		if got, want := legacyTables(), legacyTablesReadFile(); got || want {
			t.Fatalf("a new namespace: legacyTables %v, the old reader %v: want false", got, want)
		}
		if _, err := execrun.Exec(context.Background(), nil, "which", "iptables-legacy"); err != nil {
			t.Skip("no iptables-legacy")
		}
		if out, err := execrun.Exec(context.Background(), nil, "iptables-legacy", "-w", "5", "-t", "raw", "-S"); err != nil {
			t.Fatalf("iptables-legacy: %v\n%s", err, out)
		}
		if got, want := legacyTables(), legacyTablesReadFile(); !got || !want {
			t.Fatalf("after iptables-legacy made raw: legacyTables %v, the old reader %v: want true", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkLegacyTables is one question (both files read, neither
// listing a table, as on a host with iptables-nft alone), by the reader
// and by the os.ReadFile one it replaced, in a namespace of the
// benchmark's: go test -run XXX -bench LegacyTables ./internal/ipt/
func BenchmarkLegacyTables(b *testing.B) {
	ns := labtest.NS(b, "moatlegb")
	for _, c := range []struct {
		name string
		f    func() bool
	}{{"readfile", legacyTablesReadFile}, {"reader", legacyTables}} {
		b.Run(c.name, func(b *testing.B) {
			err := ns.Do(func() error {
				b.ResetTimer()
				for range b.N {
					if c.f() {
						b.Fatal("a new namespace lists a legacy table")
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}
