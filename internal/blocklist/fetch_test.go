package blocklist

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
)

// listServer serves one list with an ETag, honouring If-None-Match, and
// counts the requests and conditional ones.
type listServer struct {
	mu          sync.Mutex
	body        string
	status      int
	requests    int
	conditional int
	notModified int
}

func (s *listServer) set(body string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body, s.status = body, status
}

func (s *listServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	if s.status != 0 && s.status != http.StatusOK {
		http.Error(w, "broken", s.status)
		return
	}
	etag := fmt.Sprintf(`"%x"`, len(s.body)*7919+strings.Count(s.body, "1"))
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		s.conditional++
		if inm == etag {
			s.notModified++
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Last-Modified", "Tue, 25 Nov 2026 10:00:00 GMT")
	fmt.Fprint(w, s.body)
}

func TestUpdateOverHTTPS(t *testing.T) {
	ls := &listServer{body: "192.0.2.0/24 ; SBL1\n2001:db8:1::/48 ; SBL2\n"}
	srv := httptest.NewTLSServer(ls)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	f := &Fetcher{Client: srv.Client(), MaxBytes: 4096, Timeout: 5 * time.Second}
	bl := &policy.Blocklist{Name: "drop", Source: policy.BlocklistURL, URL: srv.URL + "/drop.txt"}
	ctx := context.Background()
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	pr := Protect{Sessions: []netip.Addr{netip.MustParseAddr("203.0.113.50")}}

	// Not fetched yet: an apply loads nothing and says so.
	ld, err := Load(dir, bl, pr, now, true)
	if err != nil || ld.Prefixes != nil || ld.Warning == nil || !strings.Contains(ld.Warning.Error(), "not fetched yet") {
		t.Fatalf("before the first fetch: %+v %v", ld, err)
	}

	r, err := Update(ctx, dir, bl, f, pr, now)
	if err != nil {
		t.Fatal(err)
	}
	if r.NotModified || !same(r.New.Prefixes(), prefixes("192.0.2.0/24", "2001:db8:1::/48")) || len(r.Del) != 0 || !same(r.Add, r.New.Prefixes()) {
		t.Fatalf("first update: %+v", r)
	}
	if err := SaveResult(dir, r); err != nil {
		t.Fatal(err)
	}
	ld, err = Load(dir, bl, pr, now, true)
	if err != nil || ld.Warning != nil || len(ld.Prefixes) != 2 || ld.Meta.Networks != 2 || ld.Meta.ETag == "" {
		t.Fatalf("after the first fetch: %+v %v", ld, err)
	}

	// Unchanged: a conditional request, answered 304.
	r, err = Update(ctx, dir, bl, f, pr, now.Add(time.Hour))
	if err != nil || !r.NotModified {
		t.Fatalf("304: %+v %v", r, err)
	}
	if err := SaveResult(dir, r); err != nil {
		t.Fatal(err)
	}
	if ls.notModified != 1 {
		t.Errorf("the server answered 304 %d times, want 1", ls.notModified)
	}
	m, _ := ReadMeta(dir, "drop")
	if !m.Checked.Equal(now.Add(time.Hour)) || !m.Updated.Equal(now) {
		t.Errorf("304 should move Checked only: %+v", m)
	}

	keeps := func(what string) {
		t.Helper()
		ld, err := Load(dir, bl, pr, now, true)
		if err != nil || !same(ld.Prefixes, prefixes("192.0.2.0/24", "2001:db8:1::/48")) {
			t.Errorf("%s: the old copy is gone: %+v %v", what, ld, err)
		}
	}
	for _, tc := range []struct {
		what, body string
		status     int
		want       string
	}{
		{"server error", "", http.StatusInternalServerError, "server answered 500"},
		{"malformed", "192.0.2.0/24\n<html>oops</html>\n", 0, "malformed, refused whole: " + srv.URL + "/drop.txt:2: bad entry"},
		{"oversized", strings.Repeat("192.0.2.1\n", 500), 0, "more than the 4096 bytes allowed"},
		{"covers the session", "192.0.2.0/24\n203.0.113.0/24\n", 0, "line 2 (203.0.113.0/24) covers your live SSH session from 203.0.113.50"},
		{"three quarters of IPv4", "0.0.0.0/1\n128.0.0.0/2\n", 0, "covers 75.0% of the IPv4 address space"},
	} {
		ls.set(tc.body, tc.status)
		_, err := Update(ctx, dir, bl, f, pr, now)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "keeping the copy of 2026-11-25T12:00:00Z (2 networks)") {
			t.Errorf("%s: got %v, want %q and the old copy kept", tc.what, err, tc.want)
		}
		keeps(tc.what)
		if m, _ := ReadMeta(dir, "drop"); m.LastError == "" {
			t.Errorf("%s: last error not recorded", tc.what)
		}
	}

	// A changed list: new contents, and the difference.
	ls.set("198.51.100.0/24\n2001:db8:1::/48\n", 0)
	r, err = Update(ctx, dir, bl, f, pr, now.Add(2*time.Hour))
	if err != nil || r.NotModified {
		t.Fatalf("changed: %+v %v", r, err)
	}
	add, del := r.Add, r.Del
	if !same(add, prefixes("198.51.100.0/24")) || !same(del, prefixes("192.0.2.0/24")) {
		t.Errorf("diff: add %v del %v", add, del)
	}

	// Nothing was saved before SaveResult: a crash here keeps the old copy.
	keeps("before save")
	if err := SaveResult(dir, r); err != nil {
		t.Fatal(err)
	}
	if ld, _ := Load(dir, bl, pr, now, true); !same(ld.Prefixes, prefixes("198.51.100.0/24", "2001:db8:1::/48")) || ld.Meta.LastError != "" {
		t.Errorf("after save: %+v", ld)
	}
}

