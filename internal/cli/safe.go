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

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
)

const (
	exitLockout    = 3
	exitRolledBack = 4
)

// checkLockout refuses a ruleset that would cut a live SSH session (unless
// --force, which says so loudly), and warns about what else it breaks.
func (a *app) checkLockout(rs *ruleset.Ruleset, p *policy.Policy) error {
	st, err := safeapply.FindSSH("/proc", os.Getenv("SSH_CONNECTION"))
	if err != nil {
		fmt.Fprintf(a.errOut, "moat: warning: cannot look for SSH sessions (%v); the lockout check is skipped\n", err)
		return nil
	}
	a.log.Debug("ssh", "listen", st.Listen, "sessions", len(st.Sessions))
	if problems := safeapply.CheckSessions(rs, p, st.Sessions, safeapply.IfaceFor); len(problems) > 0 {
		lerr := &safeapply.LockoutError{Problems: problems}
		if !a.force {
			return &exitError{code: exitLockout, err: lerr}
		}
		fmt.Fprintf(a.errOut, "moat: WARNING: --force: applying although it cuts SSH access:\n%s\n", lerr)
	}
	if len(st.Sessions) == 0 {
		for _, w := range safeapply.PortWarnings(rs, st) {
			fmt.Fprintf(a.errOut, "moat: warning: %s\n", w)
		}
	}
	if p.Defaults[policy.Out] != policy.Allow {
		for _, w := range safeapply.OutgoingWarnings(rs, "/etc/resolv.conf") {
			fmt.Fprintf(a.errOut, "moat: warning: %s\n", w)
		}
	}
	return nil
}

// watchdogArgs are the global flags the watchdog process needs.
func (a *app) watchdogArgs() []string {
	args := []string{"--state-dir", a.stateDir, "--config", a.config}
	if a.verbose {
		args = append(args, "--verbose")
	}
	return args
}

// arm snapshots what moat owns now and starts the rollback watchdog.
func (a *app) arm(ctx context.Context, next, prev backend.Backend, opts applyOpts) (*safeapply.Pending, error) {
	var snap []byte
	prevName := ""
	if prev != nil {
		prevName = prev.Name()
		var err error
		if snap, err = prev.Snapshot(ctx); err != nil {
			return nil, fmt.Errorf("snapshot before --confirm: %w", err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the moat binary for the watchdog: %w", err)
	}
	// The file goes back to what is applied now, when moat knows it.
	oldPolicy, hadPolicy := opts.oldPolicy, opts.hadPolicy
	if applied, ok := safeapply.LastApplied(a.stateDir); ok && prev != nil {
		oldPolicy, hadPolicy = applied, true
	}
	p := &safeapply.Pending{Backend: next.Name(), PrevBackend: prevName, PolicyPath: a.config, HadPolicy: hadPolicy,
		Persist: opts.persist || safeapply.Enabled(a.stateDir)}
	return safeapply.Arm(a.stateDir, p, snap, oldPolicy, a.confirm, self, a.watchdogArgs())
}

// restorerFor puts back the backend that had moat's rules before the
// change, and clears the one the change used if it was another.
func restorerFor(p *safeapply.Pending) safeapply.Restorer {
	return safeapply.RestoreFunc(func(ctx context.Context, snap []byte) error {
		if p.PrevBackend != "" {
			prev, err := backend.ForName(policy.Backend(p.PrevBackend))
			if err != nil {
				return err
			}
			if err := prev.Restore(ctx, snap); err != nil {
				return err
			}
		}
		if p.Backend != p.PrevBackend {
			next, err := backend.ForName(policy.Backend(p.Backend))
			if err != nil {
				return err
			}
			return next.Remove(ctx)
		}
		return nil
	})
}

// waitConfirm tells the admin what to do and, unless --no-wait, waits for
// the confirmation or the rollback.
func (a *app) waitConfirm(ctx context.Context, p *safeapply.Pending) error {
	if p == nil {
		return nil
	}
	a.printf("Waiting for confirmation: from a NEW connection, run 'moat confirm' before %s (%s from now),\n"+
		"or the previous rules come back. 'moat rollback' goes back at once.\n",
		p.Deadline.Format(time.TimeOnly), time.Until(p.Deadline).Round(time.Second))
	if a.noWait {
		return nil
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if o, err := safeapply.LastOutcome(a.stateDir); err == nil && o.ID == p.ID {
			if o.Outcome == "confirmed" {
				a.printf("Confirmed: the new rules stay.\n")
				return nil
			}
			return &exitError{code: exitRolledBack, err: errors.New("not confirmed in time: the previous rules are back")}
		}
		if time.Now().After(p.Deadline.Add(10 * time.Second)) {
			return errors.New("the rollback watchdog did not act: check 'moat status' and " + a.stateDir + "/" + safeapply.LogFile)
		}
		select {
		case <-ctx.Done():
			a.printf("Stopped waiting; the rollback is still armed.\n")
			return nil
		case <-tick.C:
		}
	}
}

// installBootHook installs the systemd units where systemd runs the host:
// moat.service always, moat-guard.service (started now) when the policy
// turns the guard on.
func (a *app) installBootHook(ctx context.Context, guardOn bool) {
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
	sd := safeapply.HostSystemd
	if !safeapply.InHostNamespace() || !sd.Running() {
		return nil
	}
	return errors.Join(sd.Uninstall(ctx, safeapply.GuardUnit), sd.Uninstall(ctx, safeapply.BootUnit))
}

func (a *app) confirmCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "confirm",
		Short: "Keep a change applied with --confirm (run it from a new connection)",
		Long: `Keep the change applied with --confirm. Run it over a NEW SSH connection:
that the connection works is the proof the new rules let you in.`,
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := safeapply.Confirm(a.stateDir)
			if p == nil {
				return err
			}
			if err != nil {
				fmt.Fprintf(a.errOut, "moat: warning: %v\n", err)
			}
			if p.Persist {
				doc, err := policy.ReadDocument(p.PolicyPath)
				if err != nil {
					return err
				}
				if err := safeapply.Save(a.stateDir, safeapply.Saved{Backend: p.Backend, Policy: string(doc.Bytes()), Source: p.PolicyPath}); err != nil {
					return err
				}
				pol, _ := doc.Policy(a.services())
				a.installBootHook(cmd.Context(), pol != nil && pol.Guard.Enabled)
			}
			a.printf("Confirmed: the change applied at %s stays\n", p.Created.Format(time.TimeOnly))
			return nil
		},
	}
}

