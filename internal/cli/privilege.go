package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// rootCommands read or change the kernel's firewall (or moat's state
// beside it) and cannot do anything useful without root. Run as another
// user, they fail at once with one line, instead of the raw errors of nft,
// iptables-save and ipset one after another. show, check, explain and
// --dry-run work without root.
var rootCommands = map[string]bool{
	"allow": true, "deny": true, "reject": true, "limit": true, "route": true,
	"insert": true, "prepend": true, "delete": true, "default": true,
	"enable": true, "reload": true, "disable": true, "reset": true,
	"status": true, "confirm": true, "rollback": true, "restore": true, "watchdog": true,
	"guard": true, "ban": true, "unban": true, "bans": true, "lab": true,
	"logging": true, "blocklist update": true,
}

// needRoot returns the error for a command that needs root run without it.
func (a *app) needRoot(cmd *cobra.Command) error {
	if os.Geteuid() == 0 || a.dryRun || a.engineHook != nil {
		return nil
	}
	path := strings.Fields(cmd.CommandPath()) // "moat guard check"
	name := strings.Join(path[1:], " ")
	if !rootCommands[name] {
		return nil
	}
	return fmt.Errorf("'moat %s' needs root: it reads or changes the firewall (run it with sudo)", name)
}
