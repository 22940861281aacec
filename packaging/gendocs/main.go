// Command gendocs writes moat's generated man pages (moat(8) and one page
// per command) for the package build: go run ./packaging/gendocs DIR.
// SOURCE_DATE_EPOCH, if set, dates the pages (reproducible builds).
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/moat-fw/moat/internal/manpage"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gendocs DIR")
		os.Exit(2)
	}
	date := time.Now().UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "gendocs: SOURCE_DATE_EPOCH %q: %v\n", s, err)
			os.Exit(2)
		}
		date = time.Unix(sec, 0).UTC()
	}
	if err := manpage.Write(os.Args[1], date); err != nil {
		fmt.Fprintf(os.Stderr, "gendocs: %v\n", err)
		os.Exit(1)
	}
}
