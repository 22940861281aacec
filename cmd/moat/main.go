// Command moat is a server-hardening firewall for Linux.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/moat-fw/moat/internal/cli"
	"github.com/moat-fw/moat/internal/gctune"
)

func main() {
	// A short command runs on one processor; cli gives the others back
	// to every command but an edit of a small policy.
	gctune.StartSerial()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
