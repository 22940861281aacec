package cli

import (
	"fmt"
	"strings"
	"testing"
)

func TestDifferencesNamesEach(t *testing.T) {
	if got := differences([]string{"a", "b"}); got != "a; b" {
		t.Errorf("differences(a, b) = %q", got)
	}
	var many []string
	for i := range 20 {
		many = append(many, fmt.Sprintf("d%d", i))
	}
	got := differences(many)
	if !strings.HasPrefix(got, "d0; d1; ") || !strings.Contains(got, "d7") || strings.Contains(got, "d8") || !strings.HasSuffix(got, "and 12 more differences") {
		t.Errorf("differences of 20 = %q", got)
	}
}
