package termtext

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"
)

// hostile are texts an attacker writes into fields moat prints: escape
// sequences (ESC, C1 CSI and OSC), bidi overrides and isolates, DEL,
// NUL, line breaks, invalid UTF-8, HTML, and a very long string.
var hostile = []string{
	"\x1b]0;owned\x07\x1b[2J",
	"x\u009b2J\u0085y\u009d0;t\u009c",
	"evil\u202egnp.exe\u2066x\u2069\u200f\u061c\u202a\u202b\u202c\u202d\u2067\u2068",
	"del\x7f nul\x00 cr\r lf\n tab\t",
	"bad \xff\xfe\x9b utf8 \xc2",
	"<b>&amp;\u2028\u2029</b>",
	"café ✓ 日本",
	strings.Repeat("\u009b31m\x1b[1m", 20000),
}

// noControls fails when out holds a character a terminal takes as a
// control (other than the line breaks and indents allowed), or invalid
// UTF-8.
func noControls(t *testing.T, what string, out []byte, allowed string) {
	t.Helper()
	if !utf8.Valid(out) {
		t.Errorf("%s: invalid UTF-8 printed: %.200q", what, out)
	}
	for _, r := range string(out) {
		if Dropped(r) && !strings.ContainsRune(allowed, r) {
			t.Errorf("%s: %U printed as it is: %.200q", what, r, out)
			return
		}
	}
}

func TestAppendJSONSameStrings(t *testing.T) {
	type rec struct {
		A string            `json:"a"`
		B []string          `json:"b"`
		M map[string]string `json:"m"`
	}
	for _, h := range hostile {
		v := rec{A: h, B: []string{h, "ok"}, M: map[string]string{h: h}}
		want, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		got, err := MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		noControls(t, "MarshalIndent", got, "\n")
		var back, wantBack rec
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%.100q: %v", h, err)
		}
		if err := json.Unmarshal(want, &wantBack); err != nil {
			t.Fatal(err)
		}
		if back.A != wantBack.A || back.B[0] != wantBack.B[0] || back.M[wantBack.A] != wantBack.A {
			t.Errorf("%.100q read back as %.100q, encoding/json's as %.100q", h, back.A, wantBack.A)
		}
		var enc bytes.Buffer
		if err := NewJSONEncoder(&enc).Encode(v); err != nil {
			t.Fatal(err)
		}
		noControls(t, "NewJSONEncoder", enc.Bytes(), "\n")
		q := AppendJSONString([]byte("> "), h)
		noControls(t, "AppendJSONString", q, "")
		var s string
		if err := json.Unmarshal(q[2:], &s); err != nil || s != wantBack.A {
			t.Errorf("AppendJSONString(%.100q) read back as %.100q, %v", h, s, err)
		}
	}
	// Whitespace between tokens other than line feeds and tabs is left out.
	if got := AppendJSON(nil, []byte("{\"a\":\r\n\t\"x\u202e\"\v}")); string(got) != "{\"a\":\n\t\"x\\u202e\"}" {
		t.Errorf("AppendJSON: %q", got)
	}
	// Without such characters the bytes are encoding/json's.
	plainV := map[string]any{"a": "x<y>&z\n\x01", "b": []int{1, 2}, "c": "café ✓"}
	want, _ := json.MarshalIndent(plainV, "", "  ")
	got, _ := MarshalIndent(plainV, "", "  ")
	if !bytes.Equal(want, got) {
		t.Errorf("bytes changed:\n%s\n%s", want, got)
	}
}

