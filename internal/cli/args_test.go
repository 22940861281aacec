package cli

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestHostileArgs: a rule or packet from the command line with a huge
// word, a huge number of words or bytes that are not UTF-8 is refused
// with a short message naming the argument: a 100 kB argument came back
// twice in a 200 kB message, and a comment that is not UTF-8 was blamed
// on a line of the policy file ("line is not valid UTF-8").
func TestHostileArgs(t *testing.T) {
	a := &app{}
	huge := strings.Repeat("x", 100000)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"allow", "22/tcp", "comment", huge}, "argument 4 ('" + strings.Repeat("x", maxEcho) + "...') is 100000 bytes long: no word of a rule is longer than 1024"},
		{[]string{"allow", huge}, "argument 2 ("},
		{append([]string{"allow"}, strings.Fields(strings.Repeat("from ", 20000))...), "20001 arguments: a rule has far fewer"},
		{[]string{"allow", "22/tcp", "comment", "a\xffb"}, `argument 4 ("a\xffb") is not valid UTF-8`},
		{[]string{"allow", "22/tcp", "comment", strings.Repeat("é", 300)}, "comment is 600 bytes long; at most 100"},
	} {
		_, err := a.parseArgs(c.args)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseArgs(%.40q...): %.300v, want %q", strings.Join(c.args, " "), err, c.want)
			continue
		}
		if len(err.Error()) > 3000 {
			t.Errorf("parseArgs(%.40q...): a %d-byte message", strings.Join(c.args, " "), len(err.Error()))
		}
	}
	if _, err := parsePacket([]string{"in", "tcp", "from", huge}); err == nil || len(err.Error()) > 1000 || !strings.Contains(err.Error(), "argument 4") {
		t.Errorf("parsePacket with a huge address: %.300v", err)
	}
	if _, err := parsePacket([]string{"in", "tcp", "from", "192.0.2.1\xff"}); err == nil || !strings.Contains(err.Error(), "not valid UTF-8") {
		t.Errorf("parsePacket with bytes that are not UTF-8: %v", err)
	}
}

// TestExitCodesDocumented: 'moat --help' (and so moat(8)) lists the exit
// codes the commands use; it listed only 3.
func TestExitCodesDocumented(t *testing.T) {
	for code, what := range map[int]string{0: "done", 1: "an error", 2: "'moat audit' could not judge",
		exitLockout: "refused: the change would cut a live SSH session", exitRolledBack: "not confirmed in time"} {
		if !strings.Contains(rootLong, "\n  "+string(rune('0'+code))+"  ") || !strings.Contains(rootLong, what) {
			t.Errorf("moat --help does not document exit code %d (%s)", code, what)
		}
	}
}

// TestArgCountTeaches: a command given too few or too many arguments says
// its usage and an example, not only cobra's "accepts 1 arg(s), received 0".
func TestArgCountTeaches(t *testing.T) {
	for args, want := range map[string]string{
		"explain":    "'moat explain': requires at least 1 arg(s), only received 0: usage 'moat explain [in|out|route] PROTO [from ADDR] [to ADDR] [port P] ...', e.g. 'moat explain in tcp from 203.0.113.5 to port 80' ('moat explain --help' says more)",
		"logging":    "usage 'moat logging on|off|low|medium|high|full', e.g. 'moat logging low'",
		"status a b": "usage 'moat status [numbered|verbose]'",
		"default":    "usage 'moat default allow|deny|reject [incoming|outgoing|routed]', e.g. 'moat default deny incoming'",
		"allow":      "'moat allow' needs a rule, e.g. 'moat allow 22/tcp' ('moat allow --help' shows the syntax)\n",
	} {
		out, code := runMoat(t, strings.Fields(args)...)
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("moat %s: exit %d\n%s\nwant %q", args, code, out, want)
		}
	}
}

