package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// bigList writes a list of n networks that merge into n entries (every
// other /32 of 100.64.0.0/10 and every other /64 of 2001:db8:f000::/36:
// set contents only, no packet goes there), plus the extra lines.
func bigList(t testing.TB, path string, n int, extra ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("; a big list in Spamhaus' layout\n")
	for i := 0; i < n/2; i++ {
		a := 0x64400000 + 2*uint32(i)
		fmt.Fprintf(&b, "%d.%d.%d.%d ; SBL%d\n", a>>24, a>>16&0xff, a>>8&0xff, a&0xff, i)
	}
	for i := 0; i < n-n/2; i++ {
		fmt.Fprintf(&b, "2001:db8:f%03x:%x::/64\n", (2*i)>>16&0xfff, (2*i)&0xffff)
	}
	for _, l := range extra {
		b.WriteString(l + "\n")
	}
	writeFile(t, path, b.String())
}

// A 100k-entry list on both backends: real packets from a listed source
// are dropped, from an unlisted one accepted, IPv4 and IPv6; the allowlist
// wins; explain names the list; status shows it.
func TestBlocklistFile100k(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		list := filepath.Join(e.dir, "big.netset")
		bigList(t, list, 100_000, "192.0.2.3", "2001:db8::3", "192.0.2.4/32", "# an allowlisted address below")
		e.apply(fmt.Sprintf("default deny incoming\nallowlist 192.0.2.4\nallow 80/tcp\nallow 53/udp\nblocklist big file %s\n", list))
		e.expect(false,
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout",
			"client/192.0.2.3 udp 192.0.2.1:53 timeout",
			"client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client tcp 192.0.2.1:80 open",
			"client udp 192.0.2.1:53 open",
			"client tcp [2001:db8::1]:80 open",
			"client/192.0.2.4 tcp 192.0.2.1:80 open", // the allowlist wins
		)
		out := e.mustMoat("explain", "in", "tcp", "from", "192.0.2.3", "to", "port", "80")
		if !strings.Contains(out, "blocklist big file "+list) || !strings.Contains(out, "DROP") {
			t.Errorf("explain does not name the list:\n%s", out)
		}
		st := e.mustMoat("status", "verbose")
		if !strings.Contains(st, "big") || !strings.Contains(st, "100003") || !strings.Contains(st, "blocklist big file "+list) {
			t.Errorf("status does not show the list and its counter:\n%s", st)
		}
		if strings.Contains(st, "changed outside moat") {
			t.Errorf("status sees drift in a blocklist set:\n%s", st)
		}
		// A malformed list is refused whole and the last good copy stays.
		writeFile(t, list, "192.0.2.9\nnot-an-address\n")
		out, err := e.moat("reload")
		if err != nil || !strings.Contains(out, list+":2: bad entry") || !strings.Contains(out, "keeping the copy") {
			t.Errorf("reload with a malformed list: %v\n%s", err, out)
		}
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:80 open")
	})
}

// listServer serves blocklists over HTTPS on the server namespace's
// loopback, with ETags, and can be told to fail.
type listServer struct {
	mu          sync.Mutex
	body        map[string]string
	status      int
	notModified int
	srv         *httptest.Server
	caFile      string
	gate        func() // if set, each request first calls it (outside mu)
}

// dropListServed serves body as /drop.txt and applies a policy that lets
// 80/tcp in and blocks the url list 'drop' there (opts after its url).
func (e *env) dropListServed(body, opts string) *listServer {
	e.t.Helper()
	ls := e.startListServer()
	ls.set("/drop.txt", body, 0)
	e.apply(fmt.Sprintf("default deny incoming\nallow 80/tcp\nblocklist drop url %s%s\n", ls.url("/drop.txt"), opts))
	return ls
}

// loopbackListener is a TCP listener on a free loopback port of ns, made in ns
// (the caller closes it).
func loopbackListener(t testing.TB, ns *lab.NS) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return ln
}

