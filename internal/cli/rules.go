package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/gctune"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
)

var ruleHelp = map[string]string{
	"allow":  "Allow traffic that matches the rule",
	"deny":   "Drop traffic that matches the rule, silently",
	"reject": "Refuse traffic that matches the rule (TCP reset, or ICMP port unreachable)",
	"limit":  "Allow new connections, but refuse a source that opens too many (default: the 6th within 30 s)",
	"route":  "Add a rule for forwarded traffic: route allow|deny|reject in on IF out on IF ...",
}

// ruleSyntax is the rule grammar, as ufw's (VERB stands for the command).
const ruleSyntax = `Syntax (ufw's):
  moat VERB [in|out] [on IFACE] [log|log-all] PORT[/tcp|/udp]|PROFILE [comment TEXT]
  moat VERB [in|out] [on IFACE] [log|log-all] [proto PROTO]
       [from ADDR [port PORT|app PROFILE]] [to ADDR [port PORT|app PROFILE]] [comment TEXT]

PORT is 22, 80,443 (up to 15), 6000:6007 or a name from /etc/services
(ssh, auth); lists and ranges need /tcp or /udp. PROFILE is an application
profile ('moat app list'). ADDR is any, an IPv4 or IPv6 address, a CIDR or
ADDR/NETMASK: an address makes the rule IPv4 or IPv6 only, else it is for
both. PROTO is tcp, udp, icmp, ipv6-icmp, esp, ah, gre, igmp, vrrp or
ipv6. IFACE may end in + (eth+). 'in' is the default direction.

The rule is added to the end of the policy file (first match wins: 'moat
insert N' or 'moat prepend' to put it earlier) and applied at once when
moat is active. A rule that matches exactly the packets of an existing rule
replaces it in place ("Rule updated"), as in ufw; the very same rule again
is skipped. --dry-run shows what would change (--json: the rule as JSON);
--confirm 60s rolls the change back unless 'moat confirm' runs in time.`

var ruleLong = map[string]string{
	"allow": "Allow traffic that matches the rule: moat accepts it (rules of other\ntools still apply).",
	"deny":  "Drop traffic that matches the rule, silently: the sender gets no answer.",
	"reject": "Refuse traffic that matches the rule: a TCP reset, or an ICMP (ICMPv6)\n" +
		"port unreachable for other protocols, so the sender knows at once.",
	"limit": "Allow new connections that match the rule, but refuse a source that opens\n" +
		"too many: by default its 6th new connection within 30 seconds, as ufw;\n" +
		"'rate N/Ts' after the rule sets another rate (N from 2 to 10000, T at most\n" +
		"a day). For incoming and outgoing traffic, not routed.",
}

var ruleExamples = map[string]string{
	"allow": `  moat allow 22/tcp
  moat allow ssh                                    # a service name from /etc/services
  moat allow 80,443/tcp comment 'web'
  moat allow 6000:6007/tcp
  moat allow OpenSSH                                # an application profile
  moat allow from 192.0.2.0/24 to any port 22 proto tcp
  moat allow from 2001:db8::/32 to any port 443 proto tcp
  moat allow in on eth0 to any port 80
  moat allow proto udp from 198.51.100.1 port 53
  moat allow out 53                                 # with 'default deny outgoing'`,
	"deny": `  moat deny from 203.0.113.0/24
  moat deny out 25/tcp                              # no mail from this host
  moat deny in on eth1 to any port 3306 proto tcp
  moat deny proto udp from 2001:db8:bad::/48`,
	"reject": `  moat reject auth                                  # 113/tcp: answer at once
  moat reject out to 203.0.113.0/24
  moat reject from 198.51.100.0/24 to any port 25 proto tcp`,
	"limit": `  moat limit ssh
  moat limit 22/tcp rate 10/60s
  moat limit from 2001:db8::/32 to any port 443 proto tcp`,
	"route": `  moat route allow in on eth1 out on eth2
  moat route allow in on eth1 out on eth2 to 192.0.2.0/24 port 80 proto tcp
  moat route deny in on eth1 out on eth0 from 198.51.100.0/24
  moat route allow 443/tcp
  moat route insert 1 deny in on eth1 out on eth2 from 203.0.113.7
  moat route delete allow in on eth1 out on eth2
  moat route delete 3                               # rule 3 of 'moat status numbered'`,
}

