package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/backend"
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

const ruleExamples = `  moat allow 22/tcp
  moat allow ssh
  moat allow 80,443/tcp comment 'web'
  moat deny from 203.0.113.0/24
  moat allow proto tcp from 198.51.100.0/24 to any port 5432
  moat allow in on eth0 to any port 80 proto tcp
  moat deny out 25/tcp
  moat reject auth
  moat limit ssh
  moat limit 22/tcp rate 10/60s
  moat route allow in on eth1 out on eth2 to 192.0.2.0/24 port 80 proto tcp`

func (a *app) ruleCommands() []*cobra.Command {
	var cmds []*cobra.Command
	for _, word := range []string{"allow", "deny", "reject", "limit", "route"} {
		word := word
		cmds = append(cmds, &cobra.Command{
			Use:     word + " RULE...",
			Short:   ruleHelp[word],
			Example: ruleExamples,
			GroupID: "rules",
			Args:    cobra.MinimumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return a.addRule(cmd.Context(), append([]string{word}, args...), 0)
			},
		})
	}
	return cmds
}

func (a *app) insertCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "insert N RULE...",
		Short:   "Insert a rule before rule number N (see 'moat status numbered')",
		Example: "  moat insert 1 deny from 203.0.113.7",
		GroupID: "rules",
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 {
				return fmt.Errorf("cannot insert at position %q: expected a rule number from 1", args[0])
			}
			return a.addRule(cmd.Context(), args[1:], n)
		},
	}
}

func (a *app) prependCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "prepend RULE...",
		Short:   "Add a rule before all others",
		Example: "  moat prepend deny from 203.0.113.7",
		GroupID: "rules",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.addRule(cmd.Context(), args, 1)
		},
	}
}

// parseArgs parses command-line words as one policy statement.
func (a *app) parseArgs(args []string) (policy.Statement, error) {
	st, err := policy.ParseStatement(policy.ArgsTokens(args), policy.Pos{}, a.services())
	if err != nil {
		return st, fmt.Errorf("invalid rule '%s': %w", strings.Join(args, " "), err)
	}
	return st, nil
}

// addRule appends (pos 0) or inserts (before rule pos) a rule.
func (a *app) addRule(ctx context.Context, args []string, pos int) error {
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
	doc, err := a.loadDocument()
	if err != nil {
		return err
	}
	line := policy.QuoteArgs(args)
	// As ufw: a rule that matches the same packets as an existing one
	// replaces it in place (a second one could never match).
	if n, old := doc.FindMatch(st.Rule, a.services()); n > 0 {
		if old.Equal(st.Rule) {
			a.printf("Skipping adding existing rule (rule %d)\n", n)
			return nil
		}
		before, err := doc.ReplaceRule(n, line)
		if err != nil {
			return err
		}
		return a.commit(ctx, doc, fmt.Sprintf("Rule updated (rule %d): %s -> %s", n, before, line))
	}
	verb := "added"
	if pos > 0 {
		verb = "inserted"
		if err := doc.InsertRule(pos, line); err != nil {
			return err
		}
	} else {
		doc.AppendLine(line)
	}
	return a.commit(ctx, doc, fmt.Sprintf("Rule %s: %s", verb, line))
}

// commit validates the edited document, applies it if moat is active, and
// saves it. Nothing is saved or applied if any step before fails.
func (a *app) commit(ctx context.Context, doc *policy.Document, done string) error {
	p, err := doc.Policy(a.services())
	if err != nil {
		return fmt.Errorf("the change would make the policy invalid, nothing changed:\n%w", err)
	}
	a.warnCovered(p)
	if a.dryRun {
		a.printf("%s (dry run: %s not changed)\n", done, doc.Name)
		return nil
	}
	active, err := a.activeBackend(ctx)
	if err != nil {
		return err
	}
	var pending *safeapply.Pending
	if active != nil {
		old, err := policy.ReadDocument(doc.Name)
		if err != nil {
			return err
		}
		_, statErr := os.Stat(doc.Name)
		opts := applyOpts{policyText: doc.Bytes(), oldPolicy: old.Bytes(), hadPolicy: statErr == nil}
		if _, pending, err = a.apply(ctx, p, opts); err != nil {
			return err
		}
	}
	if err := doc.Write(); err != nil {
		return err
	}
	a.printf("%s\n", done)
	if active == nil {
		a.printf("moat is inactive: 'moat enable' applies the policy\n")
	}
	return a.waitConfirm(ctx, pending)
}

func (a *app) deleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete N | delete RULE...",
		Short: "Delete rule number N, or the rule written as RULE",
		Example: `  moat delete 3
  moat delete allow 80/tcp`,
		GroupID: "rules",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			doc, err := a.loadDocument()
			if err != nil {
				return err
			}
			n, numErr := strconv.Atoi(args[0])
			if numErr == nil && len(args) == 1 {
				line, err := doc.DeleteRule(n)
				if err != nil {
					return err
				}
				return a.commit(cmd.Context(), doc, "Rule deleted: "+strings.TrimSpace(line))
			}
			st, err := a.parseArgs(args)
			if err != nil {
				return err
			}
			if st.Kind != policy.StmtRule {
				return fmt.Errorf("'%s' is not a rule", strings.Join(args, " "))
			}
			n = doc.FindRule(st.Rule, a.services())
			if n == 0 {
				return errors.New("could not delete non-existent rule: 'moat status numbered' lists the rules")
			}
			line, err := doc.DeleteRule(n)
			if err != nil {
				return err
			}
			return a.commit(cmd.Context(), doc, "Rule deleted: "+strings.TrimSpace(line))
		},
	}
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
			doc, err := a.loadDocument()
			if err != nil {
				return err
			}
			doc.SetDefault(st.DefaultDir, st.DefaultAction)
			return a.commit(cmd.Context(), doc, fmt.Sprintf("Default %s policy changed to '%s'",
				policy.DirectionWord(st.DefaultDir), st.DefaultAction))
		},
	}
}