// TestInitSaysPorts: 'moat init' says which SSH ports it opens and why
// in one readable clause ("SSH (port 22: the configuration ... names
// 22)"; it said "SSH (ports 22, the configuration ... names 22)").
func TestInitSaysPorts(t *testing.T) {
	dir := t.TempDir()
	cfg := dir + "/sshd_config"
	if err := os.WriteFile(cfg, []byte("Port 2222\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runMoat(t, "--config", dir+"/moat.conf", "--sshd-config", cfg, "init")
	if code != 0 || !regexp.MustCompile(`except SSH \(ports? [0-9, and]+: `).MatchString(out) {
		t.Errorf("init: exit %d\n%s", code, out)
	}
}

// TestGroupUnknownCommand: a word that is none of a group's commands
// ('moat blocklist foo', ufw's 'moat app update X') is an error naming
// what is expected; cobra printed the group's help and exit 0.
func TestGroupUnknownCommand(t *testing.T) {
	for args, want := range map[string]string{
		"blocklist foo":      "unknown command 'foo' for 'moat blocklist': expected list, update",
		"import pf":          "unknown command 'pf' for 'moat import': expected fail2ban, ufw",
		"app update OpenSSH": "'moat app update' (ufw's) is not needed in moat: moat reads the profiles each time it applies",
		"app default allow":  "'moat app default' (ufw's) is not needed in moat",
	} {
		if out, code := runMoat(t, strings.Fields(args)...); code != 1 || !strings.Contains(out, want) {
			t.Errorf("moat %s: exit %d\n%s", args, code, out)
		}
	}
	if out, code := runMoat(t, "app"); code != 0 || !strings.Contains(out, "Available Commands:") {
		t.Errorf("moat app: exit %d\n%s", code, out)
	}
}

// TestLogNoJournal: on a host without a journal, 'moat log' says so and
// what to do (exit 1); it printed journalctl's complaint and then an empty
// report, "0 blocked packets logged", as if nothing had been blocked.
func TestLogNoJournal(t *testing.T) {
	bin := t.TempDir()
	script := "#!/bin/sh\necho 'No journal files were found.' >&2\nexit 1\n"
	if err := os.WriteFile(bin+"/journalctl", []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	out, code := runMoat(t, "log")
	if code != 1 || !strings.Contains(out, "this host has no journal to read: use --file /var/log/kern.log") || strings.Contains(out, "0 blocked packets") {
		t.Errorf("log without a journal: exit %d\n%s", code, out)
	}
	// A journal without moat's lines: journalctl --grep exits 1 too.
	script = "#!/bin/sh\nexit 1\n"
	if err := os.WriteFile(bin+"/journalctl", []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, code := runMoat(t, "log"); code != 0 || !strings.Contains(out, "0 blocked packets") {
		t.Errorf("log of a journal without moat's lines: exit %d\n%s", code, out)
	}
}

// TestDeadlineAndEmptyConfig: a confirmation deadline far away is said
// with its date (--confirm 99999h said "before 04:58:24"), status says the
// time left as a duration; an empty --config is refused (status read ""
// and said "Changes in  not applied").
func TestDeadlineAndEmptyConfig(t *testing.T) {
	now := time.Date(2026, 11, 26, 13, 0, 0, 0, time.Local)
	if got := deadlineText(now.Add(60*time.Second), now); got != "13:01:00" {
		t.Errorf("60 s: %s", got)
	}
	if got := deadlineText(now.Add(99999*time.Hour), now); !strings.HasPrefix(got, "2038-") {
		t.Errorf("99999 h: %s", got)
	}
	rep := &statusReport{Status: "active", Defaults: map[string]statusDefault{},
		Pending: &statusPending{Applied: now, Deadline: time.Now().Add(90 * time.Second), SecondsLeft: 90}}
	var out bytes.Buffer
	a := &app{out: &out, errOut: &bytes.Buffer{}}
	if err := a.printStatus(rep, ""); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "rolls back in 1m30s (at ") {
		t.Errorf("status with a pending change:\n%s", out.String())
	}
	if out, code := runMoat(t, "--config", "", "status"); code != 1 || !strings.Contains(out, "--config is empty") {
		t.Errorf("--config '': exit %d\n%s", code, out)
	}
}
