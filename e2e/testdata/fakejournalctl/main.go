// Command fakejournalctl stands in for journalctl in tests: it records its
// arguments, plays a recorded `journalctl -o json` stream (after the entry
// named by --after-cursor, if any) and then, with --follow, waits to be
// killed, as journalctl does.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

func main() {
	if f := os.Getenv("FAKE_JOURNAL_ARGS"); f != "" {
		if out, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(out, strings.Join(os.Args[1:], " "))
			out.Close()
		}
	}
	after, follow := "", false
	for _, a := range os.Args[1:] {
		if c, ok := strings.CutPrefix(a, "--after-cursor="); ok {
			after = c
		}
		if a == "--follow" || a == "-f" {
			follow = true
		}
	}
	in, err := os.Open(os.Getenv("FAKE_JOURNAL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Lines of any length (journalctl has no bound): a Scanner would stop
	// at 64 KiB.
	r := bufio.NewReader(in)
	playing := after == ""
	for {
		line, err := r.ReadBytes('\n')
		var e struct {
			Cursor string `json:"__CURSOR"`
		}
		if len(line) > 0 && json.Unmarshal(line, &e) == nil {
			if playing {
				os.Stdout.Write(line)
			}
			if e.Cursor == after {
				playing = true
			}
		}
		if err != nil {
			break
		}
	}
	if follow {
		for {
			time.Sleep(time.Hour)
		}
	}
}
