package xtenc

import (
	"fmt"
	"strings"
)

// maxParam is the longest argument iptables-restore reads (its parameter
// buffer); a longer one is refused here too.
const maxParam = 1023

// split cuts one rule line into arguments as iptables-restore does
// (add_param_to_argv): blanks separate arguments, a double-quoted part
// may hold blanks, and a closing quote ends its argument. What
// iptables-restore would refuse or read in a way moat never writes (a
// quote left open, control characters, a quote in the middle of a word,
// a backslash, which iptables-restore takes as an escape inside quotes)
// is an error.
func split(line string) ([]string, error) {
	for i := 0; i < len(line); i++ {
		if c := line[i]; c < 0x20 && c != '\t' || c == 0x7f || c == '\\' {
			return nil, fmt.Errorf("%w: character %#x in the line", ErrUnsupported, c)
		}
	}
	var (
		args   []string
		cur    strings.Builder
		inWord bool // cur holds an argument begun
		quoted bool
	)
	end := func() error {
		if cur.Len() > maxParam {
			return fmt.Errorf("%w: an argument of %d bytes", ErrUnsupported, cur.Len())
		}
		args = append(args, cur.String())
		cur.Reset()
		inWord = false
		return nil
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		if quoted {
			switch {
			case c == '"':
				quoted = false
				if i+1 < len(line) && line[i+1] != ' ' && line[i+1] != '\t' {
					return nil, fmt.Errorf("%w: text right after a closing quote", ErrUnsupported)
				}
				if err := end(); err != nil {
					return nil, err
				}
			default:
				cur.WriteByte(c)
			}
			continue
		}
		switch c {
		case '"':
			if inWord {
				return nil, fmt.Errorf("%w: a quote inside a word", ErrUnsupported)
			}
			quoted, inWord = true, true
		case ' ', '\t':
			if inWord {
				if err := end(); err != nil {
					return nil, err
				}
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("%w: a quote left open", ErrUnsupported)
	}
	if inWord {
		if err := end(); err != nil {
			return nil, err
		}
	}
	return args, nil
}
