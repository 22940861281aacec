package cli

import (
	"bufio"
	"bytes"
	"fmt"
	"io"

	"github.com/moat-fw/moat/internal/termtext"
)

// rulesNull is how the report's rules read, indented, when they are left
// out: a key at depth 1 starts a line, which no string can (encoding/json
// escapes every newline inside one), so this marks that one place.
const rulesNull = "\n  \"rules\": null,\n"

// writeStatusJSON writes the report as printJSON does (two-space indent,
// HTML and the terminal's controls escaped, a newline at the end), byte for byte, but encodes the
// rules one at a time as it writes them: encoding/json builds the whole
// document and then its indented copy in memory, 50 MB each at 100,000
// rules.
func writeStatusJSON(w io.Writer, rep *statusReport) error {
	rules := rep.Rules
	if len(rules) == 0 {
		enc := termtext.NewJSONEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	rep.Rules = nil
	head, err := termtext.MarshalIndent(rep, "", "  ")
	rep.Rules = rules
	if err != nil {
		return fmt.Errorf("status json: %w", err)
	}
	i := bytes.Index(head, []byte(rulesNull))
	if i < 0 || bytes.Count(head, []byte(rulesNull)) != 1 {
		return fmt.Errorf("status json: no single rules field in the report")
	}
	// bufio keeps the first write error and Flush returns it; each write
	// checks it too, so a closed pipe stops the loop at once.
	bw := bufio.NewWriterSize(termtext.Verbatim(w), 64<<10) // termtext.MarshalIndent's
	put := func(b []byte) error {
		if _, err := bw.Write(b); err != nil {
			return fmt.Errorf("status json: %w", err)
		}
		return nil
	}
	if err := put(append(head[:i:i], "\n  \"rules\": [\n    "...)); err != nil {
		return err
	}
	for n := range rules {
		b, err := termtext.MarshalIndent(&rules[n], "    ", "  ")
		if err != nil {
			return fmt.Errorf("status json: rule %d: %w", n+1, err)
		}
		if n > 0 {
			b = append([]byte(",\n    "), b...)
		}
		if err := put(b); err != nil {
			return err
		}
	}
	if err := put(append([]byte("\n  ],\n"), head[i+len(rulesNull):]...)); err != nil {
		return err
	}
	if err := put([]byte("\n")); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("status json: %w", err)
	}
	return nil
}
