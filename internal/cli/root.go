// Package cli is moat's command line: ufw's commands, plus show, explain,
// check and lab.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/gctune"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/safeapply"
	"github.com/moat-fw/moat/internal/termtext"
)

// Version is set at build time (-ldflags "-X .../cli.Version=...").
var Version = "dev"

// app holds the global flags and what the commands share.
type app struct {
	sshScan  func() (safeapply.SSHState, error) // findSSH's, made on first use
	config   string
	backend  string
	dryRun   bool
	json     bool
	force    bool
	verbose  bool
	stateDir string
	confirm  time.Duration
	noWait   bool

	// sshdConfig is sshd's configuration file (fail-closed restore, init).
	sshdConfig string

	out, errOut io.Writer
	log         *slog.Logger

	// args are the command-line arguments (for messages and the journal).
	args []string
	// eng is the apply engine (a.engine() builds it); engineHook lets
	// tests replace its options (fake backends, clock).
	eng *engine.Engine
	// warned holds the blocklist warnings said already (compile).
	warned map[string]bool
	// refreshed are the lists this command's blocklist update loaded
	// into the kernel, by name, until their saved copies are written:
	// fillApplied takes them over the copies.
	refreshed  map[string][]netip.Prefix
	engineHook func(*engine.Options)
	// kernel are the real backends the engine drives (repairDrift sets
	// them to rewrite whole).
	kernel []backend.Backend
	// verified is the nftables generation at which this command found the
	// kernel to hold what moat applied (fingerprint.go).
	verified verifiedGen
	// repairing is the nftables generation at which this command's drift
	// check compared moat's rules and found them changed outside moat
	// (repairWhy, as it reported them): the repair commits only there,
	// or reports what changed since first (repair.go, setChecked).
	repairing verifiedGen
	repairWhy string
	// repairUnchecked: the command's last run, after its repairs were
	// refused again and again by a ruleset that kept moving (another
	// program's commits): the repair is made as it reads, as a repair
	// was before it was checked, rather than fail (engine.go).
	repairUnchecked bool
	// driftSaid is the drift this command reported last: its runs again
	// (runChecked) do not repeat it.
	driftSaid string
	// appsRead is what apps read last.
	appsRead appsCache
	// ahead is the fingerprint of what moat loaded, read back right after
	// the last nftables commit (fingerprint.go).
	ahead *aheadPrint
}

// exitError carries an exit code for errors that are not failures of moat
// (a lab probe that disagreed, a refused change).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Main runs the command line and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return run(ctx, args, stdout, stderr, nil)
}

// run is Main with a hook for the engine's options (tests).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, hook func(*engine.Options)) int {
	// One netlink socket for the command's nftables reads.
	defer nft.Share()()
	// Everything moat prints goes through termtext.Writer: no control
	// character from text others wrote (journal, blocklists, kernel
	// rules' comments, policy files, process names) reaches a terminal.
	tout, terr := termtext.NewWriter(stdout), termtext.NewWriter(stderr)
	defer func() { _, _ = tout.Flush(), terr.Flush() }()
	stdout, stderr = tout, terr
	a := &app{out: stdout, errOut: stderr, args: args, engineHook: hook}
	for _, w := range gctune.EnvWarnings() {
		fmt.Fprintf(stderr, "moat: warning: %s\n", w)
	}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	if !errors.Is(err, errSilent) {
		fmt.Fprintf(stderr, "moat: %v\n", err)
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var le *safeapply.LockoutError
	if errors.As(err, &le) {
		return exitLockout
	}
	return 1
}

