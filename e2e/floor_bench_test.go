package e2e

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// BenchmarkFixedCostFloor: where the fixed cost of a command stands
// against what a Go program cannot go under. Each in a scratch namespace
// of its own, in turn, b.N times:
//
//   - baseline: `nft -f` of BenchmarkChange's one-rule ruleset;
//   - floor: the same transaction (table, chain, rule) from a minimal Go
//     program over netlink (testdata/floor, google/nftables);
//   - hello: the smallest Go program (testdata/hello): a Go process's
//     start and exit;
//   - version: `moat --version` (moat's start: the runtime, package
//     initialisation, the command tree);
//   - edit: BenchmarkChange's edit (`moat allow 8080/tcp`, `moat delete
//     allow 8080/tcp` in turn, a two-line policy) in a namespace with no
//     TCP socket, as BenchmarkChange's;
//   - edit-sockets: the same with a listener (port 443) and a connection
//     to it in the namespace, held by this test process: as on a server,
//     the lockout check reads every process of the host to learn who
//     holds them (on port 22, held by no sshd, it would also read PID 1's
//     descriptors, as for a socket-activated sshd).
//
// Reported: each one's median CPU time (ms-cpu-NAME, user and system)
// and its ratio to the baseline's (x-cpu-NAME).
//
//	go test -run XXX -bench FixedCostFloor -benchtime 30x ./e2e/
func BenchmarkFixedCostFloor(b *testing.B) {
	dir := b.TempDir()
	progs := map[string]string{}
	for _, p := range []string{"floor", "hello"} {
		progs[p] = filepath.Join(dir, p)
		build := exec.Command("go", "build", "-o", progs[p], "./testdata/"+p)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			b.Fatalf("build %s: %v\n%s", p, err, out)
		}
	}
	one := filepath.Join(dir, "one.nft")
	writeFile(b, one, "table inet one {\n\tchain input { type filter hook input priority 0; policy accept; tcp dport 22 accept; }\n}\n")
	names := []string{"baseline", "floor", "hello", "version", "edit", "edit-sockets"}
	nss := map[string]*lab.NS{}
	for _, n := range names {
		nss[n] = benchNS(b)
	}
	b.Cleanup(func() {
		var errs []error
		for _, ns := range nss {
			errs = append(errs, ns.Close())
		}
		if err := errors.Join(errs...); err != nil {
			b.Error(err)
		}
	})
	edits := map[string]string{}
	for _, n := range []string{"edit", "edit-sockets"} {
		edits[n] = filepath.Join(dir, n)
		if err := os.MkdirAll(edits[n], 0o755); err != nil {
			b.Fatal(err)
		}
		writeFile(b, filepath.Join(edits[n], "moat.conf"), blockPolicy(0))
		moatIn(b, nss[n], edits[n], "nftables", "enable", "--force")
	}
	// A listener and a connection to it: any socket makes the lockout
	// check attribute it to a process.
	var ln net.Listener
	var conns []net.Conn
	if err := nss["edit-sockets"].Do(func() error {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:443"); err != nil {
			return err
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		s, err := ln.Accept()
		if err != nil {
			return err
		}
		conns = append(conns, c, s)
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	defer func() {
		for _, c := range conns {
			_ = c.Close() // a benchmark's own sockets
		}
		_ = ln.Close()
	}()
	cpu := map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, n := range names {
			var u syscall.Rusage
			switch n {
			case "baseline":
				u = runInUsage(b, nss[n], one, "nft", "-f", "-")
			case "floor", "hello":
				u = runInUsage(b, nss[n], "", progs[n])
			case "version":
				u = runInUsage(b, nss[n], "", moatBin, "--version")
			default:
				args := []string{"--config", filepath.Join(edits[n], "moat.conf"), "--backend", "nftables", "--state-dir", filepath.Join(edits[n], "state"), "allow", "8080/tcp"}
				if i%2 == 1 {
					args = append(args[:len(args)-2], "delete", "allow", "8080/tcp")
				}
				u = runInUsage(b, nss[n], "", moatBin, args...)
			}
			cpu[n] = append(cpu[n], cpuTime(u))
		}
	}
	b.StopTimer()
	base := median(cpu["baseline"])
	for _, n := range names {
		m := median(cpu[n])
		b.ReportMetric(float64(m.Microseconds())/1000, "ms-cpu-"+n)
		if n != "baseline" {
			b.ReportMetric(float64(m)/float64(base), "x-cpu-"+n)
		}
	}
}
