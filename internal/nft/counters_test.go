package nft

import (
	"strings"
	"testing"
)

// TestCountersHostileComment: a rule comment read from the kernel is
// quoted in the error of a counter moat cannot read, never written raw.
func TestCountersHostileComment(t *testing.T) {
	data := `{"nftables":[{"rule":{"comment":"L1\u001b]0;owned\u0007","expr":[{"counter":{"packets":"x"}}]}}]}`
	_, err := parseCounters([]byte(data))
	if err == nil {
		t.Fatal("a bad counter was read")
	}
	if strings.ContainsAny(err.Error(), "\x1b\x07\n") {
		t.Errorf("error %q carries the comment raw (or spans lines)", err)
	}
}
