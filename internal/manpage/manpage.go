// Package manpage writes moat's man pages from its command tree. It is
// used by the package build (packaging/gendocs), never by the moat
// binary.
package manpage

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra/doc"

	"github.com/moat-fw/moat/internal/cli"
)

// Write writes moat(8) and one page per command (moat-allow(8), ...) into
// dir, generated from the command tree, so the pages say exactly what
// 'moat --help' says. date stamps the pages (the package build passes the
// commit's date, so builds are reproducible).
func Write(dir string, date time.Time) error {
	root := cli.DocCommand()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	hdr := &doc.GenManHeader{
		Title:   "MOAT",
		Section: "8",
		Date:    &date,
		Source:  "moat " + cli.BuildVersion(),
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