func TestFetchRefusesRedirectToHTTP(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "192.0.2.1") }))
	t.Cleanup(plain.Close)
	tlsSrv := httptest.NewTLSServer(http.RedirectHandler(plain.URL+"/list", http.StatusFound))
	t.Cleanup(tlsSrv.Close)
	c := tlsSrv.Client()
	c.CheckRedirect = httpsOnly
	_, err := (&Fetcher{Client: c}).Fetch(context.Background(), tlsSrv.URL, Meta{})
	if err == nil || !strings.Contains(err.Error(), "not https") {
		t.Errorf("got %v", err)
	}
}

func TestFetchTimeout(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block }))
	t.Cleanup(func() { close(block); srv.Close() })
	start := time.Now()
	_, err := (&Fetcher{Client: srv.Client(), Timeout: 200 * time.Millisecond}).Fetch(context.Background(), srv.URL, Meta{})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Errorf("got %v after %v", err, time.Since(start))
	}
}

func TestLoadFileList(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	path := filepath.Join(dir, "bad.netset")
	bl := &policy.Blocklist{Name: "local", Source: policy.BlocklistFile, Path: path}
	now := time.Now()
	if _, err := Load(state, bl, Protect{}, now, true); err == nil || !strings.Contains(err.Error(), "no earlier good copy") {
		t.Errorf("missing file, no copy: %v", err)
	}
	if err := os.WriteFile(path, []byte("192.0.2.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ld, err := Load(state, bl, Protect{}, now, true)
	if err != nil || ld.Warning != nil || !same(ld.Prefixes, prefixes("192.0.2.0/24")) {
		t.Fatalf("good file: %+v %v", ld, err)
	}
	if err := os.WriteFile(path, []byte("192.0.2.0/24\n198.51.100.0/33\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ld, err = Load(state, bl, Protect{}, now, true)
	if err != nil || ld.Warning == nil || !strings.Contains(ld.Warning.Error(), path+":2: bad entry") || !same(ld.Prefixes, prefixes("192.0.2.0/24")) {
		t.Errorf("malformed file keeps the old copy: %+v %v", ld, err)
	}
	// A damaged saved copy is noticed, not trusted.
	if err := os.WriteFile(listPath(state, "local"), []byte("0.0.0.0/0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(state, bl, Protect{}, now, true); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("damaged copy: %v", err)
	}
}

// A hostile server's validators must not stick and break later requests.
func TestHostileValidators(t *testing.T) {
	n := 0
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		if inm := r.Header.Get("If-None-Match"); inm != "" && inm != `"ok"` {
			t.Errorf("sent back %q", inm)
		}
		w.Header()["Etag"] = []string{strings.Repeat("x", 300)}
		w.Header()["Last-Modified"] = []string{"Tue, 25 Nov \xc3\xa9"}
		fmt.Fprintln(w, "192.0.2.1")
	}))
	t.Cleanup(srv.Close)
	f := &Fetcher{Client: srv.Client()}
	dir := t.TempDir()
	bl := &policy.Blocklist{Name: "h", Source: policy.BlocklistURL, URL: srv.URL}
	for i := 0; i < 2; i++ {
		r, err := Update(context.Background(), dir, bl, f, Protect{}, time.Now())
		if err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
		if r.Meta.ETag != "" || r.Meta.LastModified != "" {
			t.Errorf("kept %q %q", r.Meta.ETag, r.Meta.LastModified)
		}
		if err := SaveResult(dir, r); err != nil {
			t.Fatal(err)
		}
	}
	if n != 2 {
		t.Errorf("%d requests", n)
	}
}

// Damaged state files are noticed and never trusted: a garbage metadata
// file makes the saved copy unusable (said so), and the next update
// starts afresh and works.
func TestDamagedMeta(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("If-None-Match") != "" {
			t.Errorf("a conditional request from damaged state")
		}
		w.Header().Set("ETag", `"v1"`)
		fmt.Fprintln(w, "192.0.2.1")
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	bl := &policy.Blocklist{Name: "d", Source: policy.BlocklistURL, URL: srv.URL}
	r, err := Update(context.Background(), dir, bl, &Fetcher{Client: srv.Client()}, Protect{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := SaveResult(dir, r); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(metaPath(dir, "d"), []byte(`{"name":"d","etag":"\"v1\"","sha256":`), 0o600); err != nil {
		t.Fatal(err)
	}
	ld, err := Load(dir, bl, Protect{}, time.Now(), false)
	if err != nil || ld.Prefixes != nil || ld.Warning == nil || !strings.Contains(ld.Warning.Error(), "is damaged") {
		t.Errorf("damaged metadata: %+v %v", ld, err)
	}
	r, err = Update(context.Background(), dir, bl, &Fetcher{Client: srv.Client()}, Protect{}, time.Now())
	if err != nil || r.NotModified || len(r.New.V4) != 1 {
		t.Fatalf("update after damage: %+v %v", r, err)
	}
	if err := SaveResult(dir, r); err != nil {
		t.Fatal(err)
	}
	if ld, err := Load(dir, bl, Protect{}, time.Now(), false); err != nil || len(ld.Prefixes) != 1 || ld.Warning != nil {
		t.Errorf("after the repair: %+v %v", ld, err)
	}
}
