package guard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"time"
)

// JournalSource follows journald through `journalctl -f -o json` (no cgo,
// no libsystemd), for sshd's messages, resuming after a saved cursor.
type JournalSource struct {
	// Journalctl is the program to run (default "journalctl").
	Journalctl string
	// Cursor resumes after this entry; empty starts at the end.
	Cursor string
}

// Args are journalctl's arguments: follow, JSON, sshd's messages only
// (OpenSSH 9.8 logs from sshd-session), from the cursor or the end.
func (s *JournalSource) Args() []string {
	args := []string{"--follow", "--output=json", "--no-pager", "--quiet"}
	if s.Cursor != "" {
		args = append(args, "--after-cursor="+s.Cursor)
	} else {
		args = append(args, "--lines=0")
	}
	return append(args, "SYSLOG_IDENTIFIER=sshd", "SYSLOG_IDENTIFIER=sshd-session", "SYSLOG_IDENTIFIER=dropbear")
}

// journalEntry holds the fields moat reads. MESSAGE is a string, or an
// array of bytes when it is not valid UTF-8.
type journalEntry struct {
	Message    json.RawMessage `json:"MESSAGE"`
	Identifier string          `json:"SYSLOG_IDENTIFIER"`
	Comm       string          `json:"_COMM"`
	PID        string          `json:"_PID"`
	SyslogPID  string          `json:"SYSLOG_PID"`
	Cursor     string          `json:"__CURSOR"`
	Realtime   string          `json:"__REALTIME_TIMESTAMP"`
}

// ParseJournalEntry turns one line of `journalctl -o json` into a Line.
func ParseJournalEntry(data []byte) (Line, error) {
	var e journalEntry
	if err := json.Unmarshal(data, &e); err != nil {
		return Line{}, fmt.Errorf("journal entry: %w", err)
	}
	var msg string
	if err := json.Unmarshal(e.Message, &msg); err != nil {
		var raw []byte
		var ints []int
		if err := json.Unmarshal(e.Message, &ints); err != nil {
			return Line{}, fmt.Errorf("journal entry: MESSAGE is neither text nor bytes")
		}
		for _, n := range ints {
			raw = append(raw, byte(n))
		}
		msg = string(raw)
	}
	l := Line{Text: msg, Prog: e.Identifier, Cursor: e.Cursor, Time: time.Now()}
	if l.Prog == "" {
		l.Prog = e.Comm
	}
	// The process, which ties the lines of one sshd connection together.
	for _, p := range []string{e.PID, e.SyslogPID} {
		if n, err := strconv.Atoi(p); err == nil && n > 0 {
			l.PID = n
			break
		}
	}
	if us, err := strconv.ParseInt(e.Realtime, 10, 64); err == nil {
		l.Time = time.UnixMicro(us)
	}
	return l, nil
}

// Run starts journalctl and sends its entries until ctx ends or journalctl
// exits (an error: the service is restarted by its supervisor).
func (s *JournalSource) Run(ctx context.Context, out chan<- Line) error {
	prog := s.Journalctl
	if prog == "" {
		prog = "journalctl"
	}
	cmd := exec.CommandContext(ctx, prog, s.Args()...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", prog, err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 256<<10), 4<<20)
	for sc.Scan() {
		l, err := ParseJournalEntry(sc.Bytes())
		if err != nil {
			continue // one odd entry must not stop the guard
		}
		select {
		case out <- l:
		case <-ctx.Done():
			// journalctl is killed with the context; its exit status
			// says only that.
			_ = cmd.Wait()
			return ctx.Err()
		}
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil {
		err = errors.New("exited")
	}
	return fmt.Errorf("%s: %w", prog, err)
}
