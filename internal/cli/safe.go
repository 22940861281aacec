package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/safeapply"
)

const (
	exitLockout    = 3
	exitRolledBack = 4
)

// installBootHook installs the systemd units where systemd runs the host:
// moat.service always, moat-guard.service (started now) when the policy
// turns the guard on.
func (a *app) installBootHook(ctx context.Context, guardOn bool) {
	if a.engineHook != nil {
		return // a test's fake engine: never the host's init system
	}
	sd := safeapply.HostSystemd
	switch {
	case !safeapply.InHostNamespace():
		a.printf("Saved for 'moat restore' (not the host's network namespace: no boot unit installed)\n")
	case !sd.Running():
		a.printf("Saved for 'moat restore'; systemd is not running here, so run 'moat restore' early at boot yourself")
		if guardOn {
			a.printf(", and 'moat guard' as a service")
		}
		a.printf("\n")
	default:
		self, err := os.Executable()
		if err == nil {
			err = sd.Install(ctx, safeapply.BootUnit, self)
		}
		if err != nil {
			fmt.Fprintf(a.errOut, "moat: warning: rules are applied and saved, but the boot unit failed: %v\n", err)
			return
		}
		a.printf("Enabled at boot (moat.service loads the saved ruleset before the network comes up)\n")
		if guardOn {
			if err := sd.Install(ctx, safeapply.GuardUnit, self); err != nil {
				fmt.Fprintf(a.errOut, "moat: warning: the guard's unit failed: %v\n", err)
				return
			}
			a.printf("Guard running (moat-guard.service)\n")
		}
	}
}

func (a *app) removeBootHook(ctx context.Context) error {
	if a.engineHook != nil {
		return nil // a test's fake engine: never the host's init system
	}
	sd := safeapply.HostSystemd
	if !safeapply.InHostNamespace() || !sd.Running() {
		return nil
	}
	return errors.Join(a.removeBlocklistTimer(ctx), sd.Uninstall(ctx, safeapply.GuardUnit), sd.Uninstall(ctx, safeapply.BootUnit))
}

func (a *app) confirmCommand() *cobra.Command {
	return &cobra.Command{
		Use: "confirm",
		Example: `  moat allow 2222/tcp --confirm 60s    # then, from a new SSH connection:
  moat confirm`,
		Short: "Keep a change applied with --confirm (run it from a new connection)",
		Long: `Keep the change applied with --confirm. Run it over a NEW SSH connection:
that the connection works is the proof the new rules let you in. The
change is saved for boot if moat is enabled. Too late (the deadline
passed), it says when the change was rolled back.`,
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.locked(cmd, func(ctx context.Context, eng *engine.Engine) error {
				p, err := eng.Confirm(ctx)
				if err != nil {
					return err
				}
				if p.Persist {
					pol, _ := a.loadPolicy()
					a.installBootHook(ctx, pol != nil && pol.Guard.Enabled)
					a.installBlocklistTimer(ctx, pol)
				}
				a.printf("Confirmed: the change applied at %s stays\n", p.Created.Format(time.TimeOnly))
				return nil
			})
		},
	}
}

func (a *app) rollbackCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rollback",
		Example: `  moat rollback`,
		Short:   "Undo a change applied with --confirm, now",
		Long: `Undo the change applied with --confirm now: moat's rules, the policy file
and the saved state go back to what they were before it (the unconfirmed
policy is kept as FILE.unconfirmed). Past the deadline, a change not rolled
back yet is rolled back all the same (it says the deadline passed). With no
change waiting, it fails, saying when the last one was rolled back.`,
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rollback := func(ctx context.Context, eng *engine.Engine) error {
				p, err := eng.Rollback(ctx, "", "moat rollback")
				if err != nil {
					return err
				}
				a.printf("Rolled back: moat's rules and %s are as they were before %s\n", p.PolicyPath, p.Created.Format(time.TimeOnly))
				return nil
			}
			err := a.locked(cmd, rollback)
			if engine.IsRepairError(err) {
				// What an interrupted command left cannot be repaired:
				// the change goes back all the same, as its watchdog
				// takes it back at the deadline; what is left stays
				// for the admin, named.
				fmt.Fprintf(a.errOut, "moat: warning: %v\nmoat: rolling back the change waiting for confirmation all the same\n", err)
				return a.lockedToRemove(cmd, rollback)
			}
			return err
		},
	}
}

