package blocklist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/statedir"
	"github.com/moat-fw/moat/internal/termtext"
)

// DefaultTimeout bounds one download, connection to last byte.
const DefaultTimeout = 60 * time.Second

// Fetcher downloads lists over HTTPS.
type Fetcher struct {
	// Client does the requests; nil is a client with Timeout that refuses
	// redirects away from https.
	Client    *http.Client
	Timeout   time.Duration // 0: DefaultTimeout
	MaxBytes  int64         // 0: MaxFileSize
	UserAgent string
}

func (f *Fetcher) client() *http.Client {
	if f.Client != nil {
		return f.Client
	}
	return &http.Client{Timeout: f.timeout(), CheckRedirect: httpsOnly}
}

func (f *Fetcher) timeout() time.Duration {
	if f.Timeout > 0 {
		return f.Timeout
	}
	return DefaultTimeout
}

// httpsOnly follows at most 5 redirects, all to https.
func httpsOnly(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("more than 5 redirects")
	}
	if req.URL.Scheme != "https" {
		return fmt.Errorf("redirected to %s, which is not https", req.URL.Redacted())
	}
	return nil
}

// Response is a download's outcome.
type Response struct {
	NotModified  bool
	Body         []byte
	ETag         string
	LastModified string
}

// Fetch downloads url. With an ETag or Last-Modified from the last
// download it asks conditionally, and a 304 means the saved copy is
// current.
func (f *Fetcher) Fetch(ctx context.Context, url string, m Meta) (*Response, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	if f.UserAgent != "" {
		req.Header.Set("User-Agent", f.UserAgent)
	}
	if m.ETag != "" {
		req.Header.Set("If-None-Match", m.ETag)
	}
	if m.LastModified != "" {
		req.Header.Set("If-Modified-Since", m.LastModified)
	}
	resp, err := f.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, peerText(err))
	}
	defer func() { _ = resp.Body.Close() }() // read below; a close error loses nothing
	switch {
	case resp.StatusCode == http.StatusNotModified:
		return &Response{NotModified: true, ETag: validator(resp.Header.Get("ETag")), LastModified: validator(resp.Header.Get("Last-Modified"))}, nil
	case resp.StatusCode != http.StatusOK:
		// resp.Status carries the server's own reason phrase (any bytes).
		return nil, fmt.Errorf("fetch %s: server answered %d %s", url, resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	max := f.MaxBytes
	if max <= 0 {
		max = MaxFileSize
	}
	if resp.ContentLength > max {
		return nil, fmt.Errorf("fetch %s: %d bytes, more than the %d bytes allowed", url, resp.ContentLength, max)
	}
	var body bytes.Buffer
	n, err := io.Copy(&body, io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, peerText(err))
	}
	if n > max {
		return nil, fmt.Errorf("fetch %s: more than the %d bytes allowed", url, max)
	}
	return &Response{Body: body.Bytes(), ETag: validator(resp.Header.Get("ETag")), LastModified: validator(resp.Header.Get("Last-Modified"))}, nil
}

// peerError is an error whose text holds what the server sent (a name of
// its certificate: "x509: certificate is valid for NAME, not HOST"), with
// the characters that break a line escaped and terminal controls dropped
// (termtext.Printable): printed in 'moat blocklist update', saved as the
// list's last problem and shown by 'moat blocklist list', a line feed in
// it started a line of the server's own.
type peerError struct {
	err  error
	text string
}

func (e *peerError) Error() string { return e.text }
func (e *peerError) Unwrap() error { return e.err }

// peerText is err, its text made printable on one line if it is not.
func peerText(err error) error {
	if t := termtext.Printable(err.Error()); t != err.Error() {
		return &peerError{err: err, text: t}
	}
	return err
}

// validator keeps an ETag or Last-Modified the server sent only if it can
// be sent back as a header: printable ASCII, at most 256 bytes. Anything
// else is dropped (the next request is unconditional), so a hostile
// server cannot make every later request fail.
func validator(v string) string {
	if len(v) > 256 {
		return ""
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return ""
		}
	}
	return v
}

// Result is what an update of one list did.
type Result struct {
	Name        string
	NotModified bool // the source had not changed (HTTP 304, or the same contents)
	New         *List
	// Add and Del are the networks the new list adds to the saved copy
	// and takes out of it (Diff of the two, in order).
	Add, Del []netip.Prefix
	Meta     Meta
	// data is New's canonical form (what SaveResult writes), when known.
	data []byte
}

