package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestExplainOtherAnswersPackets: explain's answer for a packet that
// leaves out its interface, source or source port is checked against real
// packets, and the answers it lists for the values rules name are the
// verdicts real packets get: 'explain in tcp from 192.0.2.2 to port 80'
// said DROP, with no word of the 'allow in on eth0' rule that lets the
// client's packet (which comes in on eth0) through.
func TestExplainOtherAnswersPackets(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		e.apply("default deny incoming\n" +
			"allow in on eth0 to any port 80 proto tcp\n" +
			"allow from 192.0.2.2 to any port 5432 proto tcp\n" +
			"allow from 2001:db8::2 to any port 8080 proto tcp\n" +
			"allow proto udp from any port 5353 to any port 53\n")
		e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open",
			"client tcp 192.0.2.1:5432 open", "client tcp [2001:db8::1]:5432 timeout",
			"client tcp [2001:db8::1]:8080 open", "client tcp 192.0.2.1:8080 timeout",
			"client/192.0.2.2:5353 udp 192.0.2.1:53 open", "client/192.0.2.2:5354 udp 192.0.2.1:53 timeout")
		for _, c := range []struct {
			packet []string
			want   string // the verdict, then the other answers
		}{
			{[]string{"in", "tcp", "from", "192.0.2.2", "to", "port", "80"}, "DROP|in on eth0 ACCEPT"},
			{[]string{"in", "tcp", "from", "192.0.2.2", "to", "port", "80", "on", "eth0"}, "ACCEPT|"},
			{[]string{"in", "tcp", "to", "port", "5432"}, "DROP|from 192.0.2.2 ACCEPT"},
			{[]string{"in", "tcp", "to", "port", "8080"}, "DROP|from 2001:db8::2 ACCEPT"},
			{[]string{"in", "tcp", "from", "192.0.2.2", "to", "port", "8080"}, "DROP|"},
			{[]string{"in", "udp", "from", "192.0.2.2", "to", "port", "53"}, "DROP|from port 5353 ACCEPT"},
		} {
			var ex struct {
				Verdict string `json:"verdict"`
				Other   []struct {
					If      string `json:"if"`
					Verdict string `json:"verdict"`
				} `json:"other_answers"`
			}
			out := e.mustMoat(append([]string{"explain", "--json"}, c.packet...)...)
			if err := json.Unmarshal([]byte(out), &ex); err != nil {
				t.Fatalf("explain --json %v: %v\n%s", c.packet, err, out)
			}
			var other []string
			for _, o := range ex.Other {
				other = append(other, o.If+" "+o.Verdict)
			}
			if got := ex.Verdict + "|" + strings.Join(other, ","); got != c.want {
				t.Errorf("explain %v: %s, want %s\n%s", c.packet, got, c.want, out)
			}
		}
		if out := e.mustMoat("explain", "in", "tcp", "from", "192.0.2.2", "to", "port", "80"); !strings.Contains(out, "    in on eth0: ACCEPT, ") {
			t.Errorf("explain (text) does not name the interface's answer:\n%s", out)
		}
	})
}

// TestShowSaysWhenFileDiffers: 'moat show' prints the script of the policy
// file; after a hand edit that is not applied, it says so (the README
// called it "the exact script loaded into the kernel"). 'moat show added'
// lists the rules as commands, as ufw's.
func TestShowSaysWhenFileDiffers(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		e.apply("default deny incoming\nallow 22/tcp\n")
		if out := e.mustMoat("show"); strings.Contains(out, "differs from what is applied") {
			t.Errorf("show of the applied policy:\n%s", out)
		}
		f, err := os.OpenFile(e.conf, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("allow 8080/tcp comment 'by hand'\n"); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if out := e.mustMoat("show"); !strings.Contains(out, "differs from what is applied: this is the script 'moat reload' would load") {
			t.Errorf("show after a hand edit says nothing of it:\n%s", out)
		}
		if out := e.mustMoat("show", "added"); out != "Added user rules (see 'moat status' for running firewall):\nmoat allow 22/tcp\nmoat allow 8080/tcp comment 'by hand'\n" {
			t.Errorf("show added:\n%s", out)
		}
		e.mustMoat("reload")
		if out := e.mustMoat("show"); strings.Contains(out, "differs from what is applied") {
			t.Errorf("show after reload:\n%s", out)
		}
	})
}