func (a *app) watchdogCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "watchdog ID",
		Short:  "Roll back change ID at its deadline unless confirmed (started by --confirm)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Detached already (own session); a hangup must not stop it.
			signal.Ignore(syscall.SIGHUP, syscall.SIGINT)
			a.log = a.log.With("watchdog", args[0])
			// SIGTERM (from confirm, rollback or disable, which checked it
			// is this process) cancels the context: stop quietly.
			err := a.engine().Watch(cmd.Context(), args[0])
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
}

func (a *app) restoreCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "restore",
		Example: `  moat restore                   # what moat.service runs at boot`,
		Short:   "Load the ruleset saved by 'moat enable' (what the boot unit runs)",
		Long: `Load the ruleset that 'moat enable' saved. This is what moat.service runs
at boot, before the network is up. If the saved ruleset is missing or
broken, moat fails closed: it loads 'default deny incoming', 'default allow
outgoing' and allows the SSH ports: those sshd (or systemd for it) listens
on, and those of sshd's effective configuration ('sshd -T', else the files
with their Include; --sshd-config), 22 if none, so the admin can still log
in, and exits non-zero. It stays fail-closed (and 'moat restore' keeps
failing) until an admin applies a good policy with 'moat enable'.`,
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.locked(cmd, func(ctx context.Context, eng *engine.Engine) error {
				res, err := eng.Restore(ctx, a.change(cmd))
				if err != nil {
					return err
				}
				a.printf("Restored the saved ruleset (%s, saved %s from %s)\n", res.Applied.Backend, res.Applied.Time.Format(time.RFC3339), res.Applied.Source)
				return nil
			})
		},
	}
}

func (a *app) initCommand() *cobra.Command {
	return &cobra.Command{
		Use: "init",
		Example: `  moat init                  # write the first policy (not applied)
  moat init --dry-run        # print it, write nothing
  moat init --force          # replace a policy that has rules`,
		Short: "Write a first policy that keeps SSH open (does not apply it)",
		Long: `Write a first policy file: 'default deny incoming', 'default allow
outgoing', and an allow rule for each SSH port: those sshd (or systemd for
it) listens on, found in /proc, and those of sshd's effective configuration
('sshd -T', else the files with their Include; --sshd-config). It does not
apply it: review it, then run 'moat enable'. An existing policy with rules
is kept unless --force.`,
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !a.dryRun {
				// Read and write the policy under moat's lock, as every edit.
				unlock, err := a.engine().Lock(cmd.Context(), a.commandLine(cmd))
				if err != nil {
					return err
				}
				defer unlock()
			}
			doc, err := a.loadDocument()
			if err != nil {
				return err
			}
			if doc.RuleCount() > 0 && !a.force {
				return fmt.Errorf("%s already has %s: use --force to replace it", a.config, count(doc.RuleCount(), "rule"))
			}
			ports, where := safeapply.SSHDPorts(cmd.Context(), "/proc", a.sshdConfig)
			lines := []string{
				"# moat policy, written by 'moat init': one rule a line, in ufw's syntax ('moat --help').",
				"default deny incoming",
				"default allow outgoing",
			}
			for _, p := range ports {
				lines = append(lines, fmt.Sprintf("allow %d/tcp comment 'sshd'", p))
			}
			lines = append(lines,
				"# Ban addresses that fail to log in 5 times in 10 minutes ('moat guard' runs it).",
				"guard sshd maxretry 5 findtime 10m bantime 1h bantime-max 1w bantime-factor 2")
			newDoc := &policy.Document{Name: a.config, Lines: lines}
			if _, err := newDoc.Policy(a.services()); err != nil {
				return err
			}
			if a.dryRun {
				a.printf("%s", newDoc.Bytes())
				return nil
			}
			if err := newDoc.Write(); err != nil {
				return err
			}
			a.printf("Wrote %s:\n%s\n", a.config, newDoc.Bytes())
			word := "port"
			if len(ports) > 1 {
				word = "ports"
			}
			a.printf("It drops incoming connections except SSH (%s %s: %s) and lets this host\n"+
				"connect out. Replies to its own connections always get back in. The guard bans\n"+
				"addresses that keep failing to log in, once 'moat guard' runs (moat-guard.service).\n"+
				"Add what else must be reachable ('moat allow 80,443/tcp'), then 'moat enable'\n"+
				"(or 'moat enable --confirm 60s').\n",
				word, portList(ports), where)
			return nil
		},
	}
}

func portList(ports []uint16) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ", ")
}
