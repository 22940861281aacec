package cli

import (
	"os"

	"github.com/spf13/cobra"
)

// DocCommand is moat's command tree for generated documentation (the man
// pages of internal/manpage, which live outside this package so that
// their renderer is not part of the moat binary: its package
// initialisation ran in every command): what 'moat --help' says, with
// cobra's 'help' and the hidden commands kept out of the SEE ALSO lists.
func DocCommand() *cobra.Command {
	a := &app{out: os.Stdout, errOut: os.Stderr}
	root := a.rootCommand()
	root.DisableAutoGenTag = true
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "help" {
			c.Hidden = true
		}
	}
	return root
}

// BuildVersion is the version 'moat version' prints.
func BuildVersion() string { return readBuildInfo().Version }