// Update reads a list's source (a download for url lists, the file for
// file lists), checks it, and returns the new contents and the difference
// to the saved copy. Nothing is saved: the caller saves the new copy
// (SaveResult) once the kernel has it. On any failure the saved copy stays
// as it was and the error says so.
//
// The saved copy is parsed only when it is needed whole (a 304, or a
// copy that is not moat's canonical form): a new list is compared with it
// through their canonical forms, which are equal exactly when the
// networks are, and whose lines differ only where networks were added or
// removed (diffCanonical).
func Update(ctx context.Context, stateDir string, bl *policy.Blocklist, f *Fetcher, pr Protect, now time.Time) (*Result, error) {
	m, _ := ReadMeta(stateDir, bl.Name)
	if m.Where != bl.Where() {
		m = Meta{Name: bl.Name}
	}
	oldData, have, _ := readCacheData(stateDir, bl.Name, m)
	if !have || m.SHA256 == "" {
		oldData, have, m.ETag, m.LastModified = nil, false, "", ""
	}
	oldList := func() (*List, bool) {
		if !have {
			return &List{}, false
		}
		l, err := parseCache(stateDir, bl.Name, oldData)
		if err != nil {
			return &List{}, false
		}
		return l, true
	}
	m.Name, m.Source, m.Where, m.Attempted = bl.Name, string(bl.Source), bl.Where(), now
	fail := func(err error) (*Result, error) {
		m.LastError = err.Error()
		_ = WriteMeta(stateDir, m)
		if _, ok := oldList(); ok {
			return nil, fmt.Errorf("%w; keeping the copy of %s (%d networks)", err, m.Updated.Format(time.RFC3339), m.Networks)
		}
		return nil, fmt.Errorf("%w; the list stays empty until an update succeeds", err)
	}
	var l *List
	var err error
	switch bl.Source {
	case policy.BlocklistURL:
		resp, ferr := f.Fetch(ctx, bl.URL, m)
		if ferr != nil {
			return fail(fmt.Errorf("blocklist %s: %w", bl.Name, ferr))
		}
		if resp.NotModified {
			if _, ok := oldList(); !ok && have {
				// A saved copy that its checksum vouches for but that
				// does not parse: fetched again, unconditionally.
				have, oldData = false, nil
				m.ETag, m.LastModified = "", ""
				if resp, ferr = f.Fetch(ctx, bl.URL, m); ferr != nil {
					return fail(fmt.Errorf("blocklist %s: %w", bl.Name, ferr))
				}
			}
		}
		if resp.NotModified {
			old, ok := oldList()
			if !ok {
				return fail(fmt.Errorf("blocklist %s: the server answered 304 Not Modified, but there is no saved copy", bl.Name))
			}
			m.Checked, m.LastError = now, ""
			if resp.ETag != "" {
				m.ETag = resp.ETag
			}
			return &Result{Name: bl.Name, NotModified: true, New: old, Meta: m}, nil
		}
		m.ETag, m.LastModified = resp.ETag, resp.LastModified
		l, err = ParseBytes(resp.Body, bl.URL)
	default:
		l, err = ReadFile(bl.Path)
	}
	if err != nil {
		return fail(fmt.Errorf("blocklist %s malformed, refused whole: %w", bl.Name, err))
	}
	if err := Check(bl.Name, l, pr); err != nil {
		return fail(err)
	}
	m.Checked, m.LastError, m.Lines = now, "", len(l.Entries)
	data := Canonical(bl.Name, l)
	r := &Result{Name: bl.Name, New: l, Meta: m, data: data}
	if have && bytes.Equal(oldData, data) {
		r.NotModified = true
		return r, nil
	}
	r.Meta.Updated = now
	var ok bool
	if have {
		r.Add, r.Del, ok = diffCanonical(bl.Name, oldData, data)
	}
	if !ok {
		old, _ := oldList()
		r.Add, r.Del = Diff(old.Prefixes(), l.Prefixes())
	}
	if len(r.Add) == 0 && len(r.Del) == 0 && have {
		// The same networks in a copy not written as moat writes it.
		r.NotModified, r.Meta.Updated = true, m.Updated
	}
	return r, nil
}

