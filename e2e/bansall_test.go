package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// moatSplit runs moat in the server's namespace with its output and its
// errors apart.
func (e *env) moatSplit(args ...string) (stdout, stderr string, err error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	full := append([]string{"--config", e.conf, "--backend", e.backend, "--state-dir", e.stateDir()}, args...)
	cmd := exec.CommandContext(ctx, moatBin, full...)
	var o, s bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &s
	if err := e.topo.Server.Start(cmd); err != nil {
		return "", "", err
	}
	err = cmd.Wait()
	return o.String(), s.String(), err
}

// kernelBans is the kernel's own list of moat's bans (nft or ipset, as an
// outside observer reads it).
func (e *env) kernelBans() []string {
	e.t.Helper()
	var out []string
	for _, fam := range []string{"4", "6"} {
		var args []string
		if e.backend == "nftables" {
			args = []string{"nft", "-j", "list", "set", "inet", "moat", "ban" + fam}
		} else {
			args = []string{"ipset", "list", "moat-ban" + fam}
		}
		text, err := e.topo.Server.Run(context.Background(), args[0], args[1:]...)
		if err != nil {
			e.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, text)
		}
		if e.backend == "nftables" {
			// jq, not a Go copy of moat's own parser of nft's JSON: the
			// observer shares no code with what it checks.
			jq := exec.Command("jq", "-r", `.nftables[] | .set? // empty | .elem[]? | if type == "string" then . else .elem.val end`)
			jq.Stdin = bytes.NewReader(text)
			vals, err := jq.Output()
			if err != nil {
				e.t.Fatalf("jq over %s: %v", strings.Join(args, " "), err)
			}
			out = append(out, strings.Fields(string(vals))...)
			continue
		}
		members := false
		for _, l := range strings.Split(string(text), "\n") {
			if strings.HasPrefix(l, "Members:") {
				members = true
				continue
			}
			if f := strings.Fields(l); members && len(f) > 0 {
				out = append(out, f[0])
			}
		}
	}
	slices.SortFunc(out, func(a, b string) int { return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b)) })
	return out
}

// listedBans reads the addresses and reasons of 'moat bans --all' (text).
func listedBans(t *testing.T, out string) (addrs []string, reasons map[string]string) {
	t.Helper()
	reasons = map[string]string{}
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || f[0] == "ADDRESS" {
			continue
		}
		addrs = append(addrs, f[0])
		reasons[f[0]] = strings.Join(f[3:], " ")
	}
	return addrs, reasons
}

// 'moat bans --all' and --json list the kernel's bans exactly (what nft
// or ipset lists), sorted, with the reasons sanitized: on nftables from
// lookups of the addresses the history records when those are every ban,
// and from the kernel's dump when one is not (a ban written by hand
// here, as the port scan trap's are), which then is listed too. Both
// backends, IPv4 and IPv6.
func TestBansAllRecordedAndUnknown(t *testing.T) {
	eachBackend(t, func(t *testing.T, be string) {
		e, bk := newBanEnv(t, be)
		var args []string
		for i := 0; i < 1200; i++ {
			args = append(args, banAddr(i).String(), netip.AddrFrom4([4]byte{198, 51, 100 + byte(i/250), byte(1 + i%250)}).String())
		}
		e.mustMoat(append([]string{"ban", "--for", "2h", "--reason", "user \x1b[2J<bob>\n203.0.113.1  1h"}, args...)...)
		check := func(what string, wantLookups bool, extra string) {
			t.Helper()
			out, stderr, err := e.moatSplit("-v", "bans", "--all")
			if err != nil {
				t.Fatalf("%s: moat bans --all: %v\n%s", what, err, stderr)
			}
			got, reasons := listedBans(t, out)
			want := e.kernelBans()
			if !slices.Equal(got, want) {
				t.Errorf("%s: %d bans listed, the kernel holds %d; first listed %.5q, kernel %.5q", what, len(got), len(want), got, want)
			}
			wantN := 2400
			if extra != "" {
				wantN++
			}
			if len(want) != wantN {
				t.Errorf("%s: the kernel holds %d bans", what, len(want))
			}
			if strings.ContainsAny(out, "\x1b") || strings.Count(out, "\n") != len(want)+1 {
				t.Errorf("%s: a reason not sanitized: %d lines for %d bans", what, strings.Count(out, "\n"), len(want))
			}
			if r := reasons[banAddr(7).String()]; r != "manual: user [2J<bob>203.0.113.1 1h" {
				t.Errorf("%s: reason %q", what, r)
			}
			if extra != "" && reasons[extra] != ruleset.ReasonPortscan {
				t.Errorf("%s: %s listed with reason %q", what, extra, reasons[extra])
			}
			if be == "nftables" {
				if looked := strings.Contains(stderr, "listed by lookups"); looked != wantLookups {
					t.Errorf("%s: listed by lookups %v, want %v\n%s", what, looked, wantLookups, stderr)
				}
			}
			var list []struct {
				Address string `json:"address"`
				Reason  string `json:"reason"`
				Count   int    `json:"ban_count"`
			}
			js := e.mustMoat("bans", "--json")
			if err := json.Unmarshal([]byte(js), &list); err != nil {
				t.Fatalf("%s: --json: %v", what, err)
			}
			var jaddrs []string
			for _, l := range list {
				jaddrs = append(jaddrs, l.Address)
				if l.Address == banAddr(3).String() && (l.Count != 1 || l.Reason != "manual: user [2J<bob>203.0.113.1  1h") {
					t.Errorf("%s: --json: %+v", what, l)
				}
			}
			if !slices.Equal(jaddrs, want) {
				t.Errorf("%s: --json lists %d bans, the kernel holds %d", what, len(jaddrs), len(want))
			}
		}
		check("recorded bans", true, "")
		unknown := "2001:db8:77::1"
		e.banDirect(bk, []ruleset.Ban{{Addr: netip.MustParseAddr(unknown), Timeout: time.Hour}})
		check("a ban not recorded", false, unknown)
	})
}

