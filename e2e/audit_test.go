package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

type auditFinding struct {
	Proto       string   `json:"proto"`
	Family      string   `json:"family"`
	Address     string   `json:"address"`
	Port        uint16   `json:"port"`
	PID         int      `json:"pid"`
	Status      string   `json:"status"`
	From        []string `json:"from"`
	Except      []string `json:"except"`
	Unexplained bool     `json:"unexplained"`
}

type auditOutput struct {
	Active       bool           `json:"active"`
	Sockets      []auditFinding `json:"sockets"`
	UnusedAllows []struct {
		Line  int    `json:"line"`
		Proto string `json:"proto"`
		Ports string `json:"ports"`
	} `json:"unused_allows"`
	Warnings       []string          `json:"warnings"`
	OtherFiltering []json.RawMessage `json:"other_filtering"`
}

// audit runs 'moat audit --json' in the server namespace and returns
// what it says with its exit code.
func (e *env) audit() (auditOutput, int) {
	e.t.Helper()
	out, err := e.moat("audit", "--json")
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("moat audit: %v\n%s", err, out)
	}
	// stderr (the exit 1 message) follows the JSON document.
	var a auditOutput
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&a); err != nil {
		e.t.Fatalf("moat audit --json: %v\n%s", err, out)
	}
	return a, code
}

// listenIn opens sockets in ns for the test's life, each "NETWORK
// ADDRESS": listeners for tcp*, bound sockets for udp*; lc sets their
// socket options (the zero value: none).
func listenIn(t *testing.T, ns *lab.NS, lc net.ListenConfig, socks ...string) {
	t.Helper()
	for _, s := range socks {
		network, addr, _ := strings.Cut(s, " ")
		var c io.Closer
		if err := ns.Do(func() error {
			var err error
			if strings.HasPrefix(network, "udp") {
				c, err = lc.ListenPacket(context.Background(), network, addr)
			} else {
				c, err = lc.Listen(context.Background(), network, addr)
			}
			return err
		}); err != nil {
			t.Fatalf("listen %s in %s: %v", s, ns.Name, err)
		}
		t.Cleanup(func() { _ = c.Close() })
	}
}

// TestAudit: every port 'moat audit' calls open is reachable from the
// client with real packets, from the sources it names, and every port
// it calls closed or local only is not, IPv4 and IPv6, TCP and UDP,
// before moat is active and under a policy, on both backends.
func TestAudit(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		// Loopback-only listeners, on ports nothing else listens on.
		listenIn(t, e.topo.Server, net.ListenConfig{}, "tcp 127.0.0.1:7070", "tcp [::1]:7070", "udp [::1]:7071")

		// Not active: everything outside loopback is open, and the
		// exit code says an exposure no rule allows.
		before, code := e.audit()
		if before.Active || code != 1 {
			t.Errorf("inactive: active %v, exit %d; want false, 1", before.Active, code)
		}
		for _, f := range before.Sockets {
			want := "inactive-open"
			if netip.MustParseAddr(f.Address).IsLoopback() {
				want = "local-only"
			}
			if f.Status != want {
				t.Errorf("inactive: %+v, want %s", f, want)
			}
		}
		e.checkAudit(before, nil)

		// A blocklist drops two of the client's addresses before any
		// rule: the open ports are open to anyone else.
		bad := filepath.Join(e.dir, "bad.list")
		if err := os.WriteFile(bad, []byte("192.0.2.4\n2001:db8::4\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		blocked := []netip.Prefix{netip.MustParsePrefix("192.0.2.4/32"), netip.MustParsePrefix("2001:db8::4/128")}
		e.apply("blocklist bad file " + bad + "\n" + `default deny incoming
allow 22/tcp
allow 80/tcp
allow from 192.0.2.3 to any port 443 proto tcp
allow from 2001:db8::3 to any port 443 proto tcp
reject 25/tcp
limit 2222/tcp
allow 53/udp
allow from 192.0.2.2 to any port 123 proto udp
deny 6000
allow 9/tcp
allow 7070/tcp
`)
		after, code := e.audit()
		if !after.Active || code != 0 {
			t.Errorf("active: active %v, exit %d; want true, 0", after.Active, code)
		}
		// The audit is not trivially right: the statuses the policy
		// makes, then real packets for every socket.
		want := map[string]string{
			"tcp ipv4 22": "open", "tcp ipv6 22": "open", "tcp ipv4 80": "open", "tcp ipv6 80": "open",
			"tcp ipv4 443": "open-some", "tcp ipv6 443": "open-some", "tcp ipv4 25": "closed", "tcp ipv6 5432": "closed",
			"tcp ipv4 2222": "open", "udp ipv4 53": "open", "udp ipv6 53": "open", "udp ipv4 123": "open-some",
			"udp ipv6 123": "closed", "udp ipv4 6000": "closed", "tcp ipv6 6000": "closed",
			"tcp ipv4 7070": "local-only", "tcp ipv6 7070": "local-only", "udp ipv6 7071": "local-only",
		}
		for _, f := range after.Sockets {
			k := f.Proto + " " + f.Family + " " + strconv.Itoa(int(f.Port))
			if w, ok := want[k]; ok {
				if f.Status != w {
					t.Errorf("%s: %s (from %v), want %s", k, f.Status, f.From, w)
				}
				delete(want, k)
			}
		}
		for k := range want {
			t.Errorf("%s: not in the audit", k)
		}
		unused := map[string]bool{}
		for _, u := range after.UnusedAllows {
			unused[u.Proto+" "+u.Ports] = true
		}
		if !unused["tcp 9"] || !unused["tcp 7070"] || unused["tcp 22"] || len(after.UnusedAllows) != 2 {
			t.Errorf("unused allows %+v, want tcp 9 and tcp 7070 (loopback only)", after.UnusedAllows)
		}
		for _, f := range after.Sockets {
			if f.Status == "open" && !slices.Equal(f.Except, []string{"blocklist bad"}) {
				t.Errorf("%s %s/%d open: except %v, want the blocklist named", f.Family, f.Proto, f.Port, f.Except)
			}
		}
		e.checkAudit(after, blocked)
	})
}

