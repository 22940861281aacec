package ruleset

import (
	"fmt"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
)

func blocklistPolicy(n int) []byte {
	var b strings.Builder
	b.WriteString("default deny incoming\nallow 22/tcp\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "deny from 2001:db8:%x:%x::/64\n", i/65536, i%65536)
	}
	return []byte(b.String())
}

// BenchmarkParseCompile measures reading and compiling a policy of n
// address rules, per rule, against a 1,000-rule baseline measured in the
// same run: the cost per rule should not grow with the policy.
//
//	go test -run XXX -bench ParseCompile -benchmem ./internal/ruleset/
func BenchmarkParseCompile(b *testing.B) {
	var baseline float64
	for _, n := range []int{1000, 100000, 500000} {
		data := blocklistPolicy(n)
		b.Run(fmt.Sprintf("rules-%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				p, err := policy.NewDocument("moat.conf", data).Policy(nil)
				if err != nil {
					b.Fatal(err)
				}
				rs := Compile(p)
				// The address rules' one set, beside the ban, login and
				// protected sets.
				held := 0
				for _, set := range rs.Sets {
					if len(set.Entries) > 0 {
						held += len(set.Entries)
						if len(set.Prefixes()) == 0 {
							b.Fatal("a set without networks")
						}
					}
				}
				if held != n {
					b.Fatalf("%d set entries, want %d", held, n)
				}
			}
			per := float64(b.Elapsed().Nanoseconds()) / float64(b.N) / float64(n)
			b.ReportMetric(per, "ns/rule")
			if n == 1000 {
				baseline = per
			}
			b.ReportMetric(per/baseline, "x-baseline")
		})
	}
}