func TestWriterNoControls(t *testing.T) {
	for _, h := range hostile {
		want := strings.Map(func(r rune) rune {
			if r == '\n' || r == '\t' || !Dropped(r) {
				return r
			}
			return -1
		}, h)
		// Whole, and cut at every byte (a full bufio buffer cuts a character).
		for cut := 0; cut <= len(h) && cut < 64; cut++ {
			var out bytes.Buffer
			w := NewWriter(&out)
			for _, part := range []string{h[:cut], h[cut:], "|end\n"} {
				if n, err := w.Write([]byte(part)); err != nil || n != len(part) {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			noControls(t, "Writer", out.Bytes(), "\n\t")
			if out.String() != want+"|end\n" {
				t.Errorf("cut %d: %.100q printed as %.100q, want %.100q", cut, h, out.String(), want+"|end\n")
			}
		}
	}
	// Plain text passes unchanged; a character left cut at the end is a U+FFFD a byte.
	var out bytes.Buffer
	w := NewWriter(&out)
	_, _ = w.Write([]byte("a\tb\n"))
	_, _ = w.Write([]byte("\xe6\x97"))
	if err := w.Flush(); err != nil || out.String() != "a\tb\n\ufffd\ufffd" {
		t.Errorf("got %q, %v", out.String(), err)
	}
}

type epipe struct{}

func (epipe) Write([]byte) (int, error) { return 0, syscall.EPIPE }

// The underlying writer's error comes back as it is: 'moat bans --all |
// head' ends quietly on EPIPE.
func TestWriterKeepsError(t *testing.T) {
	w := NewWriter(epipe{})
	for _, s := range []string{"plain\n", "x\u009by\n"} {
		if _, err := w.Write([]byte(s)); !errors.Is(err, syscall.EPIPE) {
			t.Errorf("Write(%q) = %v, want EPIPE", s, err)
		}
	}
	if err := NewJSONEncoder(epipe{}).Encode("x\u202e"); !errors.Is(err, syscall.EPIPE) {
		t.Errorf("Encode = %v, want EPIPE", err)
	}
}

// BenchmarkWriter is the cost the Writer adds to a listing of plain text
// ('moat bans --all': 64 KiB writes of ASCII), per byte; utf8 is the
// same with a character past ASCII in each line (a rule's comment in
// another script), which takes the Writer's slower path.
func BenchmarkWriter(b *testing.B) {
	b.Run("ascii", func(b *testing.B) {
		benchWriter(b, "192.0.2.1        guard: 5 failures in 10m0s   3599  1\n")
	})
	b.Run("utf8", func(b *testing.B) {
		benchWriter(b, "allow 22/tcp from 192.0.2.1   # hôte d'administration\n")
	})
}

func benchWriter(b *testing.B, line string) {
	chunk := []byte(strings.Repeat(line, 64<<10/len(line)))
	w := NewWriter(io.Discard)
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		if _, err := w.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
}

// plainPrefix's eight-at-a-time test agrees with the table at every
// byte value in every position.
func TestPlainPrefix(t *testing.T) {
	base := []byte("abcdefgh\tjklmnop\nrstuvwxyz0123456")
	for c := 0; c < 256; c++ {
		for pos := range base {
			p := append([]byte(nil), base...)
			p[pos] = byte(c)
			want := 0
			for want < len(p) && plain[p[want]] {
				want++
			}
			if got := plainPrefix(p); got != want {
				t.Fatalf("byte %#x at %d: %d, want %d", c, pos, got, want)
			}
		}
	}
	// Random words, mostly of bytes near the edges.
	rng := rand.New(rand.NewPCG(1, 2))
	edge := []byte{0, '\t', '\n', 0x0b, 0x1f, ' ', '~', 0x7f, 0x80, 0x89, 0x8a, 0x9f, 0xa0, 0xff, 'a'}
	for range 200000 {
		p := make([]byte, 16)
		for i := range p {
			p[i] = edge[rng.IntN(len(edge))]
		}
		want := 0
		for want < len(p) && plain[p[want]] {
			want++
		}
		if got := plainPrefix(p); got != want {
			t.Fatalf("%q: %d, want %d", p, got, want)
		}
	}
}

// For any text: AppendJSONString reads back as encoding/json's string and
// holds no control; the Writer, given it in two parts cut anywhere,
// prints what Printable keeps (line feeds and tabs too) and no control.
func FuzzEscapes(f *testing.F) {
	for _, h := range hostile[:len(hostile)-1] {
		f.Add(h, uint8(3))
	}
	f.Fuzz(func(t *testing.T, s string, cut uint8) {
		q := AppendJSONString(nil, s)
		noControls(t, "AppendJSONString", q, "")
		var back, want string
		w, _ := json.Marshal(s)
		if err := json.Unmarshal(w, &want); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(q, &back); err != nil || back != want {
			t.Fatalf("%q read back as %q (%v), want %q", s, back, err, want)
		}
		c := min(int(cut), len(s))
		var out bytes.Buffer
		tw := NewWriter(&out)
		_, _ = tw.Write([]byte(s[:c]))
		_, _ = tw.Write([]byte(s[c:]))
		_ = tw.Flush()
		noControls(t, "Writer", out.Bytes(), "\n\t")
		keep := strings.Map(func(r rune) rune {
			if r == '\n' || r == '\t' || !Dropped(r) {
				return r
			}
			return -1
		}, s)
		if out.String() != keep {
			t.Fatalf("%q cut at %d printed as %q, want %q", s, c, out.String(), keep)
		}
	})
}
