package termtext

import (
	"encoding/json"
	"io"
	"strconv"
	"unicode/utf8"
)

// The one place moat's JSON is made safe for a terminal. encoding/json
// escapes C0 controls, U+2028/U+2029, HTML and invalid UTF-8 in a string,
// but writes DEL, C1 controls (U+009B is a CSI: an escape sequence
// without ESC) and bidirectional controls as they are: a ban's comment,
// a journal line, a blocklist's ETag or a rule's comment read back from
// the kernel reached the admin's terminal as an escape sequence or as
// text shown in another order. AppendJSON escapes those as \uXXXX too: a
// JSON reader reads the same strings, a terminal gets no control.

// AppendJSON appends js, a JSON text, with every character Dropped
// would drop that is not an ASCII control written as \uXXXX, and invalid
// UTF-8 as \ufffd (encoding/json writes none). An ASCII control but
// '\n' and '\t' is left out: JSON has none but in the whitespace between
// tokens (encoding/json escapes those in a string). Outside strings JSON
// has only ASCII, so only strings change, and only in how they are
// spelled; the result holds no control but '\n' and '\t', and goes to
// the terminal as it is (Verbatim).
func AppendJSON(dst, js []byte) []byte {
	for len(js) > 0 {
		i := plainPrefix(js)
		dst = append(dst, js[:i]...)
		if js = js[i:]; len(js) == 0 {
			break
		}
		r, n := utf8.DecodeRune(js)
		switch {
		case r == utf8.RuneError && n == 1:
			dst = append(dst, `\ufffd`...)
		case r < 0x20:
			// whitespace between tokens: left out
		case Dropped(r):
			dst = appendUEscape(dst, r)
		default:
			dst = append(dst, js[:n]...)
		}
		js = js[n:]
	}
	return dst
}

func appendUEscape(dst []byte, r rune) []byte {
	const hex = "0123456789abcdef"
	return append(dst, '\\', 'u', hex[r>>12&0xf], hex[r>>8&0xf], hex[r>>4&0xf], hex[r&0xf])
}

// AppendJSONString appends s as encoding/json writes a string (HTML
// and invalid UTF-8 escaped), with AppendJSON's escapes.
func AppendJSONString(dst []byte, s string) []byte {
	q, err := json.Marshal(s)
	if err != nil { // never: a string always encodes
		return AppendJSON(dst, []byte(strconv.Quote(s)))
	}
	return AppendJSON(dst, q)
}

// MarshalIndent is json.MarshalIndent with AppendJSON's escapes.
func MarshalIndent(v any, prefix, indent string) ([]byte, error) {
	b, err := json.MarshalIndent(v, prefix, indent)
	if err != nil {
		return nil, err
	}
	return escapeJSONInPlace(b), nil
}

// escapeJSONInPlace is AppendJSON(nil, b), b itself when nothing
// changes (as for most outputs: ASCII).
func escapeJSONInPlace(b []byte) []byte {
	if plainPrefix(b) == len(b) {
		return b
	}
	return AppendJSON(make([]byte, 0, len(b)+64), b)
}

// NewJSONEncoder is json.NewEncoder(w) whose output has AppendJSON's
// escapes, written to Verbatim(w). Each Encode writes its value whole in
// one Write, which the escaping relies on (a character is never cut
// between two writes).
func NewJSONEncoder(w io.Writer) *json.Encoder {
	return json.NewEncoder(jsonWriter{Verbatim(w)})
}

type jsonWriter struct{ w io.Writer }

func (j jsonWriter) Write(p []byte) (int, error) {
	if _, err := j.w.Write(escapeJSONInPlace(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}