const rootLong = `moat hardens a Linux server's firewall from one policy, for IPv4 and IPv6.

The policy is ufw's rule syntax, one command a line, in /etc/moat/moat.conf
(--config or MOAT_CONFIG to use another file). Commands that change it edit
that file, keeping your comments and order, and apply it at once when moat
is active. moat owns its own table (nftables: inet moat) or chains
(iptables: MOAT-INPUT, MOAT-OUTPUT, MOAT-FORWARD) and never touches rules
of other tools.

Quick start:
  moat init                       # first policy: deny incoming, allow SSH's real ports, guard on
  moat allow 80,443/tcp           # what else must be reachable
  moat enable --confirm 60s       # apply and save for boot; rolled back unless...
  moat confirm                    # ...confirmed from a new SSH connection
  moat status verbose             # what is applied, with counters
  moat guard                      # ban SSH brute-forcers (moat-guard.service)

Blocklists and port scans (policy lines; 'moat blocklist --help'):
  blocklist drop url https://www.spamhaus.org/drop/drop.txt [refresh 24h]
  blocklist local file /etc/moat/lists/bad.netset
  guard portscan ports 10 within 60s bantime 1h   # banned in the kernel
  moat blocklist update [NAME]    # fetch over HTTPS, swap the new contents in

Coming from ufw or fail2ban: 'moat import ufw', 'moat import fail2ban'
print the equivalent policy (--write puts it in the policy file). ufw's
application profiles work ('moat allow OpenSSH', 'moat app list'), and
'moat logging low' logs what the default policy blocks ('moat log').

moat refuses any change that would cut a live SSH session (exit code 3;
--force overrides).

Rule syntax (as ufw):
  moat allow|deny|reject|limit [in|out] [on IFACE] [log|log-all] PORT[/PROTO]|PROFILE
  moat allow|deny|reject|limit [in|out] [on IFACE] [log|log-all] [proto PROTO]
       [from ADDR [port PORT|app PROFILE]] [to ADDR [port PORT|app PROFILE]] [comment TEXT]
  moat route allow in on IFACE out on IFACE [proto ..] [from ..] [to ..]
  moat route allow PORT[/PROTO]
  PORT is 22, 80,443 (up to 15), 6000:6007 or a name from /etc/services;
  lists and ranges need /tcp or /udp. PROFILE is an application profile
  ('moat app list'). ADDR is any, an address, a CIDR or ADDR/NETMASK.
  PROTO is tcp, udp, icmp, ipv6-icmp, esp, ah, gre, igmp, vrrp or ipv6.
  limit refuses a source's 6th new connection within 30 s (rate N/Ts to change).

moat acts on the network namespace it runs in: 'ip netns exec NS moat ...'
manages NS.

Exit codes:
  0  done
  1  an error (the message says what; a refused rule or policy changes
     nothing); 'moat audit': a socket is exposed that no rule allows
  2  'moat audit' could not judge, or moat's rules were changed by hand;
     'moat lab': what the packets did differs from the policy
  3  refused: the change would cut a live SSH session (--force overrides)
  4  a change applied with --confirm was not confirmed in time: rolled back`

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "moat",
		Short:         "Server-hardening firewall: one ufw-style policy for nftables or iptables",
		Long:          rootLong,
		Version:       readBuildInfo().Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			// Every command but an edit gets the processors main's
			// gctune.StartSerial took (an edit, when its policy is large).
			if cmd.Annotations[serialAnnotation] == "" {
				gctune.Parallel()
			}
			level := slog.LevelWarn
			if a.verbose {
				level = slog.LevelDebug
			}
			a.log = slog.New(slog.NewTextHandler(a.errOut, &slog.HandlerOptions{Level: level}))
			if cmd.Flags().Changed("confirm") && a.confirm <= 0 {
				// 0 or less used to apply at once with nothing armed.
				return fmt.Errorf("--confirm %s: want a positive duration such as 60s (leave --confirm out to apply without a rollback)", a.confirm)
			}
			if err := a.checkJSON(cmd, args); err != nil {
				return err
			}
			if a.config == "" {
				return errors.New("--config is empty: expected the policy file's path (default " + policy.DefaultPath + ")")
			}
			return a.needRoot(cmd)
		},
	}
	root.SetVersionTemplate(readBuildInfo().String())
	def := os.Getenv("MOAT_CONFIG")
	if def == "" {
		def = policy.DefaultPath
	}
	f := root.PersistentFlags()
	f.StringVarP(&a.config, "config", "c", def, "policy file (env MOAT_CONFIG)")
	f.StringVar(&a.backend, "backend", "", "backend: auto, nftables or iptables (default: the policy's 'backend', else auto)")
	f.BoolVar(&a.dryRun, "dry-run", false, "show what would change; change nothing")
	f.BoolVar(&a.json, "json", false, "print JSON for scripts (status, explain, audit, check, bans, blocklist, log, version, app, guard check; a rule with --dry-run)")
	f.BoolVarP(&a.verbose, "verbose", "v", false, "log what moat does")
	f.BoolVarP(&a.force, "force", "f", false, "apply even if it cuts an SSH session; do not ask")
	stateDef := os.Getenv("MOAT_STATE_DIR")
	if stateDef == "" {
		stateDef = safeapply.DefaultStateDir
	}
	f.StringVar(&a.stateDir, "state-dir", stateDef, "where moat keeps its state: saved ruleset, pending confirmation (env MOAT_STATE_DIR)")
	sshdDef := os.Getenv("MOAT_SSHD_CONFIG")
	if sshdDef == "" {
		sshdDef = safeapply.DefaultSSHDConfig
	}
	f.StringVar(&a.sshdConfig, "sshd-config", sshdDef, "sshd's configuration, for the SSH ports of 'restore' failing closed and of 'init' (env MOAT_SSHD_CONFIG)")
	f.DurationVar(&a.confirm, "confirm", 0, "apply, then roll back after this long (e.g. 60s) unless 'moat confirm' is run")
	f.BoolVar(&a.noWait, "no-wait", false, "with --confirm: return at once instead of waiting for the confirmation")
	root.AddGroup(&cobra.Group{ID: "rules", Title: "Rules:"}, &cobra.Group{ID: "state", Title: "Firewall:"},
		&cobra.Group{ID: "guard", Title: "Brute-force guard:"}, &cobra.Group{ID: "inspect", Title: "Inspect:"})
	root.AddCommand(serialEdits(a.ruleCommands()...)...)
	root.AddCommand(serialEdits(a.defaultCommand(), a.insertCommand(), a.prependCommand(), a.deleteCommand())...)
	root.AddCommand(a.enableCommand(), a.disableCommand(), a.reloadCommand(), a.resetCommand())
	root.AddCommand(a.statusCommand(), a.showCommand(), a.explainCommand(), a.checkCommand(), a.auditCommand())
	root.AddCommand(a.labCommand())
	root.AddCommand(a.initCommand(), a.confirmCommand(), a.rollbackCommand(), a.restoreCommand(), a.watchdogCommand())
	root.AddCommand(a.guardCommand(), a.banCommand(), a.unbanCommand(), a.bansCommand())
	root.AddCommand(a.blocklistCommand())
	root.AddCommand(a.versionCommand(), a.appCommand(), a.importCommand(), a.logCommand())
	root.AddCommand(serialEdits(a.loggingCommand())...)
	a.addCompletions(root)
	teachArgs(root)
	return root
}

