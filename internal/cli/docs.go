package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// ManPages writes moat(8) and one page per command (moat-allow(8), ...)
// into dir, generated from the command tree, so the pages say exactly what
// 'moat --help' says. date stamps the pages (the package build passes the
// commit's date, so builds are reproducible).
func ManPages(dir string, date time.Time) error {
	a := &app{out: os.Stdout, errOut: os.Stderr}
	root := a.rootCommand()
	root.DisableAutoGenTag = true
	hideHelpCommands(root)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	hdr := &doc.GenManHeader{
		Title:   "MOAT",
		Section: "8",
		Date:    &date,
		Source:  "moat " + readBuildInfo().Version,
		Manual:  "System Administration",
	}
	if err := doc.GenManTreeFromOpts(root, doc.GenManTreeOptions{Header: hdr, Path: dir, CommandSeparator: "-"}); err != nil {
		return fmt.Errorf("man pages in %s: %w", dir, err)
	}
	// The pages of internal commands are not installed.
	for _, name := range []string{"moat-watchdog.8", "moat-help.8"} {
		_ = os.Remove(filepath.Join(dir, name))
	}
	return nil
}

// hideHelpCommands keeps cobra's 'help' and the hidden commands out of the
// pages' SEE ALSO lists.
func hideHelpCommands(root *cobra.Command) {
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "help" {
			c.Hidden = true
		}
	}
}