const routeLong = `Add a rule for traffic this host forwards (a router, a host of containers
or virtual machines), as ufw's 'route':

  moat route allow|deny|reject [in on IFACE] [out on IFACE] [log|log-all]
       [proto PROTO] [from ADDR [port PORT]] [to ADDR [port PORT]] [comment TEXT]
  moat route allow|deny|reject PORT[/tcp|/udp]
  moat route insert N RULE       (as 'moat insert N route RULE')
  moat route delete N|RULE       (as 'moat delete', for route rules)

PORT, PROTO and ADDR are as for 'moat allow'. Routed traffic is left to the
kernel and other tools (Docker, libvirt) until the policy has a route rule
or 'default deny routed'; from then on moat's forward chain decides, first
match wins, and the routed default applies. 'limit' is not available for
routed traffic.`

// needRule is cobra.MinimumNArgs(n) with a message that teaches.
func needRule(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) >= n {
			return nil
		}
		ex := strings.SplitN(strings.TrimSpace(cmd.Example), "\n", 2)[0]
		if i := strings.Index(ex, "#"); i > 0 {
			ex = strings.TrimSpace(ex[:i])
		}
		return &teachError{fmt.Sprintf("'%s' needs %s, e.g. '%s' ('%s --help' shows the syntax)", cmd.CommandPath(), what, ex, cmd.CommandPath())}
	}
}

func (a *app) ruleCommands() []*cobra.Command {
	var cmds []*cobra.Command
	for _, word := range []string{"allow", "deny", "reject", "limit", "route"} {
		long := routeLong
		if word != "route" {
			long = ruleLong[word] + "\n\n" + strings.ReplaceAll(ruleSyntax, "VERB", word)
		}
		cmds = append(cmds, &cobra.Command{
			Use:     word + " RULE...",
			Short:   ruleHelp[word],
			Long:    long,
			Example: ruleExamples[word],
			GroupID: "rules",
			Args:    needRule(1, "a rule"),
			RunE: func(cmd *cobra.Command, args []string) error {
				if word == "route" {
					switch args[0] {
					case "delete":
						return a.deleteRule(cmd, args[1:], true)
					case "insert":
						if len(args) < 3 {
							return fmt.Errorf("'moat route insert' needs a rule number and a rule, e.g. 'moat route insert 1 deny in on eth1 out on eth2'")
						}
						n, _, ok := policy.RuleNumber(args[1])
						if !ok {
							return fmt.Errorf("cannot insert at position %q: expected a rule number from 1", args[1])
						}
						return a.addRule(cmd, append([]string{"route"}, args[2:]...), n)
					}
				}
				return a.addRule(cmd, append([]string{word}, args...), 0)
			},
		})
	}
	return cmds
}

func (a *app) insertCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "insert N RULE...",
		Short: "Insert a rule before rule number N (see 'moat status numbered')",
		Long: `Insert a rule before rule number N of 'moat status numbered' (first match
wins: the rules before it still decide first). The rule syntax is that of
'moat allow --help'. When a rule that matches exactly the same packets is
elsewhere in the policy, it is taken out and the new rule goes to N ("Rule
updated and moved"): left where it was, the rules before it would decide
first (ufw skips such an insert). At N or just before it, it is updated in
place.`,
		Example: `  moat insert 1 deny from 203.0.113.7
  moat insert 2 allow from 198.51.100.0/24 to any port 22 proto tcp`,
		GroupID: "rules",
		Args:    needRule(2, "a rule number and a rule"),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, _, ok := policy.RuleNumber(args[0])
			if !ok {
				return fmt.Errorf("cannot insert at position %q: expected a rule number from 1", args[0])
			}
			return a.addRule(cmd, args[1:], n)
		},
	}
}