// checkAudit sends real packets from the client to every socket of the
// audit, from an address its sources admit (open) and from one they do
// not (open to some), and fails for each that does not match. blocked
// are the networks of the blocklist an open socket's finding names.
func (e *env) checkAudit(a auditOutput, blocked []netip.Prefix) {
	e.t.Helper()
	clients := append([]netip.Addr{lab.ClientV4, lab.ClientV6}, lab.ClientAlt...)
	var checks []lab.Check
	add := func(f auditFinding, src netip.Addr, reach bool) {
		dst := lab.ServerV4
		if f.Family == "ipv6" {
			dst = lab.ServerV6
		}
		// A socket bound to one address is probed at it.
		if a, err := netip.ParseAddr(f.Address); err == nil && !a.IsUnspecified() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && a.Is4() == (f.Family == "ipv4") {
			dst = a
		}
		p := lab.Probe{Proto: f.Proto, Src: src, Dst: netip.AddrPortFrom(dst, f.Port)}
		checks = append(checks, lab.Check{Name: f.Proto + " " + p.Dst.String() + " from " + src.String() + " (" + f.Status + ")",
			From: e.topo.Client, Probe: p, Expect: map[bool]lab.Outcome{true: lab.Open, false: ""}[reach]})
	}
	for _, f := range a.Sockets {
		// Every socket of the server's namespace is this test's.
		if f.PID != os.Getpid() {
			e.t.Errorf("%s %s port %d: owned by PID %d, want this test's %d", f.Proto, f.Family, f.Port, f.PID, os.Getpid())
		}
		v6 := f.Family == "ipv6"
		for _, c := range clients {
			if c.Is6() != v6 {
				continue
			}
			switch f.Status {
			case "open", "inactive-open":
				reach := true
				for _, b := range blocked {
					if len(f.Except) > 0 && b.Contains(c) {
						reach = false
					}
				}
				add(f, c, reach)
			case "closed", "local-only":
				add(f, c, false)
			case "open-some":
				in := false
				for _, s := range f.From {
					// "NET", "NET on IFACE", "any on IFACE": the client
					// comes in on eth0.
					src, iface, ok := strings.Cut(s, " on ")
					if ok && iface != "eth0" {
						continue
					}
					if p, err := netip.ParsePrefix(src); err == nil && p.Contains(c) {
						in = true
					} else if src == "any" {
						in = true
					}
				}
				add(f, c, in)
			default:
				e.t.Errorf("unknown status %q: %+v", f.Status, f)
			}
		}
	}
	if len(checks) == 0 {
		e.t.Fatal("the audit listed nothing to check")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for _, r := range lab.RunChecks(ctx, checks) {
		if r.Err != nil {
			e.t.Errorf("%s [%s]: %v", r.Name, e.backend, r.Err)
			continue
		}
		if (r.Expect == lab.Open) != (r.Observed == lab.Open) {
			e.t.Errorf("%s [%s]: observed %s", r.Name, e.backend, r.Observed)
		}
	}
}

// Filtering outside moat that sees incoming packets is warned of: what
// the audit calls open under moat's rules, another table may drop (and
// here does, with real packets); moat not active is warned of too.
func TestAuditOtherFiltering(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		warned := func(a auditOutput, part string) bool {
			for _, w := range a.Warnings {
				if strings.Contains(w, part) {
					return true
				}
			}
			return false
		}
		a, _ := e.audit()
		if !warned(a, "moat is not active") || warned(a, "filtering outside moat") {
			t.Errorf("inactive, no other filtering: warnings %q", a.Warnings)
		}
		e.apply("default deny incoming\nallow 80/tcp\n")
		a, code := e.audit()
		if code != 0 || len(a.Warnings) != 0 || len(a.OtherFiltering) != 0 {
			t.Errorf("active, alone: exit %d, warnings %q, other filtering %s", code, a.Warnings, a.OtherFiltering)
		}
		e.run("server", "nft", "add", "table", "inet", "audit_other")
		e.run("server", "nft", "add", "chain", "inet", "audit_other", "input", "{ type filter hook input priority -10; policy accept; }")
		e.run("server", "nft", "add", "rule", "inet", "audit_other", "input", "tcp", "dport", "80", "drop")
		a, _ = e.audit()
		if !warned(a, "filtering outside moat") || len(a.OtherFiltering) == 0 {
			t.Errorf("another table filters input: warnings %q, other filtering %s", a.Warnings, a.OtherFiltering)
		}
		for _, f := range a.Sockets {
			if f.Port == 80 && f.Status != "open" {
				t.Errorf("moat's rules open port 80: %+v", f)
			}
		}
		// Why the warning matters: the other table drops what moat opens.
		e.expect(false, "client tcp 192.0.2.1:80 timeout", "client tcp [2001:db8::1]:80 timeout")
	})
}

// Not as root: the audit says it cannot be made (exit 2) rather than
// judging half of what it should.
func TestAuditNotRoot(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", moatBin, "audit", "--json").CombinedOutput()
	ee := (*exec.ExitError)(nil)
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "run it as root") {
		t.Errorf("not root: %v\n%s", err, out)
	}
}
