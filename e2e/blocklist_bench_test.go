package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkBlocklistRefresh measures 'moat blocklist update' when 100 of a
// list's networks change, with 1,000 and 100,000 networks loaded: the whole
// command (HTTPS download from the namespace's loopback, parse, checks,
// apply) and the part that loads the kernel ('swapped into the kernel in
// ...'). The baseline, in the same run: nftables, `nft -f` of a one-rule
// ruleset in a table of its own (the least a change costs through nft; the
// same 100 deletes written by hand take 14 to 36 s with nft 1.0.6, which
// fetches the whole set per delete); iptables, the same 100 deletes and
// 100 adds written by hand into an ipset of the same size (ipset restore).
//
//	go test -run XXX -bench BlocklistRefresh -benchtime 5x -timeout 30m ./e2e/
//
// The file/ variants read a 'blocklist NAME file PATH' list instead of
// downloading it (no TLS, no HTTP: the command's own work alone).
func BenchmarkBlocklistRefresh(b *testing.B) {
	for _, be := range backends {
		for _, src := range []string{"url", "file"} {
			for _, n := range []int{1000, 100000} {
				name := fmt.Sprintf("%s/networks-%d", be, n)
				if src == "file" {
					name = fmt.Sprintf("%s/file/networks-%d", be, n)
				}
				b.Run(name, func(b *testing.B) { benchBlocklistRefresh(b, be, src, n) })
			}
		}
	}
}

func benchBlocklistRefresh(b *testing.B, be, src string, n int) {
	e := newBenchEnv(b, be)
	ls := e.startListServer()
	dir := b.TempDir()
	bigList(b, filepath.Join(dir, "a"), n)
	bigList(b, filepath.Join(dir, "b"), n)
	lists := [2]string{}
	for i, name := range []string{"a", "b"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		lists[i] = string(data)
	}
	// b: the first 100 IPv4 networks replaced by 100 others.
	lines := strings.Split(lists[1], "\n")
	var old, repl []string
	for i := 1; i <= 100; i++ {
		a := 0x64400000 + 2*uint32(i-1)
		old = append(old, fmt.Sprintf("%d.%d.%d.%d", a>>24, a>>16&0xff, a>>8&0xff, a&0xff))
		r := 0x64400001 + 2*uint32(i-1) // the odd neighbours: no merging
		lines[i] = fmt.Sprintf("%d.%d.%d.%d", r>>24, r>>16&0xff, r>>8&0xff, r&0xff)
		repl = append(repl, lines[i])
	}
	lists[1] = strings.Join(lines, "\n")
	listFile := filepath.Join(dir, "big.list")
	// set puts a version of the list where the source is;
	// update runs the command.
	set := func(i int) { ls.set("/big.txt", lists[i], 0) }
	update := func() (string, error) { return e.moatTLS(ls, "blocklist", "update") }
	source := "url " + ls.url("/big.txt")
	if src == "file" {
		set = func(i int) { writeFile(b, listFile, lists[i]) }
		update = func() (string, error) { return e.moat("blocklist", "update") }
		source = "file " + listFile
	}
	set(0)
	e.apply(fmt.Sprintf("default deny incoming\nallow 22/tcp\nblocklist big %s\n", source))
	if out, err := update(); err != nil {
		b.Fatalf("first update: %v\n%s", err, out)
	}
	base := e.baselineSet(be, lists[0])
	swapped := regexp.MustCompile(`swapped into the kernel \([a-z]+\) in ([0-9.]+)(ms|s|µs)`)
	var total, kernel, hand time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for turn := 1; turn <= 2; turn++ {
			set(turn % 2)
			t0 := time.Now()
			out, err := update()
			total += time.Since(t0)
			if err != nil || !strings.Contains(out, "(+100 -100)") {
				b.Fatalf("update: %v\n%s", err, out)
			}
			m := swapped.FindStringSubmatch(out)
			if m == nil {
				b.Fatalf("no kernel time in:\n%s", out)
			}
			v, _ := strconv.ParseFloat(m[1], 64)
			kernel += time.Duration(v * float64(map[string]time.Duration{"ms": time.Millisecond, "s": time.Second, "µs": time.Microsecond}[m[2]]))
			del, add := old, repl
			if turn == 2 {
				del, add = repl, old
			}
			t0 = time.Now()
			base(del, add)
			hand += time.Since(t0)
		}
	}
	b.StopTimer()
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(2*b.N) }
	b.ReportMetric(per(total), "ms-update")
	b.ReportMetric(per(kernel), "ms-kernel")
	b.ReportMetric(per(hand), "ms-baseline")
	b.ReportMetric(per(kernel)/per(hand), "x-baseline-kernel")
	b.ReportMetric(per(total)/per(hand), "x-baseline-update")
}

// baselineSet loads a list into a set of its own in the server namespace
// and returns a function that sends one change by hand: deletes, then adds,
// in one nft -f or one ipset restore.
func (e *env) baselineSet(be, list string) func(del, add []string) {
	e.t.Helper()
	var v4 []string
	for _, l := range strings.Split(list, "\n") {
		f, _, _ := strings.Cut(l, ";")
		f = strings.TrimSpace(f)
		if f != "" && !strings.Contains(f, ":") {
			v4 = append(v4, f)
		}
	}
	run := func(stdin, prog string, args ...string) {
		path := filepath.Join(e.dir, "baseline.in")
		writeFile(e.t, path, stdin)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := e.topo.Server.Run(ctx, prog, append(args, path)...); err != nil {
			e.t.Fatalf("%s: %v\n%.2000s", prog, err, out)
		}
	}
	if be == "nftables" {
		// In the client's namespace: a change in the server's would move
		// its ruleset generation, and moat's next command would read its
		// table back whole to see whether moat's rules were touched.
		return func(del, add []string) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			path := filepath.Join(e.dir, "baseline.nft")
			writeFile(e.t, path, "table inet benchbase {\n\tchain input { type filter hook input priority 0; policy accept; tcp dport 22 accept; }\n}\n")
			if out, err := e.topo.Client.Run(ctx, "nft", "-f", path); err != nil {
				e.t.Fatalf("nft: %v\n%s", err, out)
			}
		}
	}
	var s strings.Builder
	s.WriteString("create benchbase hash:net family inet maxelem 262144\n")
	for _, p := range v4 {
		s.WriteString("add benchbase " + p + "\n")
	}
	run(s.String(), "ipset", "restore", "-file")
	return func(del, add []string) {
		var s strings.Builder
		for _, p := range del {
			s.WriteString("del benchbase " + p + "\n")
		}
		for _, p := range add {
			s.WriteString("add benchbase " + p + "\n")
		}
		run(s.String(), "ipset", "restore", "-file")
	}
}
