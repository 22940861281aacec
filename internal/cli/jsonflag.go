package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// jsonCommands are the commands that print JSON with --json (by their
// path after "moat"). The rule commands print the rule they would add,
// with --dry-run.
var jsonCommands = map[string]bool{
	"status": true, "explain": true, "audit": true, "bans": true, "blocklist list": true,
	"blocklist update": true, "log": true, "version": true, "app list": true, "app info": true,
	"guard check": true, // JSON always
	"check":       true,
}

// ruleCommands print the normalized rule as JSON with --dry-run --json.
var ruleCommands = map[string]bool{
	"allow": true, "deny": true, "reject": true, "limit": true, "route": true, "insert": true, "prepend": true,
}

// checkJSON refuses --json on a command that has no JSON output, before
// anything is read or changed: a script that asked for JSON would get
// text it cannot parse, and exit code 0. args are the command's words.
func (a *app) checkJSON(cmd *cobra.Command, args []string) error {
	if !a.json {
		return nil
	}
	path := strings.Fields(cmd.CommandPath())
	name := strings.Join(path[1:], " ")
	if name == "route" && len(args) > 0 && args[0] == "delete" {
		// ufw's 'route delete', a word of 'route': a delete, which
		// prints no rule ('--dry-run --json route delete 2' printed
		// text and exit 0).
		name = "route delete"
	}
	switch {
	case jsonCommands[name]:
		return nil
	case ruleCommands[name] && a.dryRun:
		return nil
	case ruleCommands[name]:
		return fmt.Errorf("--json: 'moat %s' prints its rule as JSON only with --dry-run ('moat --dry-run --json %s ...'); it changes the policy without it", name, name)
	case name == "" || name == "help" || name == "watchdog" || strings.HasPrefix(name, "completion") || strings.HasPrefix(name, "__complete"):
		return nil
	}
	return fmt.Errorf("--json: 'moat %s' has no JSON output (commands with --json: %s)", name, jsonList())
}

// jsonList names the commands with JSON output, for checkJSON's message.
func jsonList() string {
	return "status, explain, audit, check, bans, blocklist list, blocklist update, log, version, app list, app info, guard check, and a rule command with --dry-run"
}
