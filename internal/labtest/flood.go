package labtest

import (
	"fmt"
	"strings"
)

// NftFlood is an nft -f script of one commit that adds table inet flood,
// a chain c and rules rules in it: a flood of notifications that
// overruns a commit watch's small socket (with nft.HoldReaders).
func NftFlood(rules int) []byte {
	var flood strings.Builder
	flood.WriteString("add table inet flood\nadd chain inet flood c\n")
	for i := range rules {
		fmt.Fprintf(&flood, "add rule inet flood c tcp dport %d accept\n", i+1)
	}
	return []byte(flood.String())
}