func (a *app) prependCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "prepend RULE...",
		Short:   "Add a rule before all others",
		Example: "  moat prepend deny from 203.0.113.7",
		GroupID: "rules",
		Args:    needRule(1, "a rule"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.addRule(cmd, args, 1)
		},
	}
}

// parseArgs parses command-line words as one policy statement.
func (a *app) parseArgs(args []string) (policy.Statement, error) {
	if err := checkArgs(args); err != nil {
		return policy.Statement{}, fmt.Errorf("invalid rule '%s': %w", echoArgs(args), err)
	}
	st, err := policy.ParseStatementApps(policy.ArgsTokens(args), policy.Pos{}, a.services(), a.apps())
	if err != nil {
		return st, fmt.Errorf("invalid rule '%s': %w", echoArgs(args), err)
	}
	return st, nil
}

// addRule appends (pos 0) or inserts (before rule pos) a rule.
func (a *app) addRule(cmd *cobra.Command, args []string, pos int) error {
	args = a.normalizeNetmasks(args)
	st, err := a.parseArgs(args)
	if err != nil {
		return err
	}
	if st.Kind != policy.StmtRule {
		return fmt.Errorf("'%s' is not a rule", strings.Join(args, " "))
	}
	if a.dryRun && a.json {
		return a.printJSON(st.Rule.JSON())
	}
	line := policy.QuoteArgs(args)
	return a.edit(cmd, func(doc *policy.Document) (string, bool, error) {
		// As ufw: a rule that matches the same packets as an existing one
		// replaces it in place (a second one could never match).
		if n, old := doc.FindMatch(st.Rule, a.services()); n > 0 {
			if pos > 0 && n != pos && (n+1 != pos || pos > doc.RuleCount()) {
				// 'insert N' asks for the rule at N: the rule that
				// matches the same packets moves there (left where
				// it was, the rules before it would still decide
				// first; ufw skips the insert, saying so). Before
				// rule n+1 it stands already: updated in place.
				return a.moveRule(doc, n, pos, line, old.Equal(st.Rule))
			}
			if old.Equal(st.Rule) {
				return fmt.Sprintf("Skipping adding existing rule (rule %d)", n), false, nil
			}
			before, err := doc.ReplaceRule(n, line)
			if err != nil {
				return "", false, err
			}
			return fmt.Sprintf("Rule updated (rule %d): %s -> %s", n, before, line), true, nil
		}
		if pos > 0 {
			if err := doc.InsertRule(pos, line); err != nil {
				return "", false, err
			}
			return "Rule inserted: " + line, true, nil
		}
		doc.AppendLine(line)
		return "Rule added: " + line, true, nil
	})
}

// moveRule deletes rule n (which matches the same packets as line) and
// inserts line before rule pos as numbered now.
func (a *app) moveRule(doc *policy.Document, n, pos int, line string, same bool) (string, bool, error) {
	if pos > doc.RuleCount() {
		return "", false, doc.InsertRule(pos, line) // the usual message for a bad position
	}
	at := pos
	if n < pos {
		at = pos - 1 // the rules after n moved up
	}
	before, err := doc.MoveRule(n, at, line)
	if err != nil {
		return "", false, err
	}
	if same {
		return fmt.Sprintf("Rule moved from %d to %d: %s", n, at, line), true, nil
	}
	return fmt.Sprintf("Rule updated and moved from %d to %d: %s -> %s", n, at, before, line), true, nil
}

// editHeap is the heap at which an edit collects: an edit of a
// 100,000-line policy allocates about 45 MB, most of it still held at the
// end, and its peak stays under 60 MB (docs/benchmarks.md).
const editHeap = 48 << 20