// services returns the system's service names, or nil if it has none (then
// a rule naming a service fails with a clear message).
func (a *app) services() policy.Services {
	svc, err := policy.SystemServices()
	if err != nil {
		a.log.Debug("no service names", "err", err)
		return nil
	}
	return svc
}

// loadDocument reads the policy file.
func (a *app) loadDocument() (*policy.Document, error) {
	d, err := policy.ReadDocument(a.config)
	if d != nil {
		d.Apps = a.apps()
	}
	return d, err
}

// loadPolicy reads and validates the policy file.
func (a *app) loadPolicy() (*policy.Policy, error) {
	d, err := a.loadDocument()
	if err != nil {
		return nil, err
	}
	return d.Policy(a.services())
}

// backendFor picks the backend: the flag, else the policy, else auto.
func (a *app) backendFor(p *policy.Policy) (backend.Backend, error) {
	name := policy.Backend(a.backend)
	if name == "" && p != nil {
		name = p.Backend
	}
	return backend.ForName(name)
}

// policyAndBackend loads the policy and picks its backend.
func (a *app) policyAndBackend() (*policy.Policy, backend.Backend, error) {
	p, err := a.loadPolicy()
	if err != nil {
		return nil, nil, err
	}
	b, err := a.backendFor(p)
	return p, b, err
}

// activeBackend returns the backend whose moat rules are loaded, if any.
// When no backend can even be asked (no root, no tools), that is an error,
// not "inactive".
func (a *app) activeBackend(ctx context.Context) (backend.Backend, error) {
	var unusable []error
	for _, b := range backend.All() {
		if err := b.Available(); err != nil {
			unusable = append(unusable, err)
			continue
		}
		ok, err := b.Active(ctx)
		if err != nil {
			return nil, err
		}
		if ok {
			if ib, isIpt := b.(*ipt.Backend); isIpt {
				// The key of its ipset digests, which the fingerprint
				// recorded by the last change was taken with.
				ib.KeyDir = a.stateDir
			}
			return b, nil
		}
	}
	if len(unusable) == len(backend.All()) {
		if os.Geteuid() != 0 {
			unusable = append([]error{errors.New("moat needs root to read or change the firewall")}, unusable...)
		}
		return nil, errors.Join(unusable...)
	}
	return nil, nil
}

// printJSON prints v as indented JSON, its strings escaped for a
// terminal (termtext.AppendJSON).
func (a *app) printJSON(v any) error {
	enc := termtext.NewJSONEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (a *app) printf(format string, args ...any) {
	fmt.Fprintf(a.out, format, args...)
}

// serialAnnotation marks the commands that edit the policy (a.edit): they
// stay on the one processor main's gctune.StartSerial left them, unless
// the policy is large (a.parallelIfLarge).
const serialAnnotation = "moat-serial-edit"

func serialEdits(cmds ...*cobra.Command) []*cobra.Command {
	for _, c := range cmds {
		if c.Annotations == nil {
			c.Annotations = map[string]string{}
		}
		c.Annotations[serialAnnotation] = "yes"
	}
	return cmds
}
