package nft

import (
	"fmt"

	gnft "github.com/google/nftables"
)

// kernelAvailable asks the kernel over netlink whether nf_tables answers
// us (module, permission), without starting a process.
func kernelAvailable() error {
	c, err := gnft.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if _, err := c.ListTablesOfFamily(gnft.TableFamilyINet); err != nil {
		return fmt.Errorf("nftables: the kernel refuses to list tables: %w", err)
	}
	return nil
}
