package cli

import (
	"bufio"
	"errors"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/termtext"
)

// The listing of 'moat bans' is written as it is made: with 200,000 bans
// a table built whole (text/tabwriter holds every cell until it is
// flushed) and a JSON document built whole cost more than the kernel's
// read, and every row went to the terminal in five unbuffered writes.
// The bytes are those text/tabwriter and encoding/json printed, but for
// the terminal's controls in a JSON reason, now escaped
// (TestBanListingSameBytes, termtext.AppendJSONString).

// banRow is one ban as 'moat bans' shows it.
type banRow struct {
	addr     netip.Addr
	reason   string
	left     int64 // whole seconds; permanentLeft: no timeout
	banCount int
}

// banRows sorts bans by address (once) and gives each its count and the
// reason shown (the kernel's port scan trap adds bans without one).
func banRows(bans []ruleset.Ban, counts map[netip.Addr]int) []banRow {
	slices.SortFunc(bans, func(x, y ruleset.Ban) int { return x.Addr.Compare(y.Addr) })
	rows := make([]banRow, len(bans))
	for i, b := range bans {
		r := b.Reason
		if r == "" {
			r = ruleset.ReasonPortscan
		}
		left := int64(b.Expires.Seconds())
		if b.Expires == 0 && b.Timeout == 0 {
			// An element without a timeout (added by hand): it never
			// expires. A ban with one is read back with its time left
			// (ipset says 1 s until it runs out; nft its timeout too).
			left = permanentLeft
		}
		rows[i] = banRow{addr: b.Addr, reason: r, left: left, banCount: counts[b.Addr]}
	}
	return rows
}

// Columns of the ban table: what text/tabwriter.NewWriter(w, 2, 8, 2,
// ' ', 0) made of them (each column as wide as its widest cell plus 2,
// the last one not padded).
const banTablePad = 2

var banTableHead = [...]string{"ADDRESS", "TIME LEFT", "BANS", "REASON"}

// writeBanRows prints the bans as a table through one buffer. A reason is
// the comment of a ban set's element, which anyone with nft or ipset can
// write: its control characters (an escape sequence, a line break or a
// tab that would fake a row or a column) are dropped.
func writeBanRows(w io.Writer, rows []banRow) error {
	// The widths first: one pass over the rows, nothing kept.
	var num [64]byte
	wAddr, wLeft, wCount := len(banTableHead[0]), len(banTableHead[1]), len(banTableHead[2])
	for i := range rows {
		r := &rows[i]
		wAddr = max(wAddr, len(r.addr.AppendTo(num[:0])))
		wLeft = max(wLeft, len(leftText(num[:0], r.left)))
		wCount = max(wCount, len(strconv.AppendInt(num[:0], int64(r.banCount), 10)))
	}
	// Every cell is ASCII or AppendPrintable's: the terminal's filter
	// (termtext.Writer) would only scan the megabytes again.
	bw := bufio.NewWriterSize(termtext.Verbatim(w), 64<<10)
	line := make([]byte, 0, 256)
	line = padCell(line, []byte(banTableHead[0]), wAddr)
	line = padCell(line, []byte(banTableHead[1]), wLeft)
	line = padCell(line, []byte(banTableHead[2]), wCount)
	line = append(line, banTableHead[3]...)
	line = append(line, '\n')
	if _, err := bw.Write(line); err != nil {
		return err
	}
	for i := range rows {
		r := &rows[i]
		line = padCell(line[:0], r.addr.AppendTo(num[:0]), wAddr)
		line = padCell(line, leftText(num[:0], r.left), wLeft)
		line = padCell(line, strconv.AppendInt(num[:0], int64(r.banCount), 10), wCount)
		line = termtext.AppendPrintable(line, r.reason)
		line = append(line, '\n')
		if _, err := bw.Write(line); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// permanentLeft is banRow.left of a ban without a timeout.
const permanentLeft = -1

// leftText is the time left as the table shows it (a time.Duration's
// text: 1h2m3s; "permanent" for a ban without a timeout, which showed as
// 0s, as if it ran out at once).
func leftText(dst []byte, secs int64) []byte {
	if secs == permanentLeft {
		return append(dst, "permanent"...)
	}
	return append(dst, (time.Duration(secs) * time.Second).String()...)
}

// padCell appends a cell padded to the column's width (ASCII cells: a
// width in bytes is one in runes, which text/tabwriter counts).
func padCell(dst, cell []byte, width int) []byte {
	dst = append(dst, cell...)
	for n := utf8.RuneCount(cell); n < width+banTablePad; n++ {
		dst = append(dst, ' ')
	}
	return dst
}

// writeBanJSON prints the bans as the JSON array of banJSON that
// json.Encoder with a two-space indent printed, one ban at a time (the
// reasons as termtext.AppendJSONString writes them).
func writeBanJSON(w io.Writer, rows []banRow) error {
	bw := bufio.NewWriterSize(termtext.Verbatim(w), 64<<10) // AppendJSONString's
	if len(rows) == 0 {
		_, err := bw.WriteString("[]\n")
		if err != nil {
			return err
		}
		return bw.Flush()
	}
	line := make([]byte, 0, 256)
	line = append(line, "[\n"...)
	for i := range rows {
		r := &rows[i]
		line = append(line, "  {\n    \"address\": \""...)
		line = r.addr.AppendTo(line)
		line = append(line, "\",\n    \"reason\": "...)
		line = termtext.AppendJSONString(line, r.reason)
		line = append(line, ",\n    \"seconds_left\": "...)
		if r.left == permanentLeft {
			// 0 as before, and said: it never runs out.
			line = append(line, "0,\n    \"permanent\": true"...)
		} else {
			line = strconv.AppendInt(line, r.left, 10)
		}
		line = append(line, ",\n    \"ban_count\": "...)
		line = strconv.AppendInt(line, int64(r.banCount), 10)
		line = append(line, "\n  }"...)
		if i < len(rows)-1 {
			line = append(line, ',')
		}
		line = append(line, '\n')
		if _, err := bw.Write(line); err != nil {
			return err
		}
		line = line[:0]
	}
	if _, err := bw.WriteString("]\n"); err != nil {
		return err
	}
	return bw.Flush()
}

// exitBrokenPipe is the exit code of a listing whose reader went away:
// the shell's for a command killed by SIGPIPE (128+13), which is how it
// ends when SIGPIPE is not ignored.
const exitBrokenPipe = 141

// errSilent is an error run does not print.
var errSilent = errors.New("(not printed)")

// quietPipe makes a listing read by a program that stopped reading
// ('moat bans --all | head') end quietly: a write to a closed pipe with
// SIGPIPE ignored fails with EPIPE, which is not the admin's error.
func quietPipe(err error) error {
	if errors.Is(err, syscall.EPIPE) {
		return &exitError{code: exitBrokenPipe, err: errSilent}
	}
	return err
}
