package blocklist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/moat-fw/moat/internal/policy"
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
		return nil, fmt.Errorf("fetch %s: %w", url, err)
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
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	if n > max {
		return nil, fmt.Errorf("fetch %s: more than the %d bytes allowed", url, max)
	}
	return &Response{Body: body.Bytes(), ETag: validator(resp.Header.Get("ETag")), LastModified: validator(resp.Header.Get("Last-Modified"))}, nil
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
	Old, New    *List
	Meta        Meta
}

// Update reads a list's source (a download for url lists, the file for
// file lists), checks it, and returns the old and new contents. Nothing is
// saved: the caller saves the new copy (SaveResult) once the kernel has
// it. On any failure the saved copy stays as it was and the error says so.
func Update(ctx context.Context, stateDir string, bl *policy.Blocklist, f *Fetcher, pr Protect, now time.Time) (*Result, error) {
	m, _ := ReadMeta(stateDir, bl.Name)
	if m.Where != bl.Where() {
		m = Meta{Name: bl.Name}
	}
	old, have, _ := ReadCache(stateDir, bl.Name, m)
	if !have || m.SHA256 == "" {
		old, m.ETag, m.LastModified = &List{}, "", ""
	}
	m.Name, m.Source, m.Where, m.Attempted = bl.Name, string(bl.Source), bl.Where(), now
	fail := func(err error) (*Result, error) {
		m.LastError = err.Error()
		_ = WriteMeta(stateDir, m)
		if have {
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
			if !have {
				return fail(fmt.Errorf("blocklist %s: the server answered 304 Not Modified, but there is no saved copy", bl.Name))
			}
			m.Checked, m.LastError = now, ""
			if resp.ETag != "" {
				m.ETag = resp.ETag
			}
			return &Result{Name: bl.Name, NotModified: true, Old: old, New: old, Meta: m}, nil
		}
		m.ETag, m.LastModified = resp.ETag, resp.LastModified
		l, err = Parse(bytes.NewReader(resp.Body), bl.URL)
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
	same := have && samePrefixes(old.Prefixes(), l.Prefixes())
	if !same {
		m.Updated = now
	}
	return &Result{Name: bl.Name, NotModified: same, Old: old, New: l, Meta: m}, nil
}

// SaveResult keeps an update's new copy as the last good one.
func SaveResult(stateDir string, r *Result) error {
	if r.NotModified {
		return WriteMeta(stateDir, r.Meta)
	}
	return WriteCache(stateDir, &r.Meta, r.New)
}