// edit changes the policy file under moat's lock and applies it when moat
// is active. Nothing is saved or applied if any step before fails.
func (a *app) edit(cmd *cobra.Command, fn func(*policy.Document) (string, bool, error)) error {
	// A short command: collect only at editHeap, unless a large policy
	// keeps more than half of that live (gctune).
	defer gctune.Short(editHeap)()
	a.parallelIfLarge()
	if a.dryRun {
		doc, err := a.loadDocument()
		if err != nil {
			return err
		}
		msg, changed, err := fn(doc)
		if err != nil {
			return err
		}
		if changed {
			p, err := doc.Policy(a.services())
			if err != nil {
				return fmt.Errorf("the change would make the policy invalid, nothing changed:\n%w", err)
			}
			a.warnCovered(p)
			// The real command applies when moat is active: it would be
			// refused if it cut a live SSH session, and so is the dry run.
			if st, err := a.engine().State(cmd.Context()); err == nil && len(st.Kernel) > 0 && (st.Applied == nil || !st.Applied.FailClosed) {
				if err := a.dryRunLockout(p); err != nil {
					return err
				}
			}
			msg += " (dry run: " + doc.Name + " not changed)"
		}
		a.printf("%s\n", msg)
		return nil
	}
	a.prefetchSSH()
	var pending *engine.Pending
	err := a.locked(cmd, func(ctx context.Context, eng *engine.Engine) error {
		res, err := eng.Edit(ctx, a.change(cmd), fn)
		if err != nil {
			return err
		}
		a.printCovered(res.Covered)
		a.printf("%s\n", res.Message)
		switch {
		case res.Unchanged:
		case res.Inactive:
			a.printf("moat is inactive: 'moat enable' applies the policy\n")
		case res.FailClosed != nil:
			a.printf("moat is FAIL-CLOSED since %s (%s): %s was changed but not applied; 'moat enable' applies it\n",
				res.FailClosed.Time.Local().Format(time.DateTime), res.FailClosed.FailReason, a.config)
		default:
			a.report(res)
			a.warnForeignLockout(ctx)
		}
		pending = res.Pending
		return nil
	})
	if err != nil {
		return err
	}
	return a.waitConfirm(cmd.Context(), pending)
}

func (a *app) deleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete N | delete RULE...",
		Short: "Delete rule number N, or the rule written as RULE",
		Long: `Delete rule number N of 'moat status numbered', or the rule written as
RULE (as it was added: 'moat delete allow 80/tcp' deletes the rule added by
'moat allow 80/tcp', whatever its spelling: 'allow 80/tcp' and 'allow to
any port 80 proto tcp' are the same rule; as in ufw, a RULE without a
comment also deletes the rule that has one). The policy file keeps its other
lines, comments and order; when moat is active the change is applied at
once (--confirm 60s rolls it back unless 'moat confirm' runs in time).`,
		Example: `  moat delete 3
  moat delete allow 80/tcp
  moat delete route allow in on eth1 out on eth2`,
		GroupID: "rules",
		Args:    needRule(1, "a rule number or a rule"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.deleteRule(cmd, args, false)
		},
	}
}

