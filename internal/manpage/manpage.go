// Package manpage writes moat's man pages from its command tree. It is
// used by the package build (packaging/gendocs), never by the moat
// binary.
package manpage

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/moat-fw/moat/internal/cli"
)

// Write writes moat(8) and one page per command (moat-allow(8), ...) into
// dir, generated from the command tree, so the pages say exactly what
// 'moat --help' says. date stamps the pages (the package build passes the
// commit's date, so builds are reproducible).
func Write(dir string, date time.Time) error {
	root := cli.DocCommand()
	preformatTree(root)
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
	return seeAlsoConf(filepath.Join(dir, "moat.8"))
}

// seeAlsoConf adds moat.conf(5) and ufw(8) to moat(8)'s SEE ALSO, which
// the generator fills with the command pages only.
func seeAlsoConf(page string) error {
	b, err := os.ReadFile(page)
	if err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	s := string(b)
	i := strings.Index(s, "\n.SH SEE ALSO\n")
	if i < 0 {
		return fmt.Errorf("man pages: %s has no SEE ALSO", page)
	}
	j := i + len("\n.SH SEE ALSO\n")
	end := strings.IndexByte(s[j:], '\n')
	if end < 0 {
		end = len(s) - j
	}
	s = s[:j+end] + ", \\fBmoat.conf(5)\\fP, \\fBufw(8)\\fP" + s[j+end:]
	if err := os.WriteFile(page, []byte(s), 0o644); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	return nil
}

// preformatTree keeps the layout of the indented blocks of every
// command's long help (examples, syntax, tables): the generator reads the
// text as markdown, which fills an indented line into its paragraph.
func preformatTree(c *cobra.Command) {
	c.Long = preformat(c.Long)
	for _, sub := range c.Commands() {
		preformatTree(sub)
	}
}

// preformat fences each run of indented lines as a code block (shown
// as written, in no-fill mode), with a blank line before and after.
func preformat(long string) string {
	lines := strings.Split(long, "\n")
	var out []string
	in := false
	for _, l := range lines {
		indented := strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")
		switch {
		case indented && strings.TrimSpace(l) != "" && !in:
			if len(out) > 0 && out[len(out)-1] != "" {
				out = append(out, "")
			}
			out = append(out, "```")
			in = true
		case in && !indented:
			out = append(out, "```")
			if l != "" {
				out = append(out, "")
			}
			in = false
		}
		out = append(out, l)
	}
	if in {
		out = append(out, "```")
	}
	return strings.Join(out, "\n")
}
