package guard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path"
	"strconv"
	"strings"
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

// maxJournalLine bounds one entry of `journalctl -o json`. sshd's
// messages are about 1 KB; an entry past this is skipped (and counted),
// and the guard reads on.
const maxJournalLine = 4 << 20

// Args are journalctl's arguments: follow, JSON, sshd's messages only
// (OpenSSH 9.8 logs from sshd-session) written by root, from the cursor or
// the end. journalctl ORs matches of one field and ANDs fields; the entries
// are checked again (Trusted) whatever journalctl returns.
func (s *JournalSource) Args() []string {
	args := []string{"--follow", "--output=json", "--no-pager", "--quiet"}
	if s.Cursor != "" {
		args = append(args, "--after-cursor="+s.Cursor)
	} else {
		args = append(args, "--lines=0")
	}
	return append(args, "SYSLOG_IDENTIFIER=sshd", "SYSLOG_IDENTIFIER=sshd-session", "SYSLOG_IDENTIFIER=dropbear", "_UID=0")
}

// journalEntry holds the fields moat reads. MESSAGE is a string, or an
// array of bytes when it is not valid UTF-8. Fields starting with "_" are
// trusted: journald sets them from the kernel's view of the sender, and
// drops any a client sends.
type journalEntry struct {
	Message    json.RawMessage `json:"MESSAGE"`
	Identifier string          `json:"SYSLOG_IDENTIFIER"`
	Comm       string          `json:"_COMM"`
	PID        string          `json:"_PID"`
	SyslogPID  string          `json:"SYSLOG_PID"`
	Exe        string          `json:"_EXE"`
	UID        string          `json:"_UID"`
	Unit       string          `json:"_SYSTEMD_UNIT"`
	Cursor     string          `json:"__CURSOR"`
	Realtime   string          `json:"__REALTIME_TIMESTAMP"`
}

// sshdUnit reports whether a systemd unit is one that runs sshd or
// dropbear: ssh.service (Debian), sshd.service (Red Hat, Arch),
// dropbear.service, and the per-connection instances of socket
// activation (sshd@N-ADDR:22-ADDR:PORT.service).
func sshdUnit(u string) bool {
	base, ok := strings.CutSuffix(u, ".service")
	if !ok {
		return false
	}
	if i := strings.IndexByte(base, '@'); i >= 0 {
		base = base[:i]
	}
	return base == "ssh" || base == "sshd" || base == "dropbear"
}

// Trusted reports whether an entry comes from sshd (or dropbear) itself,
// judged only by fields journald sets and a local user cannot forge:
// written by root (_UID=0; `logger -t sshd` run by a user has his own UID),
// and by a process that is sshd (_COMM or _EXE, which a user cannot give a
// root process) or that runs in sshd's unit (_SYSTEMD_UNIT). sshd's
// unprivileged pre-auth child logs through its root monitor, so sshd's
// messages are root's. SYSLOG_IDENTIFIER, which any sender chooses, is not
// evidence.
func (e *journalEntry) Trusted() bool {
	if e.UID != "0" {
		return false
	}
	// ourProgs: the names of sshd's and dropbear's processes and binaries.
	return ourProgs[e.Comm] || (e.Exe != "" && ourProgs[path.Base(e.Exe)]) || sshdUnit(e.Unit)
}

// ErrUntrusted marks a journal entry that does not come from sshd.
var ErrUntrusted = errors.New("journal entry: not written by sshd (the _UID, _COMM, _EXE and _SYSTEMD_UNIT journald recorded are not sshd's)")

// ParseJournalEntry turns one line of `journalctl -o json` into a Line.
// It reads any entry (for 'moat guard check'); the guard itself uses
// ParseTrustedJournalEntry.
func ParseJournalEntry(data []byte) (Line, error) {
	l, _, err := parseJournalEntry(data)
	return l, err
}

// ParseTrustedJournalEntry is ParseJournalEntry for entries sshd wrote
// only: others give the Line (with its cursor) and ErrUntrusted.
func ParseTrustedJournalEntry(data []byte) (Line, error) {
	l, e, err := parseJournalEntry(data)
	if err == nil && !e.Trusted() {
		return l, ErrUntrusted
	}
	return l, err
}

func parseJournalEntry(data []byte) (Line, *journalEntry, error) {
	var e journalEntry
	if err := json.Unmarshal(data, &e); err != nil {
		return Line{}, nil, fmt.Errorf("journal entry: %w", err)
	}
	var msg string
	if err := json.Unmarshal(e.Message, &msg); err != nil {
		var raw []byte
		var ints []int
		if err := json.Unmarshal(e.Message, &ints); err != nil {
			return Line{}, nil, fmt.Errorf("journal entry: MESSAGE is neither text nor bytes")
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
	return l, &e, nil
}

// Run starts journalctl and sends its entries until ctx ends or journalctl
// exits (an error: the service is restarted by its supervisor). Entries
// not written by sshd, and entries longer than maxJournalLine, are passed
// on as skipped lines, so they are counted and the cursor moves past them.
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
	lr := newLineReader(stdout, maxJournalLine)
	var rerr error
	for {
		data, _, tooLong, err := lr.next()
		var l Line
		send := true
		switch {
		case tooLong:
			l = Line{Skip: SkipTooLong, Time: time.Now()}
		case len(data) == 0:
			send = false
		default:
			var perr error
			l, perr = ParseTrustedJournalEntry(data)
			if errors.Is(perr, ErrUntrusted) {
				l = Line{Skip: SkipUntrusted, Cursor: l.Cursor, Time: l.Time}
			} else if perr != nil {
				send = false // one odd entry must not stop the guard
			}
		}
		if send {
			select {
			case out <- l:
			case <-ctx.Done():
				// journalctl is killed with the context; its exit status
				// says only that.
				_ = cmd.Wait()
				return ctx.Err()
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				rerr = err
			}
			break
		}
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil {
		err = rerr
	}
	if err == nil {
		err = errors.New("exited")
	}
	return fmt.Errorf("%s: %w", prog, err)
}
