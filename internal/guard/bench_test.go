package guard

import (
	"bufio"
	"strings"
	"testing"
	"time"
)

// benchLines are a realistic mix: failures of several kinds, noise that
// does not match, successes, with syslog banners.
func benchLines(b *testing.B) []string {
	var lines []string
	for _, c := range readCorpus(b) {
		if c.section == "SSH" || c.section == "Banner formats" {
			lines = append(lines, c.line)
		}
	}
	lines = append(lines,
		"Nov 25 11:40:01 srv sshd[812]: Failed password for root from 203.0.113.9 port 50022 ssh2",
		"Nov 25 11:40:01 srv sshd[812]: pam_unix(sshd:session): session opened for user admin(uid=1000) by (uid=0)",
		"Nov 25 11:40:01 srv CRON[900]: pam_unix(cron:session): session closed for user root",
		"Nov 25 11:40:01 srv systemd[1]: Started session-4.scope - Session 4 of User admin.")
	return lines
}

// BenchmarkParseLine reports lines parsed per second, and the cost of a
// parse against only splitting the same text into lines (the baseline,
// measured in the same run).
//
//	go test -run XXX -bench ParseLine ./internal/guard/
func BenchmarkParseLine(b *testing.B) {
	lines := benchLines(b)
	text := strings.Join(lines, "\n") + "\n"
	var base float64
	b.Run("baseline-scan", func(b *testing.B) {
		n := 0
		for i := 0; i < b.N; i++ {
			sc := bufio.NewScanner(strings.NewReader(text))
			for sc.Scan() {
				n++
			}
		}
		base = float64(b.Elapsed().Nanoseconds()) / float64(b.N*len(lines))
		b.ReportMetric(base, "ns/line")
	})
	b.Run("parse", func(b *testing.B) {
		matched := 0
		for i := 0; i < b.N; i++ {
			for _, l := range lines {
				if _, ok := ParseLine(l); ok {
					matched++
				}
			}
		}
		per := float64(b.Elapsed().Nanoseconds()) / float64(b.N*len(lines))
		b.ReportMetric(per, "ns/line")
		b.ReportMetric(1e9/per, "lines/s")
		if base > 0 {
			b.ReportMetric(per/base, "x-baseline")
		}
		if matched == 0 {
			b.Fatal("nothing matched")
		}
	})
	// A file line as the guard's loop takes it: the trust check and the
	// parse, with the banner split once (parseFileLine), against the two
	// calls that split it twice.
	b.Run("trust+parse-twice", func(b *testing.B) {
		matched := 0
		for i := 0; i < b.N; i++ {
			for _, l := range lines {
				if TrustedFileLine(l) {
					if _, ok := ParseLine(l); ok {
						matched++
					}
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(lines)), "ns/line")
		if matched == 0 {
			b.Fatal("nothing matched")
		}
	})
	b.Run("trust+parse-once", func(b *testing.B) {
		matched := 0
		for i := 0; i < b.N; i++ {
			for _, l := range lines {
				if _, ok, trusted := parseFileLine(l); trusted && ok {
					matched++
				}
			}
		}
		per := float64(b.Elapsed().Nanoseconds()) / float64(b.N*len(lines))
		b.ReportMetric(per, "ns/line")
		if base > 0 {
			b.ReportMetric(per/base, "x-baseline")
		}
		if matched == 0 {
			b.Fatal("nothing matched")
		}
	})
	// The guard's whole judgement: parse, then tie the line to its
	// connection (the lines carry sshd PIDs, as in a syslog file).
	b.Run("parse+judge", func(b *testing.B) {
		j := NewJudge(nil)
		t0 := time.Unix(1e9, 0)
		counted := 0
		for i := 0; i < b.N; i++ {
			for k, l := range lines {
				if ev, ok := ParseLine(l); ok {
					counted += len(j.Judge(ev, t0.Add(time.Duration(i*len(lines)+k)*time.Millisecond)).Count)
				}
			}
		}
		per := float64(b.Elapsed().Nanoseconds()) / float64(b.N*len(lines))
		b.ReportMetric(per, "ns/line")
		b.ReportMetric(1e9/per, "lines/s")
		if base > 0 {
			b.ReportMetric(per/base, "x-baseline")
		}
		if counted == 0 {
			b.Fatal("nothing counted")
		}
	})
}
