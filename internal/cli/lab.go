package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/lab"
)

func (a *app) labCommand() *cobra.Command {
	return &cobra.Command{
		Use: "lab",
		Example: `  sudo moat lab
  sudo moat lab --backend iptables`,
		Short: "Prove the classic hardening policy with real packets between namespaces (root)",
		Long: `Build two network namespaces joined by a veth pair (client and server, with
IPv4 and IPv6 documentation addresses), start listeners in the server (TCP
22 and 80, UDP 53) and the client, apply the guide's policy in the server
('default deny incoming', 'allow 22/tcp'), and probe with real packets:
ping dropped, SSH open, HTTP and DNS dropped, the server's own requests to
the client answered. Prints expected against observed and 'moat status
verbose', exits non-zero on any mismatch, and removes its namespaces even
on Ctrl-C. Your own firewall is not touched. --backend picks the backend.`,
		GroupID: "inspect",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if os.Geteuid() != 0 {
				return errors.New("lab needs root (network namespaces)")
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("lab: find the moat binary: %w", err)
			}
			ok, err := lab.Demo(cmd.Context(), self, a.backend, a.out)
			if err != nil {
				return fmt.Errorf("lab: %w", err)
			}
			if !ok {
				return &exitError{code: 2, err: errors.New("lab: observations differ from the policy")}
			}
			a.printf("\nAll observations match the policy.\n")
			return nil
		},
	}
}
