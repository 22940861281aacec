package nft

import (
	"fmt"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// The port scan trap, all in the kernel: a new connection that reached the
// end of the input chain from a source outside the protected set records
// (source, protocol, port) in the trap's set; only a pair not seen within
// the window goes on to the source's token bucket (one token per distinct
// port), and a source over it is added to the ban set with the ban's
// timeout. The packet itself goes on to the chain's default.

// scanRateSet is the per-source meter of a trap's set.
func scanRateSet(portSet string) string { return portSet + "_rate" }

// trapText renders the trap rule of one family.
func trapText(r *ruleset.Rule) string {
	t := r.Trap
	ip := "ip"
	if t.Family == policy.FamilyV6 {
		ip = "ip6"
	}
	n, unit := ruleset.RateUnit(t.Rate)
	// fib saddr type != local: the host's own addresses (any interface's,
	// loopback) are never trapped, looked up when the packet comes.
	return fmt.Sprintf("ct state new meta l4proto { tcp, udp } fib saddr type != local %[1]s saddr != @%[2]s %[1]s saddr != @%[10]s "+
		"%[1]s saddr . meta l4proto . th dport != @%[3]s add @%[3]s { %[1]s saddr . meta l4proto . th dport } "+
		"update @%[4]s { %[1]s saddr limit rate over %[5]d/%[6]s burst %[7]d packets } "+
		"add @%[8]s { %[1]s saddr timeout %[9]ds } counter",
		ip, t.ProtectSet, t.PortSet, scanRateSet(t.PortSet), n, unit, t.Rate.Burst, t.BanSet, int64(t.BanTime/time.Second), t.LoginSet)
}

// trapSets are the nftables sets of a trap's port set: the set of
// (source, protocol, port) entries and the per-source meter.
func trapSets(s *ruleset.Set) []*knftables.Set {
	addr := "ipv4_addr"
	if s.Family == policy.FamilyV6 {
		addr = "ipv6_addr"
	}
	return []*knftables.Set{
		{Name: s.Name, Type: addr + " . inet_proto . inet_service",
			Flags:   []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
			Timeout: knftables.PtrTo(s.ScanWindow), Size: knftables.PtrTo[uint64](65535),
			Comment: knftables.PtrTo("port scan trap: ports each source tried")},
		{Name: scanRateSet(s.Name), Type: addr,
			Flags:   []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
			Timeout: knftables.PtrTo(2 * s.ScanWindow), Size: knftables.PtrTo[uint64](65535),
			Comment: knftables.PtrTo("port scan trap: distinct ports per source")},
	}
}

// MaxBans bounds each family's ban set.
const MaxBans = 1 << 20
