package xtenc

import (
	"fmt"
	"strings"
)

// iptables-restore's limits: the longest argument (its parameter
// buffer), the longest line (its line buffer: a longer line is read as
// two), the most arguments (its parser holds 255 with its own few, and
// each set match takes one more: a line of 50 set matches, 204
// arguments, is refused; moat's longest lines have about 70).
const (
	maxParam = 1023
	maxLine  = 10239
	maxArgs  = 128
)

// split cuts one rule line into arguments as iptables-restore does
// (add_param_to_argv): blanks separate arguments, a double-quoted part
// may hold blanks, and a closing quote ends its argument. What
// iptables-restore would refuse or read in a way moat never writes (a
// quote left open, control characters, a quote in the middle of a word,
// a backslash, which iptables-restore takes as an escape inside quotes)
// is an error.
func split(line string) ([]string, error) {
	if len(line) > maxLine {
		return nil, fmt.Errorf("%w: a line of %d bytes", ErrUnsupported, len(line))
	}
	for i := 0; i < len(line); i++ {
		if c := line[i]; c < 0x20 && c != '\t' || c == 0x7f || c == '\\' {
			return nil, fmt.Errorf("%w: character %#x in the line", ErrUnsupported, c)
		}
	}
	blank := func(c byte) bool { return c == ' ' || c == '\t' }
	args := make([]string, 0, 24)
	for i := 0; i < len(line); {
		if blank(line[i]) {
			i++
			continue
		}
		var arg string
		if line[i] == '"' {
			j := strings.IndexByte(line[i+1:], '"')
			if j < 0 {
				return nil, fmt.Errorf("%w: a quote left open", ErrUnsupported)
			}
			arg = line[i+1 : i+1+j]
			i += j + 2
			if i < len(line) && !blank(line[i]) {
				return nil, fmt.Errorf("%w: text right after a closing quote", ErrUnsupported)
			}
		} else {
			j := i
			for j < len(line) && !blank(line[j]) {
				j++
			}
			arg = line[i:j]
			i = j
			if strings.IndexByte(arg, '"') >= 0 {
				return nil, fmt.Errorf("%w: a quote inside a word", ErrUnsupported)
			}
		}
		if len(arg) > maxParam {
			return nil, fmt.Errorf("%w: an argument of %d bytes", ErrUnsupported, len(arg))
		}
		args = append(args, arg)
		if len(args) > maxArgs {
			return nil, fmt.Errorf("%w: more than %d arguments", ErrUnsupported, maxArgs)
		}
	}
	return args, nil
}