func (a *app) rollbackCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rollback",
		Short:   "Undo a change applied with --confirm, now",
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := safeapply.LoadPending(a.stateDir)
			if err != nil {
				return err
			}
			if _, err := safeapply.Rollback(cmd.Context(), a.stateDir, "", restorerFor(p), a.log); err != nil {
				return err
			}
			a.printf("Rolled back: moat's rules and %s are as they were before %s\n", p.PolicyPath, p.Created.Format(time.TimeOnly))
			return nil
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
			p, err := safeapply.LoadPending(a.stateDir)
			if err != nil {
				return nil
			}
			return safeapply.Watch(context.Background(), a.stateDir, args[0], restorerFor(p), a.log)
		},
	}
}

func (a *app) restoreCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "restore",
		Short: "Load the ruleset saved by 'moat enable' (what the boot unit runs)",
		Long: `Load the ruleset that 'moat enable' saved. This is what moat.service runs
at boot, before the network is up. If the saved ruleset is missing or
broken, moat fails closed: it loads 'default deny incoming', 'default allow
outgoing' and allows the SSH ports: those sshd (or systemd for it) listens
on, and those of sshd's effective configuration ('sshd -T', else the files
with their Include; --sshd-config), 22 if none, so the admin can still log
in, and exits non-zero.`,
		GroupID: "state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			saved, err := safeapply.LoadSaved(a.stateDir)
			var p *policy.Policy
			if err == nil {
				p, err = policy.NewDocument("saved:"+saved.Source, []byte(saved.Policy)).Policy(a.services())
			}
			if err == nil {
				p.Source = saved.Source // the file to edit, named in the kernel
			}
			if err == nil {
				a.backend = saved.Backend
				if _, _, err = a.apply(ctx, p, applyOpts{policyText: []byte(saved.Policy)}); err == nil {
					a.printf("Restored the saved ruleset (%s, saved %s from %s)\n", saved.Backend, saved.Saved.Format(time.RFC3339), saved.Source)
					return nil
				}
			}
			failErr := err
			text := safeapply.FailClosedPolicy(a.sshdConfig)
			fp, perr := policy.NewDocument("fail-closed", []byte(text)).Policy(nil)
			if perr != nil {
				return errors.Join(failErr, perr)
			}
			fp.Source = a.config
			a.backend, a.force = "", true // at boot no session exists to protect
			if _, _, err := a.apply(ctx, fp, applyOpts{}); err != nil {
				return fmt.Errorf("restore failed (%v) and so did the fail-closed ruleset: %w", failErr, err)
			}
			return fmt.Errorf("restore failed, loaded the fail-closed ruleset instead (SSH open, everything else incoming dropped):\n  %w\n%s",
				failErr, strings.TrimRight(text, "\n"))
		},
	}
}

func (a *app) initCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "init",
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
			a.printf("It drops incoming connections except SSH (ports %s, %s) and lets this host\n"+
				"connect out. Replies to its own connections always get back in. The guard bans\n"+
				"addresses that keep failing to log in, once 'moat guard' runs (moat-guard.service).\n"+
				"Add what else must be reachable ('moat allow 80,443/tcp'), then 'moat enable'\n"+
				"(or 'moat enable --confirm 60s').\n",
				portList(ports), where)
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
