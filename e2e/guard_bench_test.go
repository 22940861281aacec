package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// banAddr is the nth test address (IPv6 documentation space: never a host).
func banAddr(n int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("2001:db8:ff:%x::%x", n/65535, n%65535+1))
}

// inKernel asks the kernel whether an address is banned: one exec of nft
// or ipset, as an outside observer would.
func (e *env) inKernel(a netip.Addr) bool {
	var cmd []string
	if e.backend == "nftables" {
		cmd = []string{"nft", "get", "element", "inet", "moat", "ban6", "{ " + a.String() + " }"}
	} else {
		cmd = []string{"ipset", "test", "moat-ban6", a.String()}
	}
	_, err := e.topo.Server.Run(context.Background(), cmd[0], cmd[1:]...)
	return err == nil
}

func appendLog(b testing.TB, path, text string) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		b.Fatal(errors.Join(err, f.Close()))
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkBanLatency measures the time from a failure line being written
// to sshd's log file until the ban is in the kernel, as an outside observer
// sees it (polling the set). The baseline is one such poll, measured in the
// same run. At least 200 bans:
//
//	go test -run XXX -bench BanLatency -benchtime 200x ./e2e/
func BenchmarkBanLatency(b *testing.B) {
	for _, be := range backends {
		b.Run(be, func(b *testing.B) {
			e := newBenchEnv(b, be)
			logFile := filepath.Join(e.dir, "auth.log")
			appendLog(b, logFile, "")
			e.apply("default deny incoming\nallow 22/tcp\nguard sshd maxretry 1 bantime 1h\n")
			e.startGuard("--log-file", logFile)
			start := time.Now()
			for i := 0; i < 20; i++ {
				e.inKernel(banAddr(1 << 20))
			}
			poll := time.Since(start) / 20
			var lat []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				a := banAddr(i)
				t0 := time.Now()
				appendLog(b, logFile, fmt.Sprintf("Nov 25 11:40:01 srv sshd[812]: Failed password for root from %s port %d ssh2\n", a, 1000+i))
				for !e.inKernel(a) {
					if time.Since(t0) > 10*time.Second {
						b.Fatalf("%s not banned after 10s", a)
					}
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			med, p99 := lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
			b.ReportMetric(float64(med.Microseconds())/1000, "ms-median")
			b.ReportMetric(float64(p99.Microseconds())/1000, "ms-p99")
			b.ReportMetric(float64(poll.Microseconds())/1000, "ms-poll-baseline")
			b.ReportMetric(float64(med)/float64(poll), "x-baseline")
		})
	}
}

// BenchmarkBanInsert measures putting 10,000 bans into the kernel in one
// batch, per ban, against a batch of 100 in the same run.
//
//	go test -run XXX -bench BanInsert -benchtime 3x ./e2e/
func BenchmarkBanInsert(b *testing.B) {
	for _, be := range backends {
		var base float64
		for _, n := range []int{100, 10000} {
			b.Run(fmt.Sprintf("%s/bans-%d", be, n), func(b *testing.B) {
				e := newBenchEnv(b, be)
				e.apply("default deny incoming\n")
				bk, err := backend.ForName(policy.Backend(be))
				if err != nil {
					b.Fatal(err)
				}
				var total time.Duration
				for i := 0; i < b.N; i++ {
					bans := make([]ruleset.Ban, n)
					for j := range bans {
						bans[j] = ruleset.Ban{Addr: banAddr(i*n + j), Timeout: time.Hour, Reason: "bench"}
					}
					t0 := time.Now()
					if err := e.topo.Server.Do(func() error { return bk.Ban(context.Background(), bans) }); err != nil {
						b.Fatal(err)
					}
					total += time.Since(t0)
				}
				per := float64(total.Nanoseconds()) / float64(b.N*n)
				b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/batch")
				b.ReportMetric(per/1000, "µs/ban")
				if n == 100 {
					base = per
				}
				b.ReportMetric(per/base, "x-baseline")
			})
		}
	}
}

// BenchmarkGuardMemory100k measures the guard's resident memory once it
// has banned 100,000 addresses, against the same guard with none, in the
// same run.
//
//	go test -run XXX -bench GuardMemory -benchtime 1x ./e2e/
func BenchmarkGuardMemory100k(b *testing.B) {
	const n = 100000
	for _, be := range backends {
		b.Run(be, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				e := newBenchEnv(b, be)
				logFile := filepath.Join(e.dir, "auth.log")
				appendLog(b, logFile, "")
				e.apply("default deny incoming\nguard sshd maxretry 1 bantime 1h\n")
				e.startGuard("--log-file", logFile)
				pid := guardPID(b, e)
				idle := rssKB(b, pid)
				var sb strings.Builder
				for j := 0; j < n; j++ {
					fmt.Fprintf(&sb, "Nov 25 11:40:01 srv sshd[812]: Failed password for root from %s port 22 ssh2\n", banAddr(j))
				}
				t0 := time.Now()
				appendLog(b, logFile, sb.String())
				for !e.inKernel(banAddr(n - 1)) {
					if time.Since(t0) > 5*time.Minute {
						b.Fatal("100k bans not in the kernel after 5 minutes")
					}
					time.Sleep(100 * time.Millisecond)
				}
				took := time.Since(t0)
				time.Sleep(3 * time.Second) // past the guard's next tick
				full := rssKB(b, pid)
				b.ReportMetric(float64(idle)/1024, "MB-rss-idle")
				b.ReportMetric(float64(full)/1024, "MB-rss-100k")
				b.ReportMetric(float64(full)/float64(idle), "x-baseline")
				b.ReportMetric(took.Seconds(), "s-to-ban-100k")
			}
		})
	}
}

func guardPID(b *testing.B, e *env) int {
	out, err := exec.Command("pgrep", "-f", "--newest", "state-dir "+e.stateDir()+" guard").Output()
	if err != nil {
		b.Fatalf("find the guard: %v", err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return pid
}

func rssKB(b *testing.B, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
