package guard

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/moat-fw/moat/internal/boundedfile"
)

// Line is one log line from a source, with where to resume after it.
type Line struct {
	Text string
	Prog string    // the program, when the source knows it (journald)
	PID  int       // the program's process, when the source knows it (journald)
	Time time.Time // when the line was written, if known; else when read
	// Resume position after this line.
	Cursor string
	File   *FilePos
	// Skip, when set, says why the source passed the line over (it is not
	// parsed; it still moves the resume position): SkipTooLong,
	// SkipUntrusted.
	Skip string
}

// Reasons a line is skipped (the moat_guard_lines_skipped_total label).
const (
	SkipTooLong   = "too_long"
	SkipUntrusted = "untrusted"
)

// maxLine bounds a log file's line. sshd writes lines of at most about
// 1 KB (OpenSSH's log buffer), so a longer line is not sshd's: it is
// skipped whole, never cut and parsed.
const maxLine = 64 << 10

// FileSource follows a log file across rotation by rename (logrotate's
// default: the file is renamed and a new one created) and by truncation
// (copytruncate), without losing or re-reading lines.
type FileSource struct {
	Path string
	// From is where to resume (nil: at the end of the file, as a new
	// follower should not ban for old lines).
	From *FilePos
	// Poll is how often the file is checked besides inotify events.
	Poll time.Duration

	followOnce sync.Once
	following  chan struct{}
}

// Following is closed once Run has the file open where it reads from (or
// found none: a file made later is read from its start): every line
// written after that is read. Run opens it on its own goroutine, later
// than it starts.
func (s *FileSource) Following() <-chan struct{} {
	s.followOnce.Do(func() { s.following = make(chan struct{}) })
	return s.following
}

// beforeOpen, in tests, runs before Run opens the file (a slow start).
var beforeOpen func()

type openFile struct {
	f      *os.File
	r      *bufio.Reader
	inode  uint64
	offset int64
	buf    []byte // an incomplete last line
	long   bool   // the line being read is past maxLine: skip it
}

func inodeOf(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

func (s *FileSource) open(resume bool) (*openFile, error) {
	// O_NONBLOCK: opening a FIFO for reading would wait for a writer,
	// and hang the guard where anyone who may write the log's directory
	// put one. Only a regular file is a log.
	f, fi, err := boundedfile.Open(s.Path)
	if notReg := (*boundedfile.NotRegularError)(nil); errors.As(err, &notReg) {
		return nil, fmt.Errorf("not a regular file (mode %s): not a log", notReg.Mode)
	}
	if err != nil {
		return nil, err
	}
	o := &openFile{f: f, inode: inodeOf(fi)}
	switch {
	case !resume:
		// A new file after rotation: read it from the start.
	case s.From != nil && s.From.Inode == o.inode && s.From.Offset <= fi.Size():
		o.offset = s.From.Offset
	case s.From != nil && s.From.Inode == o.inode:
		o.offset = 0 // truncated while we were away
	case s.From != nil:
		o.offset = 0 // rotated while we were away: the new file is all new
	default:
		o.offset = fi.Size()
	}
	if _, err := f.Seek(o.offset, io.SeekStart); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	o.r = bufio.NewReaderSize(f, 64<<10)
	return o, nil
}

// drain sends every complete line from the current offset on.
func (s *FileSource) drain(ctx context.Context, o *openFile, out chan<- Line) error {
	for {
		chunk, err := o.r.ReadSlice('\n')
		if !o.long && len(o.buf)+len(chunk) > maxLine+2 { // +2: CR LF
			o.long, o.buf = true, o.buf[:0]
		}
		if !o.long {
			o.buf = append(o.buf, chunk...)
		}
		o.offset += int64(len(chunk))
		if err == nil {
			l := Line{Text: string(trimEOL(o.buf)), Time: time.Now(), File: &FilePos{Path: s.Path, Inode: o.inode, Offset: o.offset}}
			if o.long {
				l.Skip = SkipTooLong
			}
			o.buf, o.long = o.buf[:0], false
			select {
			case out <- l:
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
}

func trimEOL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// Run sends lines until ctx ends.
func (s *FileSource) Run(ctx context.Context, out chan<- Line) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("follow %s: %w", s.Path, err)
	}
	defer func() { _ = w.Close() }() // stops watching; nothing to lose
	// Watch the directory: renames and re-creations of the file show there.
	if err := w.Add(filepath.Dir(s.Path)); err != nil {
		return fmt.Errorf("follow %s: %w", s.Path, err)
	}
	if beforeOpen != nil {
		beforeOpen()
	}
	cur, err := s.open(true)
	if err == nil || errors.Is(err, os.ErrNotExist) {
		s.Following()
		close(s.following)
	}
	for err != nil {
		// The file may not exist yet (a fresh system); wait for it.
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("follow %s: %w", s.Path, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		cur, err = s.open(false)
	}
	defer func() { _ = cur.f.Close() }() // read only
	poll := s.Poll
	if poll == 0 {
		poll = time.Second
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	check := func() error {
		// Truncated (copytruncate)? Start over at the beginning.
		if fi, err := cur.f.Stat(); err == nil && fi.Size() < cur.offset {
			if _, err := cur.f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			cur.offset, cur.buf, cur.long = 0, cur.buf[:0], false
			cur.r.Reset(cur.f)
		}
		if err := s.drain(ctx, cur, out); err != nil {
			return err
		}
		// Replaced (rename and create)? Finish the old file, then the new.
		fi, err := os.Stat(s.Path)
		if err != nil || inodeOf(fi) == cur.inode {
			return nil
		}
		next, err := s.open(false)
		if err != nil {
			return nil // not there yet; the next event or tick retries
		}
		// Lines may have reached the old file since the drain above (the
		// writer reopens only after the rename): take them first.
		if err := s.drain(ctx, cur, out); err != nil {
			return errors.Join(err, next.f.Close())
		}
		if err := cur.f.Close(); err != nil {
			return err
		}
		cur = next
		return s.drain(ctx, cur, out)
	}
	if err := check(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("follow: watcher closed")
			}
			if filepath.Clean(ev.Name) != filepath.Clean(s.Path) {
				continue
			}
		case err := <-w.Errors:
			return fmt.Errorf("follow %s: %w", s.Path, err)
		case <-tick.C:
		}
		if err := check(); err != nil {
			return fmt.Errorf("follow %s: %w", s.Path, err)
		}
	}
}