// deleteRule deletes rule number N (args ["N"]) or the rule written as
// args. routeOnly ('moat route delete'): the rule is a route rule, whose
// words lack the leading 'route'.
func (a *app) deleteRule(cmd *cobra.Command, args []string, routeOnly bool) error {
	if len(args) == 0 {
		return fmt.Errorf("'moat route delete' needs a rule number or a rule, e.g. 'moat route delete 3' or 'moat route delete allow in on eth1 out on eth2'")
	}
	n, isNumber, ok := policy.RuleNumber(args[0])
	byNumber := isNumber && len(args) == 1
	if byNumber && !ok {
		return fmt.Errorf("invalid rule number %s: expected 1 to the number of rules ('moat status numbered')", args[0])
	}
	if routeOnly && !byNumber {
		args = append([]string{"route"}, args...)
	}
	var st policy.Statement
	if !byNumber {
		var err error
		if st, err = a.parseArgs(args); err != nil {
			return err
		}
		if st.Kind != policy.StmtRule {
			return fmt.Errorf("'%s' is not a rule", strings.Join(args, " "))
		}
	}
	return a.edit(cmd, func(doc *policy.Document) (string, bool, error) {
		n := n
		if !byNumber {
			if n = doc.FindRule(st.Rule, a.services()); n == 0 {
				return "", false, errors.New("could not delete non-existent rule: 'moat status numbered' lists the rules")
			}
		}
		line, err := doc.DeleteRule(n)
		if err != nil {
			return "", false, err
		}
		if routeOnly {
			if f := strings.Fields(line); len(f) == 0 || f[0] != "route" {
				return "", false, fmt.Errorf("rule %d is not a route rule ('%s'): 'moat delete %d' deletes it", n, strings.TrimSpace(line), n)
			}
		}
		return "Rule deleted: " + strings.TrimSpace(line), true, nil
	})
}

func (a *app) defaultCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "default allow|deny|reject [incoming|outgoing|routed]",
		Short: "Set the policy for traffic no rule matches (default: incoming)",
		Long: `Set the policy for traffic no rule matches.

Built-in defaults: deny incoming, allow outgoing, and routed traffic left
alone (accepted by moat, so tools such as Docker keep deciding) until you
set a routed default or write a route rule.`,
		Example: `  moat default deny incoming
  moat default allow outgoing
  moat default deny routed`,
		GroupID: "rules",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.parseArgs(append([]string{"default"}, args...))
			if err != nil {
				return err
			}
			return a.edit(cmd, func(doc *policy.Document) (string, bool, error) {
				doc.SetDefault(st.DefaultDir, st.DefaultAction)
				return fmt.Sprintf("Default %s policy changed to '%s'", policy.DirectionWord(st.DefaultDir), st.DefaultAction), true, nil
			})
		},
	}
}

func (a *app) enableCommand() *cobra.Command {
	return &cobra.Command{
		Use: "enable",
		Example: `  moat enable
  moat enable --confirm 60s      # rolled back in 60 s unless 'moat confirm' runs
  moat enable --dry-run          # print the script, check it with the kernel
  moat enable --backend iptables`,
		Aliases: []string{"apply"},
		Short:   "Apply the policy now and keep it across reboots (moat apply is the same)",
		Long: `Apply the policy file now, atomically: the kernel gets the whole new
ruleset or keeps the old one. The policy is saved for 'moat restore', and
where systemd runs the host, moat.service (and moat-guard.service with
'guard sshd') is installed and enabled. A change that would cut a live SSH
session is refused (--force overrides); --confirm 60s rolls it back unless
'moat confirm' runs in time. With --dry-run, print what would be loaded and
check it against the kernel without changing anything.`,
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.enable(cmd, false)
		},
	}
}

// enable applies the policy file and saves it for boot (reload: only if
// moat is active).
func (a *app) enable(cmd *cobra.Command, reload bool) error {
	if a.dryRun {
		return a.dryRunApply(cmd.Context())
	}
	var pending *engine.Pending
	err := a.locked(cmd, func(ctx context.Context, eng *engine.Engine) error {
		var res *engine.Result
		var err error
		if reload {
			res, err = eng.Reload(ctx, a.change(cmd))
		} else {
			res, err = eng.Enable(ctx, a.change(cmd))
		}
		if err != nil {
			return err
		}
		if res.Inactive {
			a.printf("moat is inactive: nothing reloaded ('moat enable' applies the policy)\n")
			return nil
		}
		a.printCovered(res.Covered)
		a.report(res)
		a.warnForeignLockout(ctx)
		a.printf("moat is active (%s): %s from %s\n", res.Applied.Backend, count(res.Rules, "rule"), a.config)
		if res.Pending == nil {
			a.installBootHook(ctx, res.Policy.Guard.Enabled)
			a.installBlocklistTimer(ctx, res.Policy)
		}
		pending = res.Pending
		return nil
	})
	if err != nil {
		return err
	}
	return a.waitConfirm(cmd.Context(), pending)
}