// TestStatusInactiveBrokenFile: inactive, with a policy file that does
// not parse, status says it is inactive and why the file is invalid (it
// printed only the file's error and exit 1: whether moat was active was
// not said).
func TestStatusInactiveBrokenFile(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		writeFile(t, e.conf, "default deny incoming\nallow 99999/tcp\n")
		out, err := e.moat("status")
		if err != nil || !strings.HasPrefix(out, "Status: inactive\n") || !strings.Contains(out, "is invalid (nothing of it is applied") ||
			!strings.Contains(out, ":2:7: bad port '99999'") {
			t.Errorf("status (err %v):\n%s", err, out)
		}
		var st struct {
			Status    string `json:"status"`
			FileError string `json:"file_error"`
			InSync    bool   `json:"in_sync"`
		}
		js := e.mustMoat("status", "--json")
		if err := json.Unmarshal([]byte(js), &st); err != nil || st.Status != "inactive" || !strings.Contains(st.FileError, "bad port") || st.InSync {
			t.Errorf("status --json (%v):\n%s", err, js)
		}
		if out, err := e.moat("enable"); err == nil || !strings.Contains(out, "bad port") {
			t.Errorf("enable of the broken file (err %v):\n%s", err, out)
		}
	})
}

// TestShowAndDryRunUseAppliedBackend: with iptables applied and a policy
// that says no backend, 'moat show' and 'moat enable --dry-run' print the
// iptables script that a reload loads (they printed auto's nftables
// script, while the reload kept iptables).
func TestShowAndDryRunUseAppliedBackend(t *testing.T) {
	requireBackend(t, "iptables")
	t.Parallel()
	e := newEnv(t, "iptables", false)
	e.apply("default deny incoming\nallow 22/tcp\n")
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		out, err := e.topo.Server.Run(ctx, moatBin, append([]string{"--config", e.conf, "--state-dir", e.stateDir()}, args...)...)
		if err != nil {
			t.Fatalf("moat %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	for _, args := range [][]string{{"show"}, {"enable", "--dry-run"}, {"reload", "--dry-run"}} {
		if out := run(args...); !strings.Contains(out, "-A MOAT-INPUT") || strings.Contains(out, "add table inet moat") {
			t.Errorf("moat %v prints another backend's script than the applied iptables:\n%.600s", args, out)
		}
	}
	if out := run("reload"); !strings.Contains(out, "moat is active (iptables)") {
		t.Errorf("reload:\n%s", out)
	}
	if out := run("show", "--backend", "nftables"); !strings.Contains(out, "add table inet moat") {
		t.Errorf("show --backend nftables:\n%.300s", out)
	}
}

// TestUnbanSaysWhatWasNotBanned: unban of an address that was not banned
// says so (it said "Unbanned" for any address).
func TestUnbanSaysWhatWasNotBanned(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		e.apply("default deny incoming\nallow 22/tcp\n")
		e.mustMoat("ban", "203.0.113.7")
		out := e.mustMoat("unban", "203.0.113.7", "203.0.113.8", "2001:db8::8")
		if out != "Unbanned 203.0.113.7\n203.0.113.8 was not banned\n2001:db8::8 was not banned\n" {
			t.Errorf("unban:\n%s", out)
		}
		if out := e.mustMoat("bans"); strings.Contains(out, "203.0.113.7") {
			t.Errorf("bans after unban:\n%s", out)
		}
		// A list (more than unban asks about one by one): the answer
		// comes from one listing of the bans, IPv4 and IPv6.
		e.mustMoat("ban", "203.0.113.9", "2001:db8::9")
		args := []string{"unban"}
		var want strings.Builder
		for i := 1; i <= 40; i++ {
			a := fmt.Sprintf("203.0.113.%d", i)
			if i == 20 {
				a = "2001:db8::9"
			}
			args = append(args, a)
			if i == 9 || i == 20 {
				fmt.Fprintf(&want, "Unbanned %s\n", a)
			} else {
				fmt.Fprintf(&want, "%s was not banned\n", a)
			}
		}
		if out := e.mustMoat(args...); out != want.String() {
			t.Errorf("unban of 40:\n%s\nwant:\n%s", out, want.String())
		}
		if out := e.mustMoat("bans"); strings.Contains(out, "203.0.113.9") || strings.Contains(out, "2001:db8::9") {
			t.Errorf("bans after unban of 40:\n%s", out)
		}
	})
}

// TestAuditNamesDenyExceptions: audit's "open to anyone" names the lines
// that drop some sources first, and real packets agree: the denied source
// times out, another gets through (audit named only blocklists, so an
// admin who denied a source read that the port was open to it).
func TestAuditNamesDenyExceptions(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		e.addClientAddrs("192.0.2.3/24")
		e.apply("default deny incoming\ndeny from 192.0.2.3 to any port 80 proto tcp\nallow 80/tcp\n")
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/192.0.2.2 tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open")
		a, _ := e.audit()
		seen := 0
		for _, s := range a.Sockets {
			if s.Proto != "tcp" || s.Port != 80 {
				continue
			}
			seen++
			want := []string{"line 2 (deny from 192.0.2.3 to any port 80 proto tcp)"}
			if s.Family == "ipv6" {
				want = nil
			}
			if s.Status != "open" || strings.Join(s.Except, "|") != strings.Join(want, "|") {
				t.Errorf("audit of tcp/80 %s: %+v, want open except %q", s.Family, s, want)
			}
		}
		if seen == 0 {
			t.Errorf("audit lists no tcp/80: %+v", a.Sockets)
		}
	})
}
