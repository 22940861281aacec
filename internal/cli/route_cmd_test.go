package cli

import (
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/policy"
)

// TestRouteInsertDelete: ufw's 'route insert N RULE' and 'route delete
// N|RULE' work (they failed: "unknown action 'delete'"); 'route delete N'
// deletes only a route rule; a rule command without a rule says what it
// needs with an example, not cobra's "requires at least 1 arg(s)".
func TestRouteInsertDelete(t *testing.T) {
	r := newSMRig(t, "nftables", 1)
	if err := os.WriteFile(r.conf, []byte("allow 22/tcp\nroute allow in on eth1 out on eth2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := func() string {
		b, err := os.ReadFile(r.conf)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if out, code := r.moat("route", "insert", "1", "deny", "in", "on", "eth1", "out", "on", "eth2", "from", "203.0.113.7"); code != 0 ||
		file() != "route deny in on eth1 out on eth2 from 203.0.113.7\nallow 22/tcp\nroute allow in on eth1 out on eth2\n" {
		t.Fatalf("route insert: exit %d\n%s\n%s", code, out, file())
	}
	if out, code := r.moat("route", "delete", "2"); code != 1 || !strings.Contains(out, "rule 2 is not a route rule ('allow 22/tcp'): 'moat delete 2' deletes it") ||
		!strings.Contains(file(), "allow 22/tcp") {
		t.Fatalf("route delete 2 (not a route rule): exit %d\n%s\n%s", code, out, file())
	}
	if out, code := r.moat("route", "delete", "allow", "in", "on", "eth1", "out", "on", "eth2"); code != 0 || strings.Contains(file(), "route allow") {
		t.Fatalf("route delete RULE: exit %d\n%s\n%s", code, out, file())
	}
	if out, code := r.moat("route", "delete", "1"); code != 0 || file() != "allow 22/tcp\n" {
		t.Fatalf("route delete 1: exit %d\n%s\n%s", code, out, file())
	}
	for args, want := range map[string]string{
		"allow":        "'moat allow' needs a rule, e.g. 'moat allow 22/tcp' ('moat allow --help' shows the syntax)",
		"delete":       "'moat delete' needs a rule number or a rule, e.g. 'moat delete 3'",
		"insert 1":     "'moat insert' needs a rule number and a rule, e.g. 'moat insert 1 deny from 203.0.113.7'",
		"route delete": "'moat route delete' needs a rule number or a rule",
		"route insert": "'moat route insert' needs a rule number and a rule",
	} {
		if out, code := r.moat(strings.Fields(args)...); code != 1 || !strings.Contains(out, want) {
			t.Errorf("moat %s: exit %d\n%s", args, code, out)
		}
	}
	if file() != "allow 22/tcp\n" {
		t.Errorf("a refused command changed the file:\n%s", file())
	}
}

// TestRuleHelpExamples: every example of the rule commands' help is a
// rule moat takes (the help teaches what works), and each command's
// help shows its own syntax and examples (deny's help showed allow's).
func TestRuleHelpExamples(t *testing.T) {
	apps := policy.AppsFromPorts(map[string]string{"OpenSSH": "22/tcp"})
	svc := policy.ParseServices([]byte("ssh 22/tcp\nauth 113/tcp\n"))
	a := &app{}
	root := a.rootCommand()
	for _, name := range []string{"allow", "deny", "reject", "limit", "route", "insert", "prepend", "delete"} {
		cmd, _, err := root.Find([]string{name})
		if err != nil {
			t.Fatal(err)
		}
		if name != "delete" && name != "insert" && name != "prepend" && !strings.Contains(cmd.Long, "moat "+name+" ") {
			t.Errorf("'moat %s --help' has no syntax of its own", name)
		}
		n := 0
		for _, l := range strings.Split(cmd.Example, "\n") {
			if i := strings.Index(l, "#"); i >= 0 {
				l = l[:i]
			}
			words := strings.Fields(strings.ReplaceAll(l, "'", ""))
			if len(words) < 3 || words[0] != "moat" {
				t.Errorf("%s: example %q is not a moat command", name, l)
				continue
			}
			words = words[1:]
			if words[0] != name {
				t.Errorf("'moat %s --help' shows an example of another command: %q", name, l)
			}
			switch {
			case words[0] == "insert" || (words[0] == "route" && words[1] == "insert"):
				words = words[1:]
				if words[0] == "insert" {
					words = append([]string{"route"}, words[2:]...)
				} else {
					words = words[1:]
				}
			case words[0] == "delete" || (words[0] == "route" && words[1] == "delete"):
				if _, isNum, _ := policy.RuleNumber(words[len(words)-1]); isNum && len(words) <= 3 {
					n++
					continue
				}
				if words[0] == "delete" {
					words = words[1:]
				} else {
					words = append([]string{"route"}, words[2:]...)
				}
			case words[0] == "prepend":
				words = words[1:]
			}
			if _, err := policy.ParseStatementApps(policy.ArgsTokens(words), policy.Pos{}, svc, apps); err != nil {
				t.Errorf("'moat %s --help' example %q: %v", name, l, err)
			}
			n++
		}
		if n == 0 {
			t.Errorf("'moat %s --help' has no examples", name)
		}
	}
}

// TestInsertMovesMatchingRule: 'insert N RULE' where a rule matching the
// same packets exists elsewhere puts RULE at N and drops the other (it
// was updated where it stood: 'insert 1 deny 22/tcp' after 'allow from
// 192.0.2.0/24' and 'allow 22/tcp' left SSH open to 192.0.2.0/24).
func TestInsertMovesMatchingRule(t *testing.T) {
	r := newSMRig(t, "nftables", 1)
	write := func(s string) {
		if err := os.WriteFile(r.conf, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := func() string {
		b, err := os.ReadFile(r.conf)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	write("allow from 192.0.2.0/24\nallow 80/tcp\nallow 22/tcp\n")
	if out, code := r.moat("insert", "1", "deny", "22/tcp"); code != 0 || file() != "deny 22/tcp\nallow from 192.0.2.0/24\nallow 80/tcp\n" ||
		!strings.Contains(out, "Rule updated and moved from 3 to 1: allow 22/tcp -> deny 22/tcp") {
		t.Fatalf("insert 1 over rule 3: exit %d\n%s\n%s", code, out, file())
	}
	// Moving down: before rule 3 as numbered now, which is rule 2 once
	// rule 1 is gone.
	if out, code := r.moat("insert", "3", "deny", "22/tcp"); code != 0 || file() != "allow from 192.0.2.0/24\ndeny 22/tcp\nallow 80/tcp\n" ||
		!strings.Contains(out, "Rule moved from 1 to 2: deny 22/tcp") {
		t.Fatalf("insert 3 of rule 1: exit %d\n%s\n%s", code, out, file())
	}
	if out, code := r.moat("insert", "2", "reject", "22/tcp"); code != 0 || file() != "allow from 192.0.2.0/24\nreject 22/tcp\nallow 80/tcp\n" ||
		!strings.Contains(out, "Rule updated (rule 2)") {
		t.Fatalf("insert 2 at its own place: exit %d\n%s\n%s", code, out, file())
	}
	// 'insert 3' of rule 2: it stands before rule 3 already, where it
	// is asked for (it said 'Rule moved from 2 to 2').
	if out, code := r.moat("insert", "3", "reject", "22/tcp"); code != 0 || file() != "allow from 192.0.2.0/24\nreject 22/tcp\nallow 80/tcp\n" ||
		!strings.Contains(out, "Skipping adding existing rule (rule 2)") {
		t.Fatalf("insert 3 of rule 2 as it is: exit %d\n%s\n%s", code, out, file())
	}
	if out, code := r.moat("insert", "3", "deny", "22/tcp"); code != 0 || file() != "allow from 192.0.2.0/24\ndeny 22/tcp\nallow 80/tcp\n" ||
		!strings.Contains(out, "Rule updated (rule 2): reject 22/tcp -> deny 22/tcp") {
		t.Fatalf("insert 3 over rule 2: exit %d\n%s\n%s", code, out, file())
	}
	if _, code := r.moat("insert", "2", "reject", "22/tcp"); code != 0 {
		t.Fatalf("insert 2 back: exit %d", code)
	}
	// The line's '#' comment goes with the rule, as an update in place
	// keeps it (the move dropped it, and the message quoted it).
	write("allow from 192.0.2.0/24\nallow 80/tcp\nallow 22/tcp comment 'a'  # admins, ticket 42\n")
	if out, code := r.moat("insert", "1", "deny", "22/tcp"); code != 0 ||
		file() != "deny 22/tcp  # admins, ticket 42\nallow from 192.0.2.0/24\nallow 80/tcp\n" ||
		!strings.Contains(out, "Rule updated and moved from 3 to 1: allow 22/tcp comment 'a' -> deny 22/tcp\n") {
		t.Fatalf("insert 1 over rule 3 with a '#' comment: exit %d\n%s\n%s", code, out, file())
	}
	write("allow from 192.0.2.0/24\nreject 22/tcp\nallow 80/tcp\n")
	if out, code := r.moat("insert", "9", "deny", "22/tcp"); code != 1 || !strings.Contains(out, "invalid position 9: expected 1 to 3") ||
		file() != "allow from 192.0.2.0/24\nreject 22/tcp\nallow 80/tcp\n" {
		t.Fatalf("insert 9: exit %d\n%s\n%s", code, out, file())
	}
}

// TestEveryCommandHasExamples: the README says 'moat COMMAND --help'
// explains each command with examples; init, enable, reload, confirm,
// rollback, restore, disable, reset, check, guard, guard check, unban,
// lab, app list and import had none.
func TestEveryCommandHasExamples(t *testing.T) {
	a := &app{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if !sub.IsAvailableCommand() || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			if strings.TrimSpace(sub.Example) == "" {
				t.Errorf("'%s --help' has no examples", sub.CommandPath())
			}
			for _, l := range strings.Split(sub.Example, "\n") {
				if l = strings.TrimSpace(l); l != "" && !strings.Contains(l, "moat ") && !strings.HasPrefix(l, "#") {
					t.Errorf("'%s --help' example %q runs no moat command", sub.CommandPath(), l)
				}
			}
			walk(sub)
		}
	}
	walk(a.rootCommand())
}
