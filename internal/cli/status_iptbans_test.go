package cli

import (
	"context"
	"fmt"
	"testing"

	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/ruleset"
)

// On iptables, status counts the kernel's bans too (a port scan trap's
// ban the history lacks): it said "0 active bans" with one in moat's ban
// ipset. Without the ipsets the history's count stands.
func TestKernelBansAtLeastIptables(t *testing.T) {
	v4 := ipt.IPSetName(ruleset.BanSet4)
	b := &ipt.Backend{Run: func(_ context.Context, _ []byte, name string, a ...string) ([]byte, error) {
		if name != "ipset" || len(a) != 2 || a[0] != "save" {
			return nil, fmt.Errorf("ran %s %v", name, a)
		}
		if a[1] == v4 {
			return []byte("add " + v4 + " 203.0.113.7 timeout 3500 comment \"portscan\"\n"), nil
		}
		return nil, nil
	}}
	if got := kernelBansAtLeast(context.Background(), b, 0); got != 1 {
		t.Errorf("one ban in the kernel, none recorded: %d, want 1", got)
	}
	none := &ipt.Backend{Run: func(context.Context, []byte, string, ...string) ([]byte, error) {
		return nil, fmt.Errorf("ipset v7.17: The set with the given name does not exist")
	}}
	if got := kernelBansAtLeast(context.Background(), none, 2); got != 2 {
		t.Errorf("no ban ipsets, 2 recorded: %d, want 2", got)
	}
}