// dryRunLockout runs the lockout check of an apply of p: the refusal the
// real command would give (exit 3), or with --force a warning.
func (a *app) dryRunLockout(p *policy.Policy) error {
	err := a.engine().CheckLockout(p)
	var le *safeapply.LockoutError
	if a.force && errors.As(err, &le) {
		fmt.Fprintf(a.errOut, "moat: warning: --force would apply although it cuts SSH access (dry run: nothing changed):\n%s\n", le)
		return nil
	}
	return err
}

// dryRunApply prints what would be loaded and checks it with the kernel.
func (a *app) dryRunApply(ctx context.Context) error {
	p, err := a.loadPolicy()
	if err != nil {
		return err
	}
	b, err := a.applyBackend(ctx, p)
	if err != nil {
		return err
	}
	a.warnCovered(p)
	if err := a.dryRunLockout(p); err != nil {
		return err
	}
	rs := a.compile(p)
	script, err := b.Script(rs)
	if err != nil {
		return err
	}
	a.printf("%s", script)
	if b.Available() == nil {
		if err := b.Check(ctx, rs); err != nil {
			return err
		}
		a.printf("# dry run: the kernel accepts this ruleset; nothing was changed\n")
	}
	return nil
}

func (a *app) reloadCommand() *cobra.Command {
	return &cobra.Command{
		Use: "reload",
		Example: `  moat reload                    # after editing the policy file by hand
  moat reload --confirm 60s`,
		Short:   "Apply the policy file again if moat is active",
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.enable(cmd, true)
		},
	}
}

func (a *app) disableCommand() *cobra.Command {
	return &cobra.Command{
		Use: "disable",
		Example: `  moat disable
  moat disable --dry-run`,
		Short:   "Remove moat's rules from the kernel (other tools' rules stay)",
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.dryRun {
				a.printf("would remove moat's rules (dry run: nothing changed)\n")
				return nil
			}
			return a.lockedToRemove(cmd, func(ctx context.Context, eng *engine.Engine) error {
				if err := errors.Join(eng.Disable(ctx), a.removeBootHook(ctx)); err != nil {
					return err
				}
				a.printf("moat is inactive: its rules and boot hook are removed; the policy file is kept\n")
				return nil
			})
		},
	}
}

func (a *app) resetCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use: "reset",
		Example: `  moat reset
  moat reset --force             # without a terminal`,
		Short: "Remove moat's rules and empty the policy (a backup is kept)",
		Long: `Remove moat's rules from the kernel and start over with an empty policy.
The old policy file is kept as FILE.TIMESTAMP.bak. Asks first; --force
answers yes (needed when there is no terminal).`,
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.dryRun {
				a.printf("would remove moat's rules and empty %s (dry run: nothing changed)\n", a.config)
				return nil
			}
			if !a.force {
				ok, err := confirm(cmd, "Resetting all rules: moat's rules are removed and "+a.config+" is emptied. Proceed (y|n)? ")
				if err != nil {
					return err
				}
				if !ok {
					a.printf("Aborted\n")
					return nil
				}
			}
			return a.lockedToRemove(cmd, func(ctx context.Context, eng *engine.Engine) error {
				backup, err := eng.Reset(ctx, a.config)
				if backup != "" {
					a.printf("Backed up %s to %s\n", a.config, backup)
				}
				if err := errors.Join(err, a.removeBootHook(ctx)); err != nil {
					return err
				}
				a.printf("moat is inactive and its policy is empty\n")
				return nil
			})
		},
	}
	return cmd
}