func (e *env) startListServer() *listServer {
	e.t.Helper()
	ls := &listServer{body: map[string]string{}}
	ln := loopbackListener(e.t, e.topo.Server)
	ls.srv = httptest.NewUnstartedServer(ls)
	_ = ls.srv.Listener.Close() // replaced by the one in the server namespace
	ls.srv.Listener = ln
	ls.srv.StartTLS()
	e.t.Cleanup(ls.srv.Close)
	ls.caFile = filepath.Join(e.dir, "ca.pem")
	writeFile(e.t, ls.caFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ls.srv.Certificate().Raw})))
	return ls
}

func (ls *listServer) set(path, body string, status int) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.body[path], ls.status = body, status
}

func (ls *listServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ls.mu.Lock()
	gate := ls.gate
	ls.mu.Unlock()
	if gate != nil {
		gate()
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.status != 0 {
		http.Error(w, "list server broken on purpose", ls.status)
		return
	}
	body, ok := ls.body[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	etag := fmt.Sprintf(`"%x"`, sha256.Sum256([]byte(body)))
	if r.Header.Get("If-None-Match") == etag {
		ls.notModified++
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", etag)
	fmt.Fprint(w, body)
}

func (ls *listServer) url(path string) string { return ls.srv.URL + path }

// moatTLS runs moat in the server namespace trusting the list server.
func (e *env) moatTLS(ls *listServer, args ...string) (string, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"--config", e.conf, "--backend", e.backend, "--state-dir", e.stateDir()}, args...)
	var out []byte
	err := e.topo.Server.Do(func() error {
		cmd := exec.CommandContext(ctx, moatBin, full...)
		cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+ls.caFile)
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	return string(out), err
}

// 'moat blocklist update' over HTTPS: the first fetch swaps the list in,
// an unchanged list is a 304, failures and malformed or oversized lists
// keep the old copy and say so, a changed list takes effect at once.
func TestBlocklistUpdate(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		ls := e.dropListServed("; Spamhaus DROP\n192.0.2.3/32 ; SBL1\n2001:db8::3/128 ; SBL2\n", " refresh 1h")
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 open") // not fetched yet

		out, err := e.moatTLS(ls, "blocklist", "update")
		if err != nil || !strings.Contains(out, "drop: 2 networks (+2 -0)") || !strings.Contains(out, "swapped into the kernel") {
			t.Fatalf("first update: %v\n%s", err, out)
		}
		e.expect(false,
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout",
			"client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client tcp 192.0.2.1:80 open",
			"client tcp [2001:db8::1]:80 open")

		out, err = e.moatTLS(ls, "blocklist", "update", "drop")
		if err != nil || !strings.Contains(out, "drop: unchanged, 2 networks") || ls.notModified != 1 {
			t.Errorf("second update (want a 304): %v, %d not-modified\n%s", err, ls.notModified, out)
		}
		out, err = e.moatTLS(ls, "blocklist", "update", "--due")
		if err != nil || !strings.Contains(out, "drop: not due") {
			t.Errorf("--due right after a check: %v\n%s", err, out)
		}

		for _, tc := range []struct {
			what, body string
			status     int
			args       []string
			want       string
		}{
			{"server error", "", http.StatusInternalServerError, nil, "server answered 500"},
			{"malformed", "192.0.2.0/24\n<html>\n", 0, nil, "/drop.txt:2: bad entry"},
			{"oversized", strings.Repeat("192.0.2.200\n", 100), 0, []string{"--max-size", "1000"}, "more than the 1000 bytes allowed"},
			{"implausible", "0.0.0.0/1\n128.0.0.0/2\n", 0, nil, "covers 75.0% of the IPv4 address space"},
		} {
			ls.set("/drop.txt", tc.body, tc.status)
			out, err := e.moatTLS(ls, append([]string{"blocklist", "update"}, tc.args...)...)
			if exitCode(err) != 1 || !strings.Contains(out, tc.want) || !strings.Contains(out, "keeping the copy of") {
				t.Errorf("%s: exit %d, want 1 with %q and the old copy kept:\n%s", tc.what, exitCode(err), tc.want, out)
			}
			e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:80 open")
		}

		// A changed list: the new contents at once, the old gone.
		ls.set("/drop.txt", "192.0.2.4\n2001:db8::4\n", 0)
		out, err = e.moatTLS(ls, "blocklist", "update")
		if err != nil || !strings.Contains(out, "drop: 2 networks (+2 -2)") {
			t.Fatalf("changed list: %v\n%s", err, out)
		}
		e.expect(false,
			"client/192.0.2.3 tcp 192.0.2.1:80 open",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout",
			"client/2001:db8::4 tcp [2001:db8::1]:80 timeout")

		var list []struct {
			Name     string    `json:"name"`
			Networks int       `json:"networks"`
			Where    string    `json:"where"`
			Updated  time.Time `json:"updated"`
			Error    string    `json:"last_error"`
		}
		out = e.mustMoat("blocklist", "list", "--json")
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || list[0].Networks != 2 ||
			list[0].Where != ls.url("/drop.txt") || time.Since(list[0].Updated) > time.Minute || list[0].Error != "" {
			t.Errorf("blocklist list: %v\n%s", err, out)
		}
		// Two updates at once (the timer's and the admin's): one waits
		// for the other; both succeed and the kernel holds the list.
		ls.set("/drop.txt", "192.0.2.3\n2001:db8::3\n", 0)
		errs := make(chan error, 2)
		for i := 0; i < 2; i++ {
			go func() {
				out, err := e.moatTLS(ls, "blocklist", "update")
				if err != nil {
					err = fmt.Errorf("%w: %s", err, out)
				}
				errs <- err
			}()
		}
		for i := 0; i < 2; i++ {
			if err := <-errs; err != nil {
				t.Errorf("concurrent update: %v", err)
			}
		}
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/192.0.2.4 tcp 192.0.2.1:80 open")
		ls.set("/drop.txt", "192.0.2.4\n2001:db8::4\n", 0)
		if out, err := e.moatTLS(ls, "blocklist", "update"); err != nil {
			t.Fatalf("update: %v\n%s", err, out)
		}
		// A restart of the machine: the saved copy comes back without a fetch.
		ls.set("/drop.txt", "", http.StatusServiceUnavailable)
		e.mustMoat("disable")
		e.mustMoat("enable")
		e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:80 open")
	})
}

