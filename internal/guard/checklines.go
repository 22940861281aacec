package guard

import (
	"errors"
	"io"
	"strings"
)

// ReadLines calls fn with each line of r as the guard's sources take it
// ('moat guard check' reads this way, so it judges what the guard
// judges): a journal entry (a line starting with '{', after journalctl's
// json-seq record separator) of up to 4 MiB, another line of up to 64 KiB.
// A longer line is not parsed: fn gets it empty, with skip set to
// SkipTooLong, and reading goes on.
func ReadLines(r io.Reader, fn func(line, skip string) error) error {
	lr := newLineReader(r, maxJournalLine)
	for {
		data, n, tooLong, err := lr.next()
		if n > 0 {
			line, skip := strings.TrimPrefix(string(data), "\x1e"), ""
			if tooLong || len(line) > maxLine && !strings.HasPrefix(line, "{") {
				line, skip = "", SkipTooLong
			}
			if ferr := fn(line, skip); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
