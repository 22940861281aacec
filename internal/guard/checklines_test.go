package guard

import (
	"strings"
	"testing"
)

// 'moat guard check' read with bufio.Scanner: a line past 4 MiB stopped it
// with "token too long", and a line of 64 KiB to 4 MiB was judged although
// the guard's file source skips it. ReadLines takes lines as the sources
// do.
func TestReadLinesAsTheGuard(t *testing.T) {
	fail := "Failed password for invalid user x from 192.0.2.50 port 22 ssh2"
	long := "Failed password for invalid user " + strings.Repeat("A", 100<<10) + " from 192.0.2.51 port 22 ssh2"
	huge := strings.Repeat("B", 5<<20)
	entry := `{"MESSAGE":"` + strings.Repeat("C", 100<<10) + `"}`
	in := strings.Join([]string{fail, long, huge, "\x1e" + entry, fail}, "\n")
	var got []string
	err := ReadLines(strings.NewReader(in), func(line, skip string) error {
		if skip != "" {
			got = append(got, "skip:"+skip)
		} else {
			got = append(got, line[:min(len(line), 12)])
		}
		return nil
	})
	want := []string{"Failed passw", "skip:" + SkipTooLong, "skip:" + SkipTooLong, `{"MESSAGE":"`, "Failed passw"}
	if err != nil || strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q, %v; want %q", got, err, want)
	}
}