// confirm asks a yes/no question on the terminal.
func confirm(cmd *cobra.Command, question string) (bool, error) {
	noTerminal := errors.New("refusing to ask without a terminal: use --force to answer yes")
	if f, ok := cmd.InOrStdin().(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
			return false, noTerminal
		}
	}
	fmt.Fprint(cmd.OutOrStdout(), question)
	line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
	if errors.Is(err, io.EOF) && strings.TrimSpace(line) == "" {
		return false, noTerminal
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read answer: %w", err)
	}
	answer := strings.ToLower(strings.TrimSpace(line))
	return answer == "y" || answer == "yes", nil
}

func (a *app) checkCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Validate the policy file (and, as root, test it against the kernel)",
		Long: `Validate the policy file: every line parses, and (as root) the kernel
accepts the ruleset it compiles to; nothing is applied. An error names
FILE:LINE:COLUMN and what was expected (exit 1). Rules that an earlier rule
covers (they can never match) are warned about.

--json prints one object: config, valid, rules (how many), tested (the
kernel checked the ruleset), error ({file, line, column, message}, or null)
and warnings (the covered rules); the exit code is 1 when it is not valid.`,
		Example: `  moat check
  moat check --config /tmp/new.conf
  moat check --json`,
		GroupID: "inspect",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, b, err := a.policyAndBackend()
			var covered []ruleset.Covered
			tested := false
			if err == nil {
				covered = ruleset.Shadowed(p)
				if os.Geteuid() == 0 && b.Available() == nil {
					if err = b.Check(cmd.Context(), a.compile(p)); err == nil {
						tested = true
					}
				}
			}
			if a.json {
				return a.printCheckJSON(p, err, covered, tested)
			}
			if err != nil {
				return err
			}
			a.printCovered(covered)
			note := " (not tested against the kernel: that needs root)"
			if tested {
				note = ""
			}
			a.printf("%s: %s, valid%s\n", a.config, count(p.NumRules(), "rule"), note)
			return nil
		},
	}
}

// checkError is where and why a policy file is invalid, for 'check --json'.
type checkError struct {
	File    string `json:"file"`
	Line    int    `json:"line"`
	Column  int    `json:"column"`
	Message string `json:"message"`
}

// printCheckJSON prints check's verdict as JSON; an invalid file is exit 1
// (said in the JSON, not again on stderr).
func (a *app) printCheckJSON(p *policy.Policy, err error, covered []ruleset.Covered, tested bool) error {
	out := struct {
		Config   string      `json:"config"`
		Valid    bool        `json:"valid"`
		Rules    int         `json:"rules"`
		Tested   bool        `json:"tested"`
		Error    *checkError `json:"error"`
		Warnings []string    `json:"warnings"`
	}{Config: a.config, Valid: err == nil, Tested: tested, Warnings: []string{}}
	if p != nil {
		out.Rules = p.NumRules()
	}
	for _, c := range covered {
		out.Warnings = append(out.Warnings, c.String())
	}
	if err != nil {
		out.Error = &checkError{Message: err.Error()}
		var pe *policy.Error
		if errors.As(err, &pe) {
			out.Error = &checkError{File: pe.Pos.File, Line: pe.Pos.Line, Column: pe.Pos.Col, Message: pe.Msg}
		}
	}
	if perr := a.printJSON(out); perr != nil {
		return perr
	}
	if err != nil {
		return &exitError{code: 1, err: errSilent}
	}
	return nil
}

