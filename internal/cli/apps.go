package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/policy"
)

// appDirs are where application profiles are read: MOAT_APPS_DIRS
// (colon-separated) or /etc/ufw/applications.d and /etc/moat/apps.d.
func appDirs() []string {
	if env := os.Getenv("MOAT_APPS_DIRS"); env != "" {
		return filepath.SplitList(env)
	}
	return policy.AppDirs
}

// apps reads the application profiles; broken files are warned about
// (with --verbose) and skipped. What was read less than a second ago from
// the same directories is reused: a command reads the policy and builds
// the engine, each needing the profiles, and no profile that matters
// changes in between; the guard, which reloads the policy hours later,
// reads them anew.
func (a *app) apps() policy.Apps {
	dirs := strings.Join(appDirs(), "\x00")
	if a.appsRead.when.IsZero() || a.appsRead.dirs != dirs || time.Since(a.appsRead.when) >= time.Second {
		apps, warns := policy.LoadApps(appDirs())
		for _, w := range warns {
			if a.log != nil {
				a.log.Warn(w)
			}
		}
		a.appsRead.apps, a.appsRead.dirs, a.appsRead.when = apps, dirs, time.Now()
	}
	return a.appsRead.apps
}

// appsCache is what apps read last.
type appsCache struct {
	apps policy.Apps
	dirs string
	when time.Time
}

func (a *app) appCompletions() []string {
	apps := a.apps()
	var out []string
	for _, n := range apps.Names() {
		desc := apps[n].PortsText
		if t := apps[n].Title; t != "" {
			desc = t + " (" + desc + ")"
		}
		out = append(out, n+"\t"+strings.ReplaceAll(desc, "\t", " "))
	}
	return out
}

func (a *app) appCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "app list | app info NAME|all",
		Short: "Application profiles: named sets of ports (ufw's, and moat's own)",
		Long: `Application profiles name the ports of a service, in ufw's INI format:

  [Nginx Full]
  title=Web Server (Nginx, HTTP + HTTPS)
  description=Small, but very powerful and efficient web server
  ports=80,443/tcp

moat reads /etc/ufw/applications.d (the profiles Debian packages ship) and
/etc/moat/apps.d (yours; a profile there replaces one of the same name).
A rule names a profile as a port: 'moat allow OpenSSH', 'moat allow
"Nginx Full"', 'moat allow from 198.51.100.0/24 to any app Samba'. The
policy keeps the name: after a profile changes, 'moat reload' applies its
new ports. A profile with ports of several protocols (137,138/udp|139,445/tcp)
becomes one kernel rule per protocol.`,
		Example: `  moat app list
  moat app info OpenSSH
  moat allow 'Nginx Full'`,
		GroupID: "rules",
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the application profiles",
		Example: `  moat app list
  moat app list --json`,
		Long: `List the application profiles (ufw's, and yours in /etc/moat/apps.d).
--json prints an array of {name, title, ports, file}.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			apps := a.apps()
			if a.json {
				type row struct {
					Name  string `json:"name"`
					Title string `json:"title"`
					Ports string `json:"ports"`
					File  string `json:"file"`
				}
				rows := []row{}
				for _, n := range apps.Names() {
					p := apps[n]
					rows = append(rows, row{Name: n, Title: p.Title, Ports: p.PortsText, File: p.File})
				}
				return a.printJSON(rows)
			}
			a.printf("Available applications:\n")
			for _, n := range apps.Names() {
				a.printf("  %s\n", n)
			}
			if len(apps) == 0 {
				a.printf("  (none in %s)\n", strings.Join(appDirs(), ", "))
			}
			return nil
		},
	}
	info := &cobra.Command{
		Use:   "info NAME|all",
		Short: "Show a profile: title, description, ports",
		Long: `Show a profile (or every profile: all): title, description, the file it
comes from and its ports. --json prints an array of {name, title,
description, ports (one "PORTS/PROTO" a protocol), file}.`,
		Example: `  moat app info OpenSSH
  moat app info 'Nginx Full' --json`,
		Args: cobra.ExactArgs(1),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, noFiles
			}
			return filterPrefix(append(a.appCompletions(), "all\tevery profile"), toComplete), noFiles
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			apps := a.apps()
			names := []string{args[0]}
			if args[0] == "all" {
				names = apps.Names()
			}
			type infoJSON struct {
				Name        string   `json:"name"`
				Title       string   `json:"title"`
				Description string   `json:"description"`
				Ports       []string `json:"ports"`
				File        string   `json:"file"`
			}
			infos := []infoJSON{}
			for _, n := range names {
				p, ok := apps.Lookup(n)
				if !ok {
					msg := fmt.Sprintf("unknown application profile '%s'", n)
					if close := apps.Close(n); len(close) > 0 {
						msg += ": did you mean '" + strings.Join(close, "', '") + "'?"
					} else {
						msg += ": 'moat app list' lists the profiles"
					}
					return fmt.Errorf("%s", msg)
				}
				var ports []string
				for _, part := range p.Parts {
					s := part.Ports.String()
					if part.Proto != "any" {
						s += "/" + part.Proto
					}
					ports = append(ports, s)
				}
				infos = append(infos, infoJSON{Name: p.Name, Title: p.Title, Description: p.Description, Ports: ports, File: p.File})
			}
			if a.json {
				return a.printJSON(infos)
			}
			for i, p := range infos {
				if i > 0 {
					a.printf("\n--\n\n")
				}
				a.printf("Profile: %s\nTitle: %s\nDescription: %s\nFile: %s\n\n", p.Name, p.Title, p.Description, p.File)
				if len(p.Ports) == 1 {
					a.printf("Port:\n")
				} else {
					a.printf("Ports:\n")
				}
				for _, s := range p.Ports {
					a.printf("  %s\n", s)
				}
			}
			return nil
		},
	}
	cmd.AddCommand(list, info)
	return cmd
}
