package safeapply

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/ruleset"
)

// ForwardedSSH is an SSH connection this host routes (to a host behind
// it, perhaps through a port forward): the admin's way to that host.
type ForwardedSSH struct {
	Client netip.AddrPort `json:"client"`
	// Server is where the connection really goes (after any DNAT).
	Server netip.AddrPort `json:"server"`
}

// tcpEstablished is conntrack's TCP_CONNTRACK_ESTABLISHED.
const tcpEstablished = 3

// FindForwardedSSH lists the established TCP connections to port 22 that
// conntrack tracks in this namespace and that go to none of its
// addresses (after DNAT): SSH it routes.
func FindForwardedSSH() ([]ForwardedSSH, error) {
	local := map[netip.Addr]bool{}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			local[ip.Unmap()] = true
		}
	}
	var out []ForwardedSSH
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			return out, fmt.Errorf("read conntrack: %w", err)
		}
		for _, f := range flows {
			tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP)
			if f.Forward.Protocol != unix.IPPROTO_TCP || !ok || tcp.State != tcpEstablished || f.Reverse.SrcPort != 22 {
				continue
			}
			client, ok1 := netip.AddrFromSlice(f.Forward.SrcIP)
			server, ok2 := netip.AddrFromSlice(f.Reverse.SrcIP)
			if !ok1 || !ok2 || local[client.Unmap()] || local[server.Unmap()] {
				continue
			}
			out = append(out, ForwardedSSH{Client: netip.AddrPortFrom(client.Unmap(), f.Forward.SrcPort), Server: netip.AddrPortFrom(server.Unmap(), f.Reverse.SrcPort)})
		}
	}
	return out, nil
}

// ForwardedSSHWarnings names the SSH connections this host routes that the
// new rules would not let through again: the live one rides on conntrack,
// but the admin's next connection to the host behind this one would be
// cut. ifaceFor (may be nil) names the interface towards an address.
func ForwardedSSHWarnings(rs *ruleset.Ruleset, conns []ForwardedSSH, ifaceFor func(netip.Addr) string) []string {
	var out []string
	for _, c := range conns {
		var in, outIface string
		if ifaceFor != nil {
			in, outIface = ifaceFor(c.Client.Addr()), ifaceFor(c.Server.Addr())
		}
		d, err := rs.Evaluate(ruleset.Packet{Hook: ruleset.Forward, Proto: "tcp", Src: c.Client.Addr(), Dst: c.Server.Addr(),
			SPort: c.Client.Port(), DPort: c.Server.Port(), CTState: ruleset.CTNew, InIface: in, OutIface: outIface})
		if err != nil || d.Verdict == ruleset.Accept {
			continue
		}
		out = append(out, fmt.Sprintf("the SSH connection this host routes from %s to %s could not be made again: it would be %s by %s; add 'moat route allow proto tcp from %s to %s port %d'",
			c.Client.Addr(), c.Server, verdictWord(d.Verdict), originText(d.Origin), c.Client.Addr(), c.Server.Addr(), c.Server.Port()))
	}
	return dedupe(out)
}
