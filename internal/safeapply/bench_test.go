package safeapply

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// BenchmarkCheckSessions measures the lockout check of 5 sessions against
// a 10,000-rule policy: trying every reconnect source port, against a
// baseline in the same run that tries only each session's own port. "sport-rules" has 1,000 source-port allow rules
// that could match the reconnect and cut nothing, the worst case for the
// port stretches (each is tried);
// "other-rules" has them on another port, which the check skips.
//
//	go test -run XXX -bench CheckSessions ./internal/safeapply/
func BenchmarkCheckSessions(b *testing.B) {
	for _, kind := range []string{"other-rules", "sport-rules"} {
		var sb strings.Builder
		sb.WriteString("default deny incoming\n")
		for i := range 9000 {
			fmt.Fprintf(&sb, "deny proto tcp from 2001:db8:%x:%x::/64 to any port 9\n", i/65536, i%65536)
		}
		port := 80
		if kind == "sport-rules" {
			port = 22
		}
		for i := range 1000 {
			fmt.Fprintf(&sb, "allow proto tcp from any port %d:%d to any port %d\n", 1024+i*60, 1024+i*60+9, port)
		}
		sb.WriteString("allow 22/tcp\n")
		p, err := policy.NewDocument("moat.conf", []byte(sb.String())).Policy(nil)
		if err != nil {
			b.Fatal(err)
		}
		rs := ruleset.Compile(p)
		var sessions []Session
		for i := range 5 {
			sessions = append(sessions, Session{Client: netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("203.0.113.%d", i+1)), 61500),
				Server: netip.MustParseAddrPort("192.0.2.1:22"), Source: "bench"})
		}
		var baseline float64
		for _, mode := range []string{"own-port", "reconnect-ports"} {
			if mode == "reconnect-ports" {
				for i := range sessions {
					sessions[i].ReconnectPorts = policy.Ports{{First: 32768, Last: 60999}, ianaEphemeral}
				}
			}
			b.Run(kind+"/"+mode, func(b *testing.B) {
				for b.Loop() {
					CheckSessions(rs, p, sessions, func(netip.Addr) string { return "eth0" })
				}
				per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
				if mode == "own-port" {
					baseline = per
				}
				b.ReportMetric(per/baseline, "x-baseline")
			})
		}
	}
}

// BenchmarkTCPTable reads this namespace's TCP table the ways FindSSH can:
// /proc/net/tcp and tcp6 as os.ReadFile reads them (512-byte steps, the
// baseline: what FindSSH did), /proc in large steps (the fallback), and
// sock_diag (what it does). Each read of /proc and each dump walks the
// kernel's whole established hash, which network namespaces share.
//
//	go test -run XXX -bench TCPTable ./internal/safeapply/     # as root for sock_diag
func BenchmarkTCPTable(b *testing.B) {
	var base time.Duration
	for _, c := range []struct {
		name string
		read func() error
	}{
		{"proc-readfile", func() error {
			for _, name := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
				if _, err := os.ReadFile(name); err != nil {
					return err
				}
			}
			return nil
		}},
		{"proc-large-reads", func() error { _, err := readTCP("/proc"); return err }},
		{"sock-diag-per-family", func() error {
			_, diag, err := tcpTable(diagTCP, "/proc")
			if err == nil && !diag {
				err = fmt.Errorf("sock_diag did not answer")
			}
			return err
		}},
		{"sock-diag", func() error {
			_, diag, err := kernelTCP()
			if err == nil && !diag {
				err = fmt.Errorf("sock_diag did not answer")
			}
			return err
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if err := c.read(); err != nil {
					b.Fatal(err)
				}
			}
			per := time.Since(start) / time.Duration(b.N)
			if c.name == "proc-readfile" {
				base = per // the last run's (b.Run runs once with N=1 first)
			}
			b.ReportMetric(float64(per)/float64(base), "x-baseline")
		})
	}
}

// BenchmarkFindSSH is the whole search for SSH sessions on this machine
// (the TCP table and every process's name and, for sshd and the socket
// activators, its sockets), against the floor of that work in the same
// run: listing /proc and reading each process's name with os.ReadFile.
//
//	go test -run XXX -bench FindSSH ./internal/safeapply/     # as root
func BenchmarkFindSSH(b *testing.B) {
	var base time.Duration
	b.Run("baseline-readfile-comm", func(b *testing.B) {
		start := time.Now()
		for i := 0; i < b.N; i++ {
			dirs, err := os.ReadDir("/proc")
			if err != nil {
				b.Fatal(err)
			}
			for _, d := range dirs {
				if d.Name()[0] >= '0' && d.Name()[0] <= '9' {
					_, _ = os.ReadFile("/proc/" + d.Name() + "/comm")
				}
			}
		}
		base = time.Since(start) / time.Duration(b.N)
	})
	b.Run("find-ssh", func(b *testing.B) {
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if _, err := FindSSH("/proc", ""); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(time.Since(start)/time.Duration(b.N))/float64(base), "x-baseline")
	})
}
