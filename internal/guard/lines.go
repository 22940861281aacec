package guard

import (
	"bufio"
	"errors"
	"io"
)

// lineReader reads newline-terminated lines of at most max bytes. A longer
// line is skipped whole (its head is never taken for a line of its own):
// one hostile or broken line must not stop a reader for good, as
// bufio.Scanner's ErrTooLong does.
type lineReader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// next returns the next line without its end of line, and how many bytes
// it took in the input; tooLong is set (and line nil) for a skipped line.
// At the end of the input, an unterminated last line is returned with
// err == io.EOF.
func (lr *lineReader) next() (line []byte, n int, tooLong bool, err error) {
	lr.buf = lr.buf[:0]
	for {
		chunk, err := lr.r.ReadSlice('\n')
		n += len(chunk)
		if !tooLong {
			if len(lr.buf)+len(chunk) > lr.max+1 { // +1: the newline
				tooLong, lr.buf = true, lr.buf[:0]
			} else {
				lr.buf = append(lr.buf, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if tooLong {
			if err == nil {
				return nil, n, true, nil
			}
			return nil, n, true, err
		}
		return trimEOL(lr.buf), n, false, err
	}
}
