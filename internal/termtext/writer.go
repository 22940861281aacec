package termtext

import (
	"encoding/binary"
	"io"
	"math/bits"
	"strings"
	"sync"
	"unicode/utf8"
)

// Writer is what moat writes to its standard output and error through:
// whatever a command prints (tables, messages, errors holding a line of
// the policy, a blocklist's header, a kernel rule's comment, a process
// name), no control but line feeds and tabs reaches the terminal. It
// drops what Printable drops but '\n' and '\t', and writes invalid UTF-8
// as U+FFFD (a lone byte 0x9b is a CSI to a terminal in 8-bit mode).
// JSON goes through AppendJSON first, so its strings read the same.
//
// A character cut between two writes (a bufio.Writer's full buffer) is
// held until the next; Flush writes what is held.
// It is safe for concurrent use (a child process's stderr is copied to
// it while the command writes).
type Writer struct {
	mu   sync.Mutex
	w    io.Writer
	held [utf8.UTFMax]byte
	nh   int
	buf  []byte
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// plain says whether c is written as it is without a look at what
// follows: printable ASCII, '\n' or '\t'.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x7f; c++ {
		t[c] = true
	}
	t['\n'], t['\t'] = true, true
	return t
}()

// plainPrefix is the length of p's start of plain bytes, tested eight
// at a time ('moat bans --all' writes megabytes of ASCII through the
// Writer). Each byte's test is exact: no carry crosses into the next
// byte (every sum is of bytes under 0x80).
func plainPrefix(p []byte) int {
	const ones, low7, highs = 0x0101010101010101, 0x7f7f7f7f7f7f7f7f, 0x8080808080808080
	const nl, tab = '\n' * ones, '\t' * ones
	i := 0
	for ; i+8 <= len(p); i += 8 {
		x := binary.LittleEndian.Uint64(p[i:])
		lo := x & low7
		ctl := ^(lo + 0x60*ones)                             // low 7 bits under 0x20
		isNL := ^(((x^nl)&low7 + low7) | (x ^ nl))           // a '\n'
		isTab := ^(((x^tab)&low7 + low7) | (x ^ tab))        // a '\t'
		bad := (x | (lo + ones) | ctl&^(isNL|isTab)) & highs // >= 0x80, DEL, another control
		if bad != 0 {
			return i + bits.TrailingZeros64(bad)/8
		}
	}
	for ; i < len(p) && plain[p[i]]; i++ {
	}
	return i
}

// Write writes p without its controls. It returns len(p) when the
// underlying writer took what was left, and the underlying writer's error
// as it is (a closed pipe's EPIPE).
func (t *Writer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nh == 0 {
		if plainPrefix(p) == len(p) {
			if _, err := t.w.Write(p); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	out := t.buf[:0]
	in := p
	if t.nh > 0 {
		// The held bytes begin a character p's first bytes end (rare:
		// only a full buffer cuts one).
		in = append(t.held[:t.nh:t.nh], p...)
		t.nh = 0
	}
	for len(in) > 0 {
		if k := plainPrefix(in); k > 0 {
			// A run of plain bytes at once ('moat status' with a
			// comment in another script: the rest of the chunk is
			// ASCII).
			out = append(out, in[:k]...)
			in = in[k:]
			continue
		}
		c := in[0]
		if c >= utf8.RuneSelf && !utf8.FullRune(in) {
			t.nh = copy(t.held[:], in)
			break
		}
		r, n := utf8.DecodeRune(in)
		out = appendKept(out, r, in[:n])
		in = in[n:]
	}
	t.buf = out[:0]
	if cap(out) > 1<<16 {
		t.buf = nil // keep no large buffer
	}
	if len(out) > 0 {
		if _, err := t.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// appendKept appends the character r (its bytes enc) unless Printable
// drops it; invalid UTF-8 as U+FFFD.
func appendKept(dst []byte, r rune, enc []byte) []byte {
	switch {
	case r == utf8.RuneError && len(enc) == 1:
		return utf8.AppendRune(dst, utf8.RuneError)
	case r == '\n' || r == '\t' || !Dropped(r):
		return append(dst, enc...)
	}
	return dst
}

// Flush writes a character held from the last write, incomplete, as
// Printable does: a U+FFFD for each of its bytes.
func (t *Writer) Flush() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nh == 0 {
		return nil
	}
	n := t.nh
	t.nh = 0
	_, err := t.w.Write([]byte(strings.Repeat(string(utf8.RuneError), n)))
	return err
}

// Verbatim is the writer under w when w is a Writer (what it holds
// flushed first), else w: for output every byte of which is made safe
// already (AppendJSON's, AppendPrintable's), which the Writer would
// only scan again ('moat bans --all' writes megabytes).
func Verbatim(w io.Writer) io.Writer {
	t, ok := w.(*Writer)
	if !ok {
		return w
	}
	_ = t.Flush() // an error shows on the next write
	return t.w
}
