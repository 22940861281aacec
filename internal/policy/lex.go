package policy

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Token is one word of a policy line, with the column (1-based, in runes)
// where it starts.
type Token struct {
	Text   string
	Col    int
	Quoted bool
}

// Error is a problem at a position of a policy file or command line.
type Error struct {
	Pos Pos
	Msg string
}

func (e *Error) Error() string {
	if e.Pos.File == "" {
		if e.Pos.Col > 0 {
			return fmt.Sprintf("argument %d: %s", e.Pos.Col, e.Msg)
		}
		return e.Msg
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.Pos.File, e.Pos.Line, e.Pos.Col, e.Msg)
}

// maxLineLen bounds a policy line; longer lines are refused rather than
// parsed, since no valid statement comes close.
const maxLineLen = 4096

// Lex splits one line into tokens. Single or double quotes group words (the
// quotes are not part of the token); '#' outside quotes starts a comment.
func Lex(line string) ([]Token, *Error) {
	if len(line) > maxLineLen {
		return nil, &Error{Pos: Pos{Col: 1}, Msg: fmt.Sprintf("line is %d bytes long; at most %d are allowed", len(line), maxLineLen)}
	}
	if !utf8.ValidString(line) {
		return nil, &Error{Pos: Pos{Col: 1}, Msg: "line is not valid UTF-8"}
	}
	var toks []Token
	runes := []rune(line)
	i := 0
	for i < len(runes) {
		c := runes[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			i++
		case c == '#':
			return toks, nil
		case c == '\'' || c == '"':
			start := i
			j := i + 1
			for j < len(runes) && runes[j] != c {
				j++
			}
			if j == len(runes) {
				return nil, &Error{Pos: Pos{Col: start + 1}, Msg: fmt.Sprintf("unterminated quote %c: expected a closing %c", c, c)}
			}
			toks = append(toks, Token{Text: string(runes[start+1 : j]), Col: start + 1, Quoted: true})
			i = j + 1
			if i < len(runes) && !strings.ContainsRune(" \t\r#", runes[i]) {
				return nil, &Error{Pos: Pos{Col: i + 1}, Msg: "a closing quote must end the word"}
			}
		default:
			if isControl(c) {
				return nil, &Error{Pos: Pos{Col: i + 1}, Msg: fmt.Sprintf("control character %U is not allowed", c)}
			}
			start := i
			for i < len(runes) && !strings.ContainsRune(" \t\r'\"#", runes[i]) {
				if isControl(runes[i]) {
					return nil, &Error{Pos: Pos{Col: i + 1}, Msg: fmt.Sprintf("control character %U is not allowed", runes[i])}
				}
				i++
			}
			if i < len(runes) && (runes[i] == '\'' || runes[i] == '"') {
				return nil, &Error{Pos: Pos{Col: i + 1}, Msg: "a quote may only start a word"}
			}
			toks = append(toks, Token{Text: string(runes[start:i]), Col: start + 1})
		}
	}
	return toks, nil
}

// isControl reports C0 and C1 control characters and DEL: a C1 CSI
// (U+009B) is an escape sequence on many terminals that show the rule.
func isControl(c rune) bool {
	return c < 0x20 || (c >= 0x7f && c <= 0x9f)
}

// ArgsTokens turns command-line arguments into tokens; the column of each is
// its 1-based argument number, so errors can name the argument.
func ArgsTokens(args []string) []Token {
	toks := make([]Token, len(args))
	for i, a := range args {
		toks[i] = Token{Text: a, Col: i + 1, Quoted: strings.ContainsAny(a, " \t")}
	}
	return toks
}

// QuoteArgs writes command-line arguments as one policy line, quoting the
// arguments that need it, so that Lex gives the same words back.
func QuoteArgs(args []string) string {
	parts := make([]string, len(args))
	for i, a := range args {
		switch {
		case a == "" || strings.ContainsAny(a, " \t#"):
			if strings.ContainsRune(a, '\'') {
				parts[i] = `"` + a + `"`
			} else {
				parts[i] = "'" + a + "'"
			}
		default:
			parts[i] = a
		}
	}
	return strings.Join(parts, " ")
}