// 'moat bans --all | head -1': the reader goes away after one line; moat
// ends quietly (SIGPIPE, or exit 141 where SIGPIPE is ignored), with no
// error printed. Both backends.
func TestBansAllBrokenPipe(t *testing.T) {
	eachBackend(t, func(t *testing.T, be string) {
		e, bk := newBanEnv(t, be)
		bans := make([]ruleset.Ban, 3000) // well over a pipe's 64 KiB
		for i := range bans {
			bans[i] = ruleset.Ban{Addr: banAddr(i), Timeout: time.Hour, Reason: "test: a long enough reason to fill the pipe"}
		}
		e.banDirect(bk, bans)
		for _, args := range [][]string{{"bans", "--all"}, {"bans", "--json"}} {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			full := append([]string{"--config", e.conf, "--backend", e.backend, "--state-dir", e.stateDir()}, args...)
			cmd := exec.Command(moatBin, full...)
			var stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = w, &stderr
			if err := e.topo.Server.Start(cmd); err != nil {
				t.Fatal(errors.Join(err, r.Close(), w.Close()))
			}
			_ = w.Close() // the child's copy stays open
			first, err := bufio.NewReader(r).ReadString('\n')
			if err != nil {
				t.Errorf("%v: first line: %v", args, err)
			}
			_ = r.Close() // the reader goes away
			err = cmd.Wait()
			var ee *exec.ExitError
			quiet := errors.As(err, &ee) && (ee.ExitCode() == 141 || ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGPIPE)
			if err == nil || !quiet {
				t.Errorf("%v after %q: %v, want SIGPIPE or exit 141", args, first, err)
			}
			if stderr.Len() != 0 {
				t.Errorf("%v: errors printed for a reader that went away: %q", args, stderr.String())
			}
		}
	})
}

// Bans the history records, banned one 'moat ban' after another while
// 'moat bans --all' runs (the lookups' path, where the ruleset
// generation or a set's count moves under it): each list exits 0, holds
// every ban made before, each address once, and every address of the
// storm it lists is a ban. Both backends.
func TestBansAllRecordedDuringStorm(t *testing.T) {
	eachBackend(t, func(t *testing.T, be string) {
		e, _ := newBanEnv(t, be)
		var before []string
		for i := 0; i < 4000; i++ {
			before = append(before, banAddr(i).String())
		}
		e.mustMoat(append([]string{"ban", "--for", "2h", "--reason", "before the storm"}, before...)...)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int)
		go func() {
			n := 0
			for i := 100000; ctx.Err() == nil; i++ {
				if _, _, err := e.moatSplit("ban", banAddr(i).String()); err != nil && ctx.Err() == nil {
					t.Errorf("storm ban %d: %v", i, err)
					break
				}
				n++
			}
			done <- n
		}()
		stopped := false
		stop := func() int {
			if stopped {
				return 0
			}
			stopped = true
			cancel()
			return <-done
		}
		t.Cleanup(func() { stop() })
		for range 3 {
			out, stderr, err := e.moatSplit("-v", "bans", "--all")
			if err != nil {
				t.Fatalf("moat bans --all during a storm of recorded bans: %v\n%s", err, stderr)
			}
			t.Logf("listed by lookups: %v; merged dumps: %v", strings.Contains(stderr, "listed by lookups"), strings.Contains(stderr, "merges reads"))
			got, _ := listedBans(t, out)
			seen := map[string]bool{}
			for _, a := range got {
				if seen[a] {
					t.Errorf("%s listed twice", a)
				}
				seen[a] = true
				if !strings.HasPrefix(a, "2001:db8:ff:1::") && !slices.Contains(before, a) { // the storm's, or before it
					t.Errorf("%s listed: not a ban", a)
				}
			}
			for _, a := range before {
				if !seen[a] {
					t.Fatalf("%s (banned before the storm) not listed", a)
				}
			}
		}
		if n := stop(); n == 0 {
			t.Fatal("no ban was added during the lists: not a storm")
		}
	})
}
