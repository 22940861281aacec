// Command moat is a server-hardening firewall for Linux.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/moat-fw/moat/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
