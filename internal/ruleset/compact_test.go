package ruleset

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
)

// compactSample mixes address rules the policy holds compact (both sides,
// both families, every action, /0, runs long enough for sets and runs
// cut by other rules) with rules it holds whole.
func compactSample() string {
	var b strings.Builder
	b.WriteString("default deny incoming\nallow 22/tcp\n")
	for i := range 40 {
		fmt.Fprintf(&b, "deny from 198.51.100.%d\n  deny from 2001:db8:%x::/48\r\n", i, i)
		if i == 17 {
			b.WriteString("deny from 198.51.100.0/24 port 53\nreject to 0.0.0.0/0\n\tallow from ::/0\n")
		}
		if i%9 == 0 {
			fmt.Fprintf(&b, "reject to 203.0.113.%d\nallow from 192.0.2.%d\nallow in on eth0 from 192.0.2.%d\n", i, i, i)
		}
	}
	b.WriteString("deny from 198.51.100.7\nallow out to 2001:db8::1\nlimit 22/tcp\ndeny from 198.51.100.0/25 # covered\n")
	return b.String()
}

// sameForms: compiling a policy and searching it for covered rules gives
// the same whether its address rules are held compact or whole.
func sameForms(t *testing.T, text string) {
	t.Helper()
	p, err := policy.NewDocument("moat.conf", []byte(text)).Policy(nil)
	if err != nil {
		return
	}
	whole := p.Whole()
	if got, want := Compile(p), Compile(whole); !reflect.DeepEqual(got, want) {
		t.Fatalf("policy:\n%s\ncompact compiles to %+v\nwhole to %+v", text, got, want)
	}
	if got, want := Shadowed(p), Shadowed(whole); !reflect.DeepEqual(got, want) {
		t.Fatalf("policy:\n%s\ncompact: covered %v\nwhole: %v", text, got, want)
	}
}

func TestCompileCompactSameAsWhole(t *testing.T) {
	text := compactSample()
	p, err := policy.NewDocument("moat.conf", []byte(text)).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(Shadowed(p)); n < 3 {
		t.Fatalf("the sample has %d covered rules, want a few", n)
	}
	if sets := len(Compile(p).Sets); sets < 6 {
		t.Fatalf("the sample compiles to %d sets, want policy sets beside the ban sets", sets)
	}
	sameForms(t, text)
}

// FuzzCompileCompact: any policy compiles, and is searched, the same in
// both forms.
func FuzzCompileCompact(f *testing.F) {
	f.Add(compactSample())
	f.Add("deny from 192.0.2.1\ndeny to 192.0.2.2\nreject from ::1\nallow from 0.0.0.0/0\n")
	f.Fuzz(func(t *testing.T, text string) {
		if len(text) > 1<<14 {
			return
		}
		sameForms(t, text)
	})
}
