package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/importer"
	"github.com/moat-fw/moat/internal/policy"
)

func (a *app) importCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use: "import ufw|fail2ban",
		Example: `  moat import ufw                  # print the policy for ufw's rules
  moat import ufw --write          # write it to the policy file
  moat import fail2ban --write     # add the sshd jail's 'guard sshd' settings`,
		Short: "Turn ufw's rules or fail2ban's sshd jail into moat policy",
		Long: `Read another tool's state and print the equivalent moat policy, or with
--write put it in the policy file. Nothing is applied: review the result,
then 'moat enable --confirm 60s'. What cannot be carried over is named,
with the reason, on stderr and as '# NOTE:' lines.`,
		GroupID: "rules",
	}
	var from, defaults string
	var write bool
	ufw := &cobra.Command{
		Use:   "ufw [--from DIR] [--write]",
		Short: "Import ufw's rules, default policies and settings",
		Long: `Read ufw's own state: the '### tuple ###' lines of user.rules and
user6.rules, the default policies of /etc/default/ufw, and ufw.conf (its
LOGLEVEL becomes 'logging LEVEL'). The IPv4 and IPv6 twins of a ufw rule
become one moat rule; comments and order are kept; rules naming
application profiles keep the name (one rule for all the profile's
protocols). --write
replaces the policy file (a policy with rules needs --force; the old file
is kept as FILE.TIME.bak).`,
		Example: `  moat import ufw                       # print the policy
  moat import ufw --write               # write /etc/moat/moat.conf
  moat import ufw --from /srv/old/etc/ufw --defaults /srv/old/etc/default/ufw`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			from = filepath.Clean(from)
			defs := defaults
			if defs == "" {
				defs = "/etc/default/ufw"
				if from != "/etc/ufw" {
					// A copy of another machine's /etc: DIR/../default/ufw.
					defs = filepath.Join(filepath.Dir(from), "default", "ufw")
				}
			}
			res, err := importer.ImportUFW(importer.UFWSource{Dir: from, Defaults: defs})
			if err != nil {
				return err
			}
			return a.finishImport(cmd, res, "ufw ("+from+")", write, true)
		},
	}
	ufw.Flags().StringVar(&from, "from", "/etc/ufw", "ufw's configuration folder")
	ufw.Flags().StringVar(&defaults, "defaults", "", "ufw's defaults file (default /etc/default/ufw, or DIR/../default/ufw with --from)")
	ufw.Flags().BoolVar(&write, "write", false, "write the policy file instead of printing")
	var f2bFrom string
	var f2bWrite bool
	f2b := &cobra.Command{
		Use:   "fail2ban [--from DIR] [--write]",
		Short: "Import fail2ban's sshd jail as 'guard sshd' and 'allowlist' lines",
		Long: `Read fail2ban's jail.conf, jail.d/*.conf, jail.local and jail.d/*.local (in
fail2ban's order) and map the sshd jail (enabled, maxretry, findtime,
bantime, bantime.increment, bantime.factor, bantime.maxtime, ignoreip) to
'guard sshd' and 'allowlist' lines. --write appends them to the policy file.`,
		Example: `  moat import fail2ban
  moat import fail2ban --write`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := importer.ImportFail2ban(f2bFrom)
			if err != nil {
				return err
			}
			return a.finishImport(cmd, res, "fail2ban ("+f2bFrom+")", f2bWrite, false)
		},
	}
	f2b.Flags().StringVar(&f2bFrom, "from", "/etc/fail2ban", "fail2ban's configuration folder")
	f2b.Flags().BoolVar(&f2bWrite, "write", false, "append to the policy file instead of printing")
	cmd.AddCommand(ufw, f2b)
	return cmd
}

// finishImport checks the imported policy, then prints or writes it.
func (a *app) finishImport(cmd *cobra.Command, res *importer.Result, source string, write, replace bool) error {
	// A line moat refuses (a non-contiguous netmask, an unknown profile)
	// is named, not written.
	apps, svc := a.apps(), a.services()
	kept := res.Lines[:0:0]
	for _, l := range res.Lines {
		if _, _, err := policy.ParseLineApps(l, policy.Pos{}, svc, apps); err != nil {
			var pe *policy.Error
			if errors.As(err, &pe) {
				err = errors.New(pe.Msg)
			}
			res.Notes = append(res.Notes, fmt.Sprintf("not imported: %s: %v", l, err))
			continue
		}
		kept = append(kept, l)
	}
	res.Lines = kept
	text := res.Text(source)
	if write && !a.dryRun {
		// Read and write the policy under moat's lock, as every edit.
		unlock, err := a.engine().Lock(cmd.Context(), a.commandLine(cmd))
		if err != nil {
			return err
		}
		defer unlock()
	}
	doc := policy.NewDocument(a.config, []byte(text))
	if !replace {
		old, err := a.loadDocument()
		if err != nil {
			return err
		}
		doc = policy.NewDocument(a.config, append(old.Bytes(), []byte(text)...))
	}
	doc.Apps = apps
	if _, err := doc.Policy(svc); err != nil {
		return fmt.Errorf("the imported policy is not valid (please report this):\n%w", err)
	}
	for _, n := range res.Notes {
		fmt.Fprintf(a.errOut, "moat: note: %s\n", n)
	}
	if !write || a.dryRun {
		a.printf("%s", text)
		return nil
	}
	if replace {
		old, err := a.loadDocument()
		if err != nil {
			return err
		}
		if old.RuleCount() > 0 && !a.force {
			return fmt.Errorf("%s already has %d rules: use --force to replace it (it is kept as a .bak file)", a.config, old.RuleCount())
		}
		if len(old.Lines) > 0 {
			bak := &policy.Document{Name: a.config + "." + time.Now().UTC().Format("20060102T150405Z") + ".bak", Lines: old.Lines}
			if err := bak.Write(); err != nil {
				return err
			}
			a.printf("Kept the old policy as %s\n", bak.Name)
		}
	}
	if err := os.MkdirAll(filepath.Dir(a.config), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("write %s: %w", a.config, err)
	}
	if err := doc.Write(); err != nil {
		return err
	}
	a.printf("Wrote %d lines from %s to %s. Nothing is applied: review it, then 'moat enable --confirm 60s'.\n",
		len(res.Lines), strings.SplitN(source, " ", 2)[0], a.config)
	return nil
}
