package cli

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/termtext"
)

// Bounds of what the command line hands the rule and packet parsers: no
// word of a rule is near maxArgBytes (a comment is at most 100 bytes, a
// profile name 64, an IPv6 CIDR 43) and no rule has maxArgWords words.
const (
	maxArgBytes = 1024
	maxArgWords = 256
	// maxEcho bounds the command line an error message repeats.
	maxEcho = 200
)

// checkArgs refuses command-line words no rule or packet can have: too
// many, too long, or not UTF-8. Each error names the argument (counted as
// the parser counts, from 1) and quotes at most maxEcho bytes of it, so a
// 100 kB argument does not come back as a 200 kB message.
func checkArgs(args []string) error {
	if len(args) > maxArgWords {
		return fmt.Errorf("%d arguments: a rule has far fewer (at most %d)", len(args), maxArgWords)
	}
	for i, s := range args {
		if !utf8.ValidString(s) {
			return fmt.Errorf("argument %d (%q) is not valid UTF-8", i+1, echo(s))
		}
		if len(s) > maxArgBytes {
			return fmt.Errorf("argument %d ('%s') is %d bytes long: no word of a rule is longer than %d", i+1, echo(s), len(s), maxArgBytes)
		}
	}
	return nil
}

// echo is s cut to maxEcho bytes (at a character boundary), with "..."
// when cut.
func echo(s string) string {
	if c, cut := termtext.Cut(s, maxEcho); cut {
		return c + "..."
	}
	return s
}

// echoArgs is the words joined as typed, cut by echo.
func echoArgs(args []string) string { return echo(strings.Join(args, " ")) }

// teachError is an argument error that already says what is expected.
type teachError struct{ msg string }

func (e *teachError) Error() string { return e.msg }

// teachArgs wraps the argument check of every command so that a wrong
// count says what the command takes and shows an example, not cobra's
// bare "accepts 1 arg(s), received 0".
func teachArgs(c *cobra.Command) {
	if !c.Runnable() && c.HasSubCommands() && c.HasParent() {
		// A group ('moat app', 'moat blocklist'): given a word that is
		// none of its commands, cobra printed the help and exit 0.
		c.Args = cobra.ArbitraryArgs
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			what := cmd.CommandPath() + " " + args[0]
			if hint, ok := ufwOnly[strings.TrimPrefix(what, "moat ")]; ok {
				return fmt.Errorf("'%s' (ufw's) is not needed in moat: %s", what, hint)
			}
			var names []string
			for _, sub := range cmd.Commands() {
				if sub.IsAvailableCommand() {
					names = append(names, sub.Name())
				}
			}
			return fmt.Errorf("unknown command '%s' for '%s': expected %s ('%s --help')", echo(args[0]), cmd.CommandPath(), strings.Join(names, ", "), cmd.CommandPath())
		}
	}
	if orig := c.Args; orig != nil {
		c.Args = func(cmd *cobra.Command, args []string) error {
			err := orig(cmd, args)
			var te *teachError
			if err == nil || errors.As(err, &te) {
				return err
			}
			use := strings.TrimSuffix(cmd.UseLine(), " [flags]")
			msg := fmt.Sprintf("'%s': %v: usage '%s'", cmd.CommandPath(), err, use)
			if ex := firstExample(cmd); ex != "" {
				msg += fmt.Sprintf(", e.g. '%s'", ex)
			}
			return &teachError{msg + fmt.Sprintf(" ('%s --help' says more)", cmd.CommandPath())}
		}
	}
	for _, sub := range c.Commands() {
		teachArgs(sub)
	}
}

// ufwOnly are ufw's commands that moat has no need of, and why.
var ufwOnly = map[string]string{
	"app update":  "moat reads the profiles each time it applies; after a profile changes, 'moat reload' applies its new ports",
	"app default": "moat adds no rule when a profile is installed (ufw's DEFAULT_APPLICATION_POLICY); add one with 'moat allow PROFILE'",
}

// firstExample is the first example line of cmd, without its comment.
func firstExample(cmd *cobra.Command) string {
	for _, l := range strings.Split(cmd.Example, "\n") {
		if i := strings.Index(l, "#"); i >= 0 {
			l = l[:i]
		}
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "moat ") || strings.HasPrefix(l, "sudo moat ") {
			return strings.TrimPrefix(l, "sudo ")
		}
	}
	return ""
}
