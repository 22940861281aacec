package blocklist

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
)

// FuzzDiffCanonical: two lists compared through their canonical forms
// give Diff of their networks; a saved copy not in that form (any bytes)
// is either refused (the caller parses it) or compared correctly.
func FuzzDiffCanonical(f *testing.F) {
	f.Add([]byte("192.0.2.0/24\n2001:db8::/32\n"), []byte("192.0.2.0/25\n198.51.100.0/24\n2001:db8::/32\n"))
	f.Add([]byte("192.0.2.1\n192.0.2.3\n192.0.2.5\n"), []byte("192.0.2.2\n192.0.2.3\n192.0.2.4\n192.0.2.5\n"))
	f.Add([]byte(""), []byte("2001:db8::1\n"))
	f.Add([]byte("203.0.113.0/24\n"), []byte(""))
	f.Add([]byte("0.0.0.0/0\n0.0.0.0/1"), []byte(""))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		la, err1 := Parse(bytes.NewReader(a), "a")
		lb, err2 := Parse(bytes.NewReader(b), "b")
		if err1 != nil || err2 != nil {
			return
		}
		wantAdd, wantDel := Diff(la.Prefixes(), lb.Prefixes())
		add, del, ok := diffCanonical("x", Canonical("x", la), Canonical("x", lb))
		if !ok || !same(add, wantAdd) || !same(del, wantDel) {
			t.Fatalf("canonical: ok %v add %v del %v, want %v %v", ok, add, del, wantAdd, wantDel)
		}
		// a as a hand-written saved copy under moat's header.
		raw := append([]byte("# moat blocklist x: \n"), a...)
		add, del, ok = diffCanonical("x", raw, Canonical("x", lb))
		if ok && (!same(add, wantAdd) || !same(del, wantDel)) {
			t.Fatalf("hand-written copy accepted with add %v del %v, want %v %v", add, del, wantAdd, wantDel)
		}
	})
}

// TestDiffCanonicalRefusesOtherForms: a saved copy out of order, with a
// network written another way, networks that overlap or are two halves of
// one (not merged), or under another list's header is not compared line
// by line.
func TestDiffCanonicalRefusesOtherForms(t *testing.T) {
	l, err := Parse(strings.NewReader("192.0.2.0/24\n198.51.100.0/24\n203.0.113.9\n"), "new")
	if err != nil {
		t.Fatal(err)
	}
	newData := Canonical("x", l)
	for _, old := range []string{
		"# moat blocklist x: \n203.0.113.0/24\n192.0.2.0/24\n",
		"# moat blocklist x: \n192.0.2.0/24\n198.51.100.000/24\n",
		"# moat blocklist x: \n192.0.2.0/24\n198.51.100.1/24\n",
		"# moat blocklist x: \n192.0.2.0/24\r\n198.51.100.0/24\r\n",
		"# moat blocklist x: \n192.0.2.0/24\n192.0.2.128/25\n198.51.100.0/24\n",
		"# moat blocklist x: \n192.0.2.0/25\n192.0.2.128/25\n198.51.100.0/24\n",
		"# moat blocklist y: \n192.0.2.0/24\n",
		"192.0.2.0/24\n",
	} {
		if add, del, ok := diffCanonical("x", []byte(old), newData); ok {
			t.Errorf("%q: compared line by line: add %v del %v", old, add, del)
		}
	}
}

// writeSaved replaces a list's saved copy and makes its metadata vouch for
// it (as a crash or a hand edit of both could).
func writeSaved(t *testing.T, dir, name, data string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, Dir, name+".list"), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := ReadMeta(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(data))
	m.SHA256 = hex.EncodeToString(sum[:])
	if err := WriteMeta(dir, m); err != nil {
		t.Fatal(err)
	}
}

// TestUpdateSavedCopyNotCanonical: a saved copy that is not in moat's
// form but that its checksum vouches for still gives the right
// difference (parsed whole), the same networks count as unchanged, and
// one that does not parse is fetched again unconditionally rather than
// kept by a 304.
func TestUpdateSavedCopyNotCanonical(t *testing.T) {
	body := "192.0.2.0/24\n2001:db8:1::/48\n"
	conditional := 0
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			conditional++
			w.WriteHeader(http.StatusNotModified)
			return
		}
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	bl := &policy.Blocklist{Name: "d", Source: policy.BlocklistURL, URL: srv.URL}
	f := &Fetcher{Client: srv.Client()}
	update := func() *Result {
		t.Helper()
		r, err := Update(context.Background(), dir, bl, f, Protect{}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if err := SaveResult(dir, update()); err != nil {
		t.Fatal(err)
	}

	// The same networks, written by hand: unchanged (304 here, then the
	// same body).
	writeSaved(t, dir, "d", "2001:db8:1::/48\n192.0.2.0/25\n192.0.2.128/25\n")
	if r := update(); !r.NotModified || len(r.New.Prefixes()) != 2 {
		t.Fatalf("304 over a hand-written copy: %+v", r)
	}
	body = "2001:db8:1::/48 ; same networks, another order\n192.0.2.0/24\n"
	m, _ := ReadMeta(dir, "d")
	m.ETag = ""
	if err := WriteMeta(dir, m); err != nil {
		t.Fatal(err)
	}
	writeSaved(t, dir, "d", "2001:db8:1::/48\n192.0.2.0/25\n192.0.2.128/25\n")
	if r := update(); !r.NotModified || len(r.Add)+len(r.Del) != 0 {
		t.Fatalf("same networks as a hand-written copy: %+v", r)
	}

	// Changed against a hand-written copy: the difference of the networks.
	body = "192.0.2.0/24\n198.51.100.0/24\n"
	writeSaved(t, dir, "d", "# moat blocklist d: \n2001:db8:1::/48\n192.0.2.0/24\n")
	r := update()
	if r.NotModified || !same(r.Add, prefixes("198.51.100.0/24")) || !same(r.Del, prefixes("2001:db8:1::/48")) {
		t.Fatalf("changed against a hand-written copy: add %v del %v", r.Add, r.Del)
	}

	// A copy that does not parse: a 304 cannot keep it; fetched again.
	writeSaved(t, dir, "d", "<html>\n")
	m, _ = ReadMeta(dir, "d")
	m.ETag = `"v1"`
	if err := WriteMeta(dir, m); err != nil {
		t.Fatal(err)
	}
	before := conditional
	r = update()
	if conditional != before+1 || r.NotModified || len(r.New.Prefixes()) != 2 || len(r.Add) != 2 || len(r.Del) != 0 {
		t.Fatalf("unparsable copy: %d conditional requests, %+v", conditional-before, r)
	}
	if err := SaveResult(dir, r); err != nil {
		t.Fatal(err)
	}
	if ld, err := Load(dir, bl, Protect{}, time.Now(), false); err != nil || len(ld.Prefixes) != 2 || ld.Warning != nil {
		t.Errorf("after the repair: %+v %v", ld, err)
	}
}
