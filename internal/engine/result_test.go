package engine

import (
	"strings"
	"testing"
)

// An apply releases the policy's rules once compiled; the result still
// says how many there are and which are covered, for edits and enable,
// active or not.
func TestResultRulesAndCovered(t *testing.T) {
	r := newRig(t)
	r.write(base + "allow 22/tcp comment 'again'\n")
	res, err := r.add(r.ch(0), "deny from 192.0.2.7")
	r.must(err)
	if !res.Inactive || res.Rules != 3 || len(res.Covered) != 1 || !strings.Contains(res.Covered[0].String(), "line 2") {
		t.Fatalf("inactive edit: %d rules, covered %v", res.Rules, res.Covered)
	}
	res, err = r.enable(r.ch(0))
	r.must(err)
	if res.Applied == nil || res.Rules != 3 || len(res.Covered) != 1 {
		t.Fatalf("enable: %d rules, covered %v", res.Rules, res.Covered)
	}
	if res.Policy == nil || res.Policy.NumRules() != 0 {
		t.Errorf("the policy's rules were kept after the apply: %d", res.Policy.NumRules())
	}
	res, err = r.add(r.ch(0), "allow 80/tcp")
	r.must(err)
	if res.Applied == nil || res.Rules != 4 || len(res.Covered) != 1 {
		t.Fatalf("edit: %d rules, covered %v", res.Rules, res.Covered)
	}
	r.kernelIs("nftables", r.file())
}