func (a *app) enableCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "enable",
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
			return a.enable(cmd.Context())
		},
	}
}

func (a *app) enable(ctx context.Context) error {
	doc, err := a.loadDocument()
	if err != nil {
		return err
	}
	p, err := doc.Policy(a.services())
	if err != nil {
		return err
	}
	a.warnCovered(p)
	if a.dryRun {
		b, err := a.backendFor(p)
		if err != nil {
			return err
		}
		rs := ruleset.Compile(p)
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
	_, statErr := os.Stat(a.config)
	b, pending, err := a.apply(ctx, p, applyOpts{policyText: doc.Bytes(), oldPolicy: doc.Bytes(), hadPolicy: statErr == nil, persist: true})
	if err != nil {
		return err
	}
	a.printf("moat is active (%s): %s from %s\n", b.Name(), count(len(p.Rules), "rule"), a.config)
	if pending == nil {
		a.installBootHook(ctx, p.Guard.Enabled)
	}
	return a.waitConfirm(ctx, pending)
}

func (a *app) reloadCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "reload",
		Short:   "Apply the policy file again if moat is active",
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			active, err := a.activeBackend(cmd.Context())
			if err != nil {
				return err
			}
			if active == nil {
				a.printf("moat is inactive: nothing reloaded ('moat enable' applies the policy)\n")
				return nil
			}
			return a.enable(cmd.Context())
		},
	}
}

func (a *app) disableCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "disable",
		Short:   "Remove moat's rules from the kernel (other tools' rules stay)",
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.dryRun {
				a.printf("would remove moat's rules (dry run: nothing changed)\n")
				return nil
			}
			if err := a.removeAll(cmd.Context()); err != nil {
				return err
			}
			a.printf("moat is inactive: its rules and boot hook are removed; the policy file is kept\n")
			return nil
		},
	}
}

// removeAll removes moat's rules from every backend that has them, the
// saved ruleset, the boot hook and any pending confirmation.
func (a *app) removeAll(ctx context.Context) error {
	var errs []error
	if err := safeapply.Disarm(a.stateDir); err != nil {
		errs = append(errs, err)
	}
	for _, b := range backend.All() {
		if b.Available() != nil {
			continue
		}
		if err := b.Remove(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, safeapply.Forget(a.stateDir), a.removeBootHook(ctx))
	return errors.Join(errs...)
}

func (a *app) resetCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "reset",
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
			doc, err := a.loadDocument()
			if err != nil {
				return err
			}
			if len(doc.Lines) > 0 {
				backup := &policy.Document{Name: a.config + "." + time.Now().UTC().Format("20060102T150405Z") + ".bak", Lines: doc.Lines}
				if err := backup.Write(); err != nil {
					return err
				}
				a.printf("Backed up %s to %s\n", a.config, backup.Name)
			}
			if err := a.removeAll(cmd.Context()); err != nil {
				return err
			}
			empty := &policy.Document{Name: a.config, Lines: []string{"# moat policy: one rule a line, in ufw's syntax ('moat --help')"}}
			if err := empty.Write(); err != nil {
				return err
			}
			a.printf("moat is inactive and its policy is empty\n")
			return nil
		},
	}
	return cmd
}

// confirm asks a yes/no question on the terminal.
func confirm(cmd *cobra.Command, question string) (bool, error) {
	st, err := os.Stdin.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return false, errors.New("refusing to ask without a terminal: use --force")
	}
	fmt.Fprint(cmd.OutOrStdout(), question)
	line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
	if err != nil {
		return false, fmt.Errorf("read answer: %w", err)
	}
	answer := strings.ToLower(strings.TrimSpace(line))
	return answer == "y" || answer == "yes", nil
}

func (a *app) checkCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "check",
		Short:   "Validate the policy file (and, as root, test it against the kernel)",
		GroupID: "inspect",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, b, err := a.policyAndBackend()
			if err != nil {
				return err
			}
			a.warnCovered(p)
			tested := " (not tested against the kernel: that needs root)"
			if os.Geteuid() == 0 && b.Available() == nil {
				if err := b.Check(cmd.Context(), ruleset.Compile(p)); err != nil {
					return err
				}
				tested = ""
			}
			a.printf("%s: %s, valid%s\n", a.config, count(len(p.Rules), "rule"), tested)
			return nil
		},
	}
}

func (a *app) showCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show",
		Short: "Print exactly what moat loads into the kernel (built-ins included)",
		Long: `Print the script moat loads for the policy: an nft script for nftables,
or the ipset and iptables-restore input for iptables. Built-in rules
(loopback, conntrack, ICMP, DHCP) are part of it. --backend picks the
renderer.`,
		GroupID: "inspect",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, b, err := a.policyAndBackend()
			if err != nil {
				return err
			}
			script, err := b.Script(ruleset.Compile(p))
			if err != nil {
				return err
			}
			a.printf("%s", script)
			return nil
		},
	}
}