func (a *app) showCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show [raw|added]",
		Short: "Print the script moat loads into the kernel for the policy (built-ins included)",
		Long: `Print the script moat loads for the policy file: an nft script for
nftables, or the ipset and iptables-restore input for iptables. Built-in
rules (loopback, conntrack, ICMP, DHCP) are part of it. The backend is the
one 'moat reload' would load (the one applied now, unless the policy's
'backend' line changed); --backend picks another. When moat is active and
the file differs from what is applied, a note on stderr says so: the
script is what 'moat reload' would load ('moat status' says what differs).

As ufw's 'show': 'moat show raw' is the same; 'moat show added' lists the
policy's rules as the commands that add them. ufw's 'show listening' is
'moat audit'.`,
		Example: `  moat show
  moat show --backend iptables
  moat show added`,
		GroupID:   "inspect",
		Args:      cobra.MaximumNArgs(1),
		ValidArgs: []string{"raw", "added"},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				switch args[0] {
				case "raw":
				case "added":
					return a.showAdded()
				case "listening":
					return fmt.Errorf("'moat audit' lists the listening sockets and whether the outside reaches them (ufw's 'show listening')")
				default:
					return fmt.Errorf("unknown report %q: expected raw or added ('moat audit' for the listening sockets)", echo(args[0]))
				}
			}
			p, err := a.loadPolicy()
			if err != nil {
				return err
			}
			b, err := a.applyBackend(cmd.Context(), p)
			if err != nil {
				return err
			}
			script, err := b.Script(a.compile(p))
			if err != nil {
				return err
			}
			a.printf("%s", script)
			a.noteShowDiffers(cmd.Context(), b, script)
			return nil
		},
	}
}

// showAdded prints the policy's rules as the commands that add them, as
// ufw's 'show added'.
func (a *app) showAdded() error {
	doc, err := a.loadDocument()
	if err != nil {
		return err
	}
	a.printf("Added user rules (see 'moat status' for running firewall):\n")
	texts := doc.RuleTexts()
	if len(texts) == 0 {
		a.printf("(None)\n")
	}
	for _, t := range texts {
		a.printf("moat %s\n", t)
	}
	return nil
}

// noteShowDiffers says on stderr when the script shown (the file's) is
// not what is applied: moat is active with the same backend, and what it
// recorded applying renders another script (or it is fail-closed).
func (a *app) noteShowDiffers(ctx context.Context, b backend.Backend, script string) {
	if os.Geteuid() != 0 {
		return
	}
	active, err := a.activeBackend(ctx)
	if err != nil || active == nil || active.Name() != b.Name() {
		return
	}
	st := a.loadApplied()
	if !st.Known {
		return
	}
	if st.FailClosed {
		fmt.Fprintf(a.errOut, "moat: note: the fail-closed ruleset is applied, not this script ('moat status' says why; 'moat reload' loads this)\n")
		return
	}
	applied, err := a.parseApplied(st.Policy)
	if err != nil {
		return
	}
	if want, err := b.Script(a.compileApplied(applied)); err == nil && want != script {
		fmt.Fprintf(a.errOut, "moat: note: %s differs from what is applied: this is the script 'moat reload' would load ('moat status' says what differs)\n", a.config)
	}
}

// serialPolicyBytes is the largest policy file an edit runs on one
// processor (gctune.StartSerial): about 2,000 rules.
const serialPolicyBytes = 64 << 10

// parallelIfLarge gives an edit every processor when its policy is
// large (over serialPolicyBytes, or not a regular file) or names a
// blocklist (whose networks, up to hundreds of thousands, are read and
// merged): work where the collector and the covered-rule search run
// beside the apply.
func (a *app) parallelIfLarge() {
	if !gctune.Serial() {
		return
	}
	if fi, err := os.Stat(a.config); err != nil || !fi.Mode().IsRegular() || fi.Size() > serialPolicyBytes {
		gctune.Parallel()
		return
	}
	data, err := os.ReadFile(a.config)
	if err != nil || len(data) > serialPolicyBytes || namesBlocklist(data) {
		gctune.Parallel()
	}
}

// namesBlocklist: a line of the policy starts with the word blocklist,
// as the parser reads it (a keyword in any case, quoted or not).
func namesBlocklist(data []byte) bool {
	for line := range bytes.Lines(data) {
		if f := bytes.Fields(line); len(f) > 0 && bytes.EqualFold(bytes.Trim(f[0], `"'`), []byte("blocklist")) {
			return true
		}
	}
	return false
}