// A list that covers the admin's live SSH session is refused, naming the
// session; the kernel keeps what it had.
func TestBlocklistCoversSession(t *testing.T) {
	t.Parallel()
	e := newSSHEnv(t, "nftables")
	srv := e.startSSHD(22)
	ls := e.startListServer()
	ls.set("/drop.txt", "203.0.113.0/24\n", 0)
	e.apply(fmt.Sprintf("default deny incoming\nallow 22/tcp\nallow 80/tcp\nblocklist drop url %s\n", ls.url("/drop.txt")))
	sess := srv.login(lab.ServerV4)
	if out, err := e.moatTLS(ls, "blocklist", "update"); err != nil {
		t.Fatalf("update: %v\n%s", err, out)
	}
	ls.set("/drop.txt", "203.0.113.0/24\n192.0.2.0/28\n", 0)
	out, err := e.moatTLS(ls, "blocklist", "update")
	if exitCode(err) != 1 || !strings.Contains(out, "blocklist drop refused: line 2 (192.0.2.0/28) covers your live SSH session from 192.0.2.2") {
		t.Errorf("want a refusal naming the session: %v\n%s", err, out)
	}
	if err := sess.alive(3 * time.Second); err != nil {
		t.Errorf("session cut: %v", err)
	}
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:22 open")
}
