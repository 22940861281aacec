// Package e2e proves moat's behaviour with real packets: each test builds
// its own network namespaces, applies a policy in the server namespace with
// the real moat binary, and sends traffic from the client (and, for routed
// traffic, a backend behind the server).
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

var moatBin string

var backends = []string{"nftables", "iptables"}

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			if os.Getenv("CI") != "" {
				fmt.Fprintln(os.Stderr, "e2e: CI must run these tests as root")
				return 1
			}
			fmt.Fprintln(os.Stderr, "e2e: skipped, needs root for network namespaces")
			return 0
		}
		// The namespaces a run killed before its cleanup left (kill -9
		// of a test or of the packet rate benchmark, a go test timeout):
		// those lab.NewNS made (its mark: maker's PID namespace, PID and
		// start time) under moat's test prefix whose maker is gone,
		// never another's (lab.RemoveStale).
		if gone, err := lab.RemoveStale("moat"); len(gone) > 0 || err != nil {
			fmt.Fprintf(os.Stderr, "e2e: removed %d namespaces left by runs that were killed %q (%v)\n", len(gone), gone, err)
		}
		dir, err := os.MkdirTemp("", "moat-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer func() { _ = os.RemoveAll(dir) }() // a temp dir; the exit code is decided
		moatBin = filepath.Join(dir, "moat")
		// Every moat the tests start keeps its state here, never in the
		// host's /var/lib/moat (tests that need their own pass --state-dir).
		if err := os.Setenv("MOAT_STATE_DIR", filepath.Join(dir, "state")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// moat, and beside it the guard with its metrics, which
		// `moat guard --metrics-listen` runs (as the package installs
		// it in /usr/lib/moat). Built as scripts/package.sh builds them,
		// statically (CGO_ENABLED=0): the tests and benchmarks run the
		// program the package ships, not a cgo build that loads libc
		// through the dynamic linker at every start (0.3 to 0.5 ms of
		// CPU a command, docs/benchmarks.md).
		for _, prog := range []string{"moat", "moat-guard-metrics"} {
			build := exec.Command("go", "build", "-o", filepath.Join(dir, prog), "../cmd/"+prog)
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
			build.Stdout, build.Stderr = os.Stderr, os.Stderr
			if err := build.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "e2e: build %s: %v\n", prog, err)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// Ports the hosts listen on.
var (
	serverTCP  = []uint16{22, 25, 53, 80, 113, 443, 2222, 5432, 6000, 6003, 6007, 8080}
	serverUDP  = []uint16{53, 123, 6000, 6007}
	clientTCP  = []uint16{25, 80}
	clientUDP  = []uint16{53}
	backendTCP = []uint16{80, 443}
	backendUDP = []uint16{53}
)

// env is one test's namespaces, listeners and policy file.
type env struct {
	t       testing.TB
	topo    *lab.Topology
	dir     string
	conf    string
	backend string
	guard   *exec.Cmd // the last 'moat guard' started
	// guardEnv is added to the environment of 'moat guard' (not set with
	// os.Setenv: tests run in parallel).
	guardEnv []string
}

func newEnv(t *testing.T, backend string, routed bool) *env {
	t.Helper()
	return newEnvPorts(t, backend, routed, serverTCP)
}

// newSSHEnv leaves ports 22 and 2222 of the server free for a real sshd.
func newSSHEnv(t *testing.T, backend string) *env {
	t.Helper()
	return newEnvPorts(t, backend, false, sshFreeTCP())
}

// sshFreeTCP are the server's listener ports less 22 and 2222, which a
// real sshd takes.
func sshFreeTCP() []uint16 {
	var tcp []uint16
	for _, p := range serverTCP {
		if p != 22 && p != 2222 {
			tcp = append(tcp, p)
		}
	}
	return tcp
}

func newEnvPorts(t *testing.T, backend string, routed bool, tcp []uint16) *env {
	t.Helper()
	topo, err := lab.NewTopology("moate2e", routed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	svc := &lab.Services{}
	t.Cleanup(func() { _ = svc.Close() }) // also closes sockets the peers ended
	ctx := context.Background()
	if err := svc.ServeAll(ctx, topo.Server, tcp, serverUDP); err != nil {
		t.Fatal(err)
	}
	if err := svc.ServeAll(ctx, topo.Client, clientTCP, clientUDP); err != nil {
		t.Fatal(err)
	}
	if routed {
		if err := svc.ServeAll(ctx, topo.Backend, backendTCP, backendUDP); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	return &env{t: t, topo: topo, dir: dir, conf: filepath.Join(dir, "moat.conf"), backend: backend}
}

// moat runs the moat binary in the server namespace.
func (e *env) moat(args ...string) (string, error) {
	e.t.Helper()
	// A bound for a hung command, not a speed check: under the parallel
	// CI run (load 30 and more on two cores) 'moat explain' with a
	// 100,000-entry blocklist (about 1.2s of CPU) passed 30s.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	full := append([]string{"--config", e.conf, "--backend", e.backend, "--state-dir", e.stateDir()}, args...)
	out, err := e.topo.Server.Run(ctx, moatBin, full...)
	return string(out), err
}

// stateDir keeps each test's saved ruleset and pending confirmation apart.
func (e *env) stateDir() string { return filepath.Join(e.dir, "state") }

func (e *env) mustMoat(args ...string) string {
	e.t.Helper()
	out, err := e.moat(args...)
	if err != nil {
		e.t.Fatalf("moat %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// apply writes the policy file and enables it.
func (e *env) apply(policy string) {
	e.t.Helper()
	if err := os.WriteFile(e.conf, []byte(policy), 0o644); err != nil {
		e.t.Fatal(err)
	}
	e.mustMoat("enable")
}

// ns names a host of the topology.
func (e *env) ns(name string) *lab.NS {
	switch name {
	case "client":
		return e.topo.Client
	case "server":
		return e.topo.Server
	case "backend":
		return e.topo.Backend
	}
	e.t.Fatalf("unknown host %q", name)
	return nil
}

// parseProbe reads "HOST[/SRC[:SPORT]] PROTO DST[:PORT] EXPECT", e.g.
// "client tcp 192.0.2.1:22 open", "client/192.0.2.3 udp [2001:db8::1]:53 timeout",
// "client/192.0.2.2:1500 tcp 192.0.2.1:80 open", "server icmp 2001:db8::2 open".
func (e *env) parseProbe(spec string) lab.Check {
	e.t.Helper()
	f := strings.Fields(spec)
	if len(f) != 4 {
		e.t.Fatalf("bad probe %q", spec)
	}
	host, src, _ := strings.Cut(f[0], "/")
	c := lab.Check{Name: spec, From: e.ns(host), Expect: lab.Outcome(f[3])}
	c.Probe.Proto = f[1]
	if src != "" {
		if ap, err := netip.ParseAddrPort(src); err == nil {
			c.Probe.Src, c.Probe.SPort = ap.Addr(), ap.Port()
		} else {
			c.Probe.Src = netip.MustParseAddr(src)
		}
	}
	if ap, err := netip.ParseAddrPort(f[2]); err == nil {
		c.Probe.Dst = ap
	} else {
		c.Probe.Dst = netip.AddrPortFrom(netip.MustParseAddr(f[2]), 0)
	}
	return c
}

// expect sends the probes (at once, or one after another when seq) and
// fails the test for every outcome that differs.
func (e *env) expect(seq bool, specs ...string) {
	e.t.Helper()
	var checks []lab.Check
	for _, s := range specs {
		checks = append(checks, e.parseProbe(s))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var results []lab.Result
	if seq {
		for _, c := range checks {
			results = append(results, lab.RunChecks(ctx, []lab.Check{c})...)
		}
	} else {
		results = lab.RunChecks(ctx, checks)
	}
	for _, r := range results {
		if !r.OK() {
			e.t.Errorf("%s [%s]: observed %s (err %v)", r.Name, e.backend, r.Observed, r.Err)
		}
	}
}

// counter returns the packets counted for a status rule number (0: the
// incoming default), read from `moat status --json`.
func (e *env) counter(rule int) uint64 {
	e.t.Helper()
	var st struct {
		Rules []struct {
			Number  int    `json:"number"`
			Packets uint64 `json:"packets"`
		} `json:"rules"`
		Defaults map[string]struct {
			Packets uint64 `json:"packets"`
		} `json:"defaults"`
	}
	out := e.mustMoat("status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		e.t.Fatalf("status --json: %v\n%s", err, out)
	}
	if rule == 0 {
		return st.Defaults["incoming"].Packets
	}
	for _, r := range st.Rules {
		if r.Number == rule {
			return r.Packets
		}
	}
	e.t.Fatalf("no rule %d in status:\n%s", rule, out)
	return 0
}

func requireBackend(t *testing.T, name string) {
	t.Helper()
	for _, prog := range map[string][]string{"nftables": {"nft"}, "iptables": {"iptables-restore", "ip6tables-restore", "ipset"}}[name] {
		if _, err := exec.LookPath(prog); err != nil {
			t.Fatalf("%s backend: %s is not installed", name, prog)
		}
	}
}

// eachBackend runs fn in parallel subtests, one per backend (its tools
// checked first), and makes t parallel too.
func eachBackend(t *testing.T, fn func(t *testing.T, backend string)) {
	t.Helper()
	t.Parallel()
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			requireBackend(t, b)
			t.Parallel()
			fn(t, b)
		})
	}
}

// newFile writes contents to the file name in the test's directory and
// returns its path.
func (e *env) newFile(name, contents string) string {
	e.t.Helper()
	path := filepath.Join(e.dir, name)
	writeFile(e.t, path, contents)
	return path
}

// addClientAddrs gives the client namespace's eth0 more addresses (a
// prefix each, ready at once), to send from.
func (e *env) addClientAddrs(addrs ...string) {
	e.t.Helper()
	for _, a := range addrs {
		if out, err := e.topo.Client.Run(context.Background(), "ip", "addr", "add", a, "dev", "eth0", "nodad", "preferred_lft", "0"); err != nil {
			e.t.Fatalf("ip addr add %s: %v\n%s", a, err, out)
		}
	}
}

// removeFingerprint removes the kernel fingerprint record (as after an
// upgrade), failing the test if there was none.
func (e *env) removeFingerprint() {
	e.t.Helper()
	if err := os.Remove(filepath.Join(e.stateDir(), "kernel-fingerprint.json")); err != nil {
		e.t.Fatal(err)
	}
}

// removeFingerprintIfAny removes the kernel fingerprint record if there
// is one.
func (e *env) removeFingerprintIfAny() {
	e.t.Helper()
	if err := os.Remove(filepath.Join(e.stateDir(), "kernel-fingerprint.json")); err != nil && !os.IsNotExist(err) {
		e.t.Fatal(err)
	}
}

// expectStatusClean: 'moat status' names no change made outside moat
// (what: the error if it does).
func (e *env) expectStatusClean(what string) {
	e.t.Helper()
	if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") {
		e.t.Errorf("%s:\n%s", what, st)
	}
}

// moatWith runs moat in the server namespace with bin (a directory of
// wrappers) first in PATH.
func (e *env) moatWith(bin string, args ...string) string {
	e.t.Helper()
	return e.run("server", append([]string{"env"}, e.withPath(bin, args)...)...)
}

// moatWithErr is moatWith returning moat's output and error.
func (e *env) moatWithErr(bin string, args ...string) ([]byte, error) {
	return e.topo.Server.Run(context.Background(), "env", e.withPath(bin, args)...)
}

// withPath is env's arguments for moatWith.
func (e *env) withPath(bin string, args []string) []string {
	return append([]string{"PATH=" + bin + ":" + os.Getenv("PATH"), moatBin, "--config", e.conf, "--backend", e.backend, "--state-dir", e.stateDir()}, args...)
}

// repeatUntil runs fn over and over in a goroutine that wg counts, until
// stop is closed (looked at before each call) or fn returns false.
func repeatUntil(wg *sync.WaitGroup, stop <-chan struct{}, fn func() bool) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if !fn() {
				return
			}
		}
	}()
}

// onBackend is the environment of a parallel test of backend b alone
// (skipped where b is missing).
func onBackend(t *testing.T, b string) *env {
	t.Helper()
	t.Parallel()
	requireBackend(t, b)
	return newEnv(t, b, false)
}

// eachBackendSwitch runs fn, in parallel, for each direction of a change
// of backend (nftables to iptables and back), in a subtest named
// "from-to-to"; it needs both backends.
func eachBackendSwitch(t *testing.T, fn func(t *testing.T, from, to string)) {
	t.Helper()
	eachBackendPair(t, [][2]string{{"nftables", "iptables"}, {"iptables", "nftables"}}, fn)
}

// eachBackendPair is eachBackendSwitch over the pairs (from, to) given.
func eachBackendPair(t *testing.T, pairs [][2]string, fn func(t *testing.T, from, to string)) {
	t.Helper()
	requireBackend(t, "nftables")
	requireBackend(t, "iptables")
	for _, dir := range pairs {
		t.Run(dir[0]+"-to-"+dir[1], func(t *testing.T) {
			t.Parallel()
			fn(t, dir[0], dir[1])
		})
	}
}