// diffCanonical compares two lists in moat's canonical form (Canonical:
// a header line, then one network a line, in order): lines that are equal
// are the same network in both; only the lines that differ are parsed.
// ok is false when old is not in that form (then the caller parses it
// whole).
func diffCanonical(name string, old, new []byte) (add, del []netip.Prefix, ok bool) {
	header := []byte("# moat blocklist " + name + ": ")
	if !bytes.HasPrefix(old, header) || !bytes.HasPrefix(new, header) {
		return nil, nil, false
	}
	next := func(b []byte) (line, rest []byte) {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return b, nil
		}
		return b[:i], b[i+1:]
	}
	_, old = next(old)
	_, new = next(new)
	// A network of the old copy that is parsed must be written as moat
	// writes it, and in order after the line before it (new's are moat's
	// own).
	var prev []byte
	parseOld := func(line []byte) (netip.Prefix, bool) {
		p, err := netip.ParsePrefix(string(line))
		if err != nil || p != p.Masked() || p.String() != string(line) {
			return p, false
		}
		if prev != nil {
			q, err := netip.ParsePrefix(string(prev))
			// Merged networks are disjoint and no two of them make one
			// network together: a copy with 0.0.0.0/0 then 0.0.0.0/1, or
			// two halves of a /24, is no merged list, and its lines are
			// not its networks.
			if err != nil || comparePrefix(q, p) >= 0 || q.Overlaps(p) || halves(q, p) {
				return p, false
			}
		}
		prev = line
		return p, true
	}
	var o, n []byte
	for len(old) > 0 && len(new) > 0 {
		o, old = next(old)
		n, new = next(new)
		if bytes.Equal(o, n) {
			prev = o
			continue
		}
		op, good := parseOld(o)
		np, err := netip.ParsePrefix(string(n))
		if !good || err != nil {
			return nil, nil, false
		}
		// The smaller of the two is in one list only; the other line is
		// looked at again.
		for {
			c := comparePrefix(op, np)
			if c == 0 {
				break
			}
			if c < 0 {
				del = append(del, op)
				if len(old) == 0 {
					add = append(add, np)
					return finishCanonical(add, del, old, new, parseOld)
				}
				o, old = next(old)
				if op, good = parseOld(o); !good {
					return nil, nil, false
				}
				continue
			}
			add = append(add, np)
			if len(new) == 0 {
				del = append(del, op)
				return finishCanonical(add, del, old, new, parseOld)
			}
			n, new = next(new)
			if np, err = netip.ParsePrefix(string(n)); err != nil {
				return nil, nil, false
			}
		}
	}
	return finishCanonical(add, del, old, new, parseOld)
}

// halves says whether q and p are the two halves of one network.
func halves(q, p netip.Prefix) bool {
	bits := q.Bits()
	if bits == 0 || bits != p.Bits() || q.Addr().BitLen() != p.Addr().BitLen() {
		return false
	}
	return netip.PrefixFrom(q.Addr(), bits-1).Masked() == netip.PrefixFrom(p.Addr(), bits-1).Masked()
}

// finishCanonical adds what is left of either list once the other ended.
func finishCanonical(add, del []netip.Prefix, old, new []byte, parseOld func([]byte) (netip.Prefix, bool)) ([]netip.Prefix, []netip.Prefix, bool) {
	for _, line := range bytes.Split(bytes.TrimSuffix(old, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		p, ok := parseOld(line)
		if !ok {
			return nil, nil, false
		}
		del = append(del, p)
	}
	for _, line := range bytes.Split(bytes.TrimSuffix(new, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		p, err := netip.ParsePrefix(string(line))
		if err != nil {
			return nil, nil, false
		}
		add = append(add, p)
	}
	return add, del, true
}

// SaveResult keeps an update's new copy as the last good one.
func SaveResult(stateDir string, r *Result) error {
	if r.NotModified {
		return WriteMeta(stateDir, r.Meta)
	}
	if r.data != nil {
		return writeCacheData(stateDir, &r.Meta, r.New, r.data)
	}
	return WriteCache(stateDir, &r.Meta, r.New)
}

// SaveFirstBefore writes the copy of a url list's first save (no
// metadata of its source vouches for a copy yet) before the kernel takes
// the update's list, vouched for by its metadata's Saving checksum: an
// update killed after the kernel took the list and before SaveResult
// left no copy, and the next apply loaded the list empty ("not fetched
// yet"), letting in what it blocks until the next update. SaveResult
// completes the save. undo puts the copy and metadata back as they were,
// for an update whose kernel change is refused. Other results are saved
// by SaveResult alone: an apply keeps the copy their metadata vouches
// for, and a file list is read again.
func SaveFirstBefore(stateDir string, r *Result) (undo func() error, err error) {
	undo = func() error { return nil }
	if r.NotModified || r.Meta.Source != string(policy.BlocklistURL) || vouched(stateDir, &r.Meta) {
		return undo, nil
	}
	dir, name := listDir(stateDir), r.Name
	oldMeta, merr := statedir.ReadFile(dir, name+".json")
	oldList, lerr := statedir.ReadFile(dir, name+".list")
	for _, err := range []error{merr, lerr} {
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return undo, fmt.Errorf("blocklist %s: %w", name, err)
		}
	}
	data := r.data
	if data == nil {
		data = Canonical(name, r.New)
	}
	undo = func() error {
		put := func(file string, data []byte, err error) error {
			if err != nil {
				return statedir.Remove(dir, file)
			}
			return statedir.WriteFile(dir, file, data)
		}
		// The metadata first: until the list is back, it vouches for
		// nothing that is there.
		if err := put(name+".json", oldMeta, merr); err != nil {
			return fmt.Errorf("blocklist %s: %w", name, err)
		}
		if err := put(name+".list", oldList, lerr); err != nil {
			return fmt.Errorf("blocklist %s: %w", name, err)
		}
		return nil
	}
	if err := writePending(stateDir, &r.Meta, r.New, data); err != nil {
		return func() error { return nil }, errors.Join(err, undo())
	}
	return undo, nil
}
