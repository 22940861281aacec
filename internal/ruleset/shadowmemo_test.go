package ruleset

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
)

var memoServices = policy.ParseServices([]byte("ssh 22/tcp\nhttp 80/tcp\ndomain 53/tcp\ndomain 53/udp\n"))

// memoLine is a random policy line: with networks (held compact or not,
// both families, both sides) when nets, else a rule without any network
// (ports, protocols, interfaces, a service of two rules on one line).
func memoLine(rng *rand.Rand, nets bool) string {
	actions := []string{"allow", "deny", "reject"}
	act := actions[rng.IntN(3)]
	if nets {
		addrs := [][]string{
			{"198.51.100.0/24", "198.51.100.7", "198.51.0.0/16", "0.0.0.0/0", "198.51.100.0/25"},
			{"2001:db8::/32", "2001:db8::5", "2001:db8:1::/48", "::/0", "2001:db8::/64"},
		}[rng.IntN(2)]
		a := addrs[rng.IntN(len(addrs))]
		switch rng.IntN(3) {
		case 0:
			return act + " from " + a
		case 1:
			return act + " to " + a
		}
		return act + " from " + a + " to any port 22 proto tcp"
	}
	return act + " " + []string{"22/tcp", "22", "80/tcp", "20:30/tcp", "domain", "53/udp", "in on eth0", "in on eth+ to any port 80 proto tcp",
		"proto esp from any", "out 25/tcp", "ssh"}[rng.IntN(11)]
}

func coveredText(cs []Covered) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.String())
	}
	return out
}

func memoPolicy(t *testing.T, lines []string) *policy.Policy {
	t.Helper()
	p, err := policy.NewDocument("moat.conf", []byte(strings.Join(lines, "\n")+"\n")).Policy(memoServices)
	if err != nil {
		t.Fatalf("policy:\n%s\n%v", strings.Join(lines, "\n"), err)
	}
	return p
}

// checkMemo runs ShadowedMemo with m on the policy of lines and checks
// it against Shadowed; it returns the memo to keep and whether m was used.
func checkMemo(t *testing.T, lines []string, m *CoveredMemo) (*CoveredMemo, bool) {
	t.Helper()
	p := memoPolicy(t, lines)
	got, next := ShadowedMemo(p, m)
	want := Shadowed(p)
	if !slices.Equal(coveredText(got), coveredText(want)) {
		t.Fatalf("policy:\n%s\nmemo %+v\ngot  %q\nwant %q", strings.Join(lines, "\n"), m, coveredText(got), coveredText(want))
	}
	if next == nil {
		return m, true
	}
	return next, false
}

// The memo of the covered-rule search gives exactly Shadowed's result on
// the policy after every kind of edit: rules without networks added and
// deleted at the end (the memo used), and rules changed, moved, added
// or deleted among the rules it was made of, address rules added at the
// end, a rule added at the top (the memo not used: the search runs
// whole). The test fails if the memo is never used, or used where it
// must not be.
func TestShadowedMemoSameAsShadowed(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	used, covered := 0, 0
	for round := range 300 {
		var lines []string
		for range 5 + rng.IntN(30) {
			lines = append(lines, memoLine(rng, rng.IntN(4) > 0))
		}
		for range rng.IntN(6) {
			lines = append(lines, memoLine(rng, false))
		}
		m, _ := checkMemo(t, lines, nil)
		covered += len(Shadowed(memoPolicy(t, lines)))
		for step := range 8 {
			edit := rng.IntN(7)
			var mustMiss bool
			switch edit {
			case 0, 1: // a rule without networks added at the end
				lines = append(lines, memoLine(rng, false))
			case 2: // the last rule deleted, if it has no network
				if p := memoPolicy(t, lines); len(lines) > 1 && !p.HasNets(p.NumRules()-1) {
					lines = lines[:len(lines)-1]
				}
			case 3: // an address rule added at the end
				lines = append(lines, memoLine(rng, true))
				mustMiss = true
			case 4: // a rule added at the top: every line moves
				lines = append([]string{memoLine(rng, rng.IntN(2) == 0)}, lines...)
				mustMiss = true
			case 5: // a rule changed somewhere
				i := rng.IntN(len(lines))
				old := lines[i]
				for lines[i] == old {
					lines[i] = memoLine(rng, rng.IntN(2) == 0)
				}
			case 6: // a rule deleted somewhere
				if len(lines) > 1 {
					i := rng.IntN(len(lines))
					lines = slices.Delete(lines, i, i+1)
				}
			}
			next, hit := checkMemo(t, lines, m)
			if hit {
				used++
				if mustMiss {
					t.Fatalf("round %d step %d: the memo was used after edit %d:\n%s", round, step, edit, strings.Join(lines, "\n"))
				}
			}
			m = next
		}
	}
	if used < 500 || covered < 300 {
		t.Fatalf("memo used %d times, %d covered rules: the test would not show a wrong use", used, covered)
	}
}

// A memo that names a covered rule wrongly, or was made from other rules,
// is not used. (A memo that leaves out covered rules cannot be told from
// the rules without searching them: the engine's record of it is keyed,
// TestCoveredMemoFileChecked.)
func TestShadowedMemoHostile(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	lines := []string{"deny from 198.51.100.0/24", "deny from 198.51.100.7", "allow from 198.51.100.8", "deny from 2001:db8::/32",
		"deny from 2001:db8::5", "allow 22/tcp", "allow in on eth0", "allow in on eth0 to any port 22 proto tcp"}
	p := memoPolicy(t, lines)
	_, good := ShadowedMemo(p, nil)
	if good == nil || len(good.Pairs) != 3 || good.N != 5 {
		t.Fatalf("memo %+v: want 3 covered rules among the first 5", good)
	}
	want := coveredText(Shadowed(p))
	mutations := []func(m *CoveredMemo){
		func(m *CoveredMemo) { m.Pairs = append(m.Pairs, [2]int{3, 0}) },         // one made up
		func(m *CoveredMemo) { m.Pairs[0][1] = m.Pairs[0][0] },                   // covered by itself
		func(m *CoveredMemo) { m.Pairs[0] = [2]int{4, 1} },                       // by a rule that does not cover it
		func(m *CoveredMemo) { m.Pairs[0][0] = -1 },                              // out of range
		func(m *CoveredMemo) { m.Pairs[1][0] = 100 },                             // beyond N
		func(m *CoveredMemo) { m.Pairs[0], m.Pairs[1] = m.Pairs[1], m.Pairs[0] }, // out of order
		func(m *CoveredMemo) { m.N = 4 },
		func(m *CoveredMemo) { m.N = 1 << 40 },
		func(m *CoveredMemo) { m.N = -1 },
		func(m *CoveredMemo) { m.Sum[rng.IntN(32)] ^= 1 },
	}
	for k, mutate := range mutations {
		m := &CoveredMemo{N: good.N, Sum: good.Sum, Pairs: slices.Clone(good.Pairs)}
		mutate(m)
		got, next := ShadowedMemo(p, m)
		if !slices.Equal(coveredText(got), want) {
			t.Errorf("mutation %d (%+v): got %q, want %q", k, m, coveredText(got), want)
		}
		if next == nil {
			t.Errorf("mutation %d (%+v) was used as the memo", k, m)
		}
	}
	// The memo as made is used, and gives the same.
	got, next := ShadowedMemo(p, good)
	if next != nil || !slices.Equal(coveredText(got), want) {
		t.Fatalf("the good memo: used %v, got %q, want %q", next == nil, coveredText(got), want)
	}
}
