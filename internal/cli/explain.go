package cli

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/foreign"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

const explainLong = `Tell what moat does with a packet, and which rule decides: a line of the
policy file, a default, or a built-in rule. It evaluates, in userspace, the
ruleset moat applied (what the kernel does now); it says so when the policy
file differs, when moat is fail-closed, or when moat's rules in the kernel
were changed by hand. Inactive, or without root, it evaluates the policy
file. It sends nothing. With the iptables backend, a foreign rule ahead
of moat's jump that accepts the packet decides before moat sees it:
explain then says ACCEPT and names it (or says it may, when the rule
cannot be judged).

  moat explain [in|out|route] PROTO [from ADDR] [port P] [to ADDR] [port P]
               [on IFACE] [in on IFACE] [out on IFACE] [type N] [state S]

PROTO is tcp, udp, icmp, ipv6-icmp (icmpv6), esp, ah, gre, ...; 'to port 80'
(or 'port 80') leaves the address out, and 'explain in 80/tcp' is short for
'explain in tcp to port 80'. P is a number or a name from /etc/services. An ICMP packet is an echo request unless 'type N'
says otherwise; S is new (default), established, related or invalid. A
missing address is one that no 'from'/'to' rule names (IPv4 unless the
other address or the protocol is IPv6), a missing port or interface one
that no rule names: when a rule names one that changes the verdict, explain
lists it ("in on eth0: ACCEPT, moat.conf:7: ..."), so give it to explain
that packet.

--json prints one object: verdict (ACCEPT, DROP or REJECT), decided_by,
origin (id, line, text), chain (prerouting, input, output or forward),
packet (direction, proto, from, from_port, to, to_port, interface_in,
interface_out), rate_limit, evaluated ("applied" or "file"), notes,
other_filtering, accepted_before_moat, moat_verdict, and other_answers
(if, verdict, decided_by: the verdicts for left-out parts rules name).
Exit code 0 whatever the verdict; 1 when the packet cannot be read or the
policy cannot be evaluated.`

type explanation struct {
	Verdict string          `json:"verdict"`
	Decided string          `json:"decided_by"`
	Origin  ruleset.Origin  `json:"origin"`
	Chain   ruleset.Hook    `json:"chain"`
	Packet  explainedPacket `json:"packet"`
	Limited string          `json:"rate_limit,omitempty"`
	// Evaluated is "applied" (what moat put in the kernel) or "file" (the
	// policy file: moat inactive, not root, or nothing recorded); Notes
	// say when the file, what is applied, or the kernel differ.
	Evaluated string   `json:"evaluated"`
	Notes     []string `json:"notes"`
	// OtherFiltering is filtering outside moat that sees this packet and
	// can drop it although moat accepts it.
	OtherFiltering []foreign.Finding `json:"other_filtering"`
	// AcceptedAhead are rules ahead of moat's jump (iptables backend)
	// that accept, or may accept, this packet before moat sees it: moat's
	// verdict is then not the kernel's. When one surely does, Verdict is
	// ACCEPT and MoatVerdict what moat would have done.
	AcceptedAhead []foreign.Finding `json:"accepted_before_moat"`
	MoatVerdict   string            `json:"moat_verdict,omitempty"`
	// OtherAnswers are the verdicts the packet gets when a part it left
	// out (source, destination, port, interface) is one a rule names.
	OtherAnswers []otherAnswer `json:"other_answers"`
}

type explainedPacket struct {
	Direction string `json:"direction"`
	Proto     string `json:"proto"`
	From      string `json:"from"`
	FromPort  uint16 `json:"from_port,omitempty"`
	To        string `json:"to"`
	ToPort    uint16 `json:"to_port,omitempty"`
	InIface   string `json:"interface_in,omitempty"`
	OutIface  string `json:"interface_out,omitempty"`
}

func (a *app) explainCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "explain [in|out|route] PROTO [from ADDR] [to ADDR] [port P] ...",
		Short: "Show the verdict for a packet and the rule that decides it",
		Long:  explainLong,
		Example: `  moat explain in tcp from 203.0.113.5 to port 80
  moat explain in ssh/tcp from 198.51.100.7
  moat explain in udp from 2001:db8::5 to port 53
  moat explain in icmp from 198.51.100.7
  moat explain out tcp to 203.0.113.9 port 25
  moat explain route tcp in on eth1 out on eth2 to 192.0.2.10 port 80`,
		GroupID: "inspect",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pkt, err := parsePacketSvc(args, a.services())
			if err != nil {
				return fmt.Errorf("explain: %w", err)
			}
			src, err := a.explainPolicy(cmd.Context())
			if err != nil {
				return err
			}
			rs := a.compile(src.policy)
			if src.banned != nil && pkt.Src.IsValid() {
				// The kernel's bans are not in the policy: a banned source
				// becomes an element of the ban set, and the evaluator
				// says whether the ban drops this packet (the protected
				// sets, loopback and forwarded packets are spared).
				if banned, err := src.banned(cmd.Context(), pkt.Src.Unmap()); err != nil {
					src.notes = append(src.notes, fmt.Sprintf("could not ask the kernel whether %s is banned: %v", pkt.Src, err))
				} else if set := rs.Set(ruleset.BanSetFor(pkt.Src.Unmap())); banned && set != nil {
					addr := pkt.Src.Unmap()
					set.Entries = append(set.Entries, ruleset.SetEntry{Prefix: netip.PrefixFrom(addr, addr.BitLen()),
						Origin: ruleset.Origin{ID: "builtin:ban", Text: addr.String() + " is banned ('moat bans' says why and until when)"}})
					// The sessions logged in at the apply are in the
					// kernel's protected set, not in the policy.
					p := rs.Set(ruleset.ProtectSet4)
					if addr.Is6() {
						p = rs.Set(ruleset.ProtectSet6)
					}
					markProtected(cmd.Context(), src, p, addr)
				}
			}
			d, err := rs.Evaluate(pkt)
			if err != nil {
				return err
			}
			ex := explanation{Verdict: strings.ToUpper(string(d.Verdict)), Origin: d.Origin, Chain: d.Chain,
				Packet: explainedPacket{Direction: map[ruleset.Hook]string{ruleset.Input: "in", ruleset.Output: "out", ruleset.Forward: "route"}[pkt.Hook],
					Proto: pkt.Proto, From: addrOrAny(pkt.Src), FromPort: pkt.SPort, To: addrOrAny(pkt.Dst), ToPort: pkt.DPort,
					InIface: pkt.InIface, OutIface: pkt.OutIface},
				Evaluated: src.evaluated, Notes: src.notes}
			if ex.Notes == nil {
				ex.Notes = []string{}
			}
			// moat refuses it; a rule ahead of moat's jump may accept it
			// before moat sees it.
			ex.AcceptedAhead = []foreign.Finding{}
			sure := false
			if d.Verdict != ruleset.Accept {
				var ahead []foreign.Finding
				if ahead, sure = acceptedAhead(src.foreign, pkt, d.Chain, false); len(ahead) > 0 {
					ex.AcceptedAhead = ahead
				}
				if sure {
					ex.MoatVerdict, ex.Verdict = ex.Verdict, "ACCEPT"
				}
			}
			// moat lets it through; other filtering may not.
			ex.OtherFiltering = []foreign.Finding{}
			if d.Verdict == ruleset.Accept || sure {
				// A packet without addresses may be of either family.
				known := pkt.Src.IsValid() || pkt.Dst.IsValid()
				for _, f := range src.foreign {
					if f.Sees(string(d.Chain)) && (!known || f.SeesFamily(pkt.Family() == policy.FamilyV6)) {
						ex.OtherFiltering = append(ex.OtherFiltering, f)
					}
				}
			}
			if src.foreignErr != nil {
				ex.Notes = append(ex.Notes, fmt.Sprintf("could not look for other filtering: %v", src.foreignErr))
			}
			isFile := src.where == a.config
			ex.Decided = decidedBy(src.where, isFile, d.Origin)
			if sure {
				ex.Decided = fmt.Sprintf("a rule ahead of moat's jump, before moat sees the packet (%s); moat would %s it: %s", ex.AcceptedAhead[0].Where, ex.MoatVerdict, ex.Decided)
			}
			ex.OtherAnswers = []otherAnswer{}
			if !sure {
				other, more := otherAnswers(rs, src.policy, pkt, d, src.where, isFile)
				ex.OtherAnswers = append(ex.OtherAnswers, other...)
				ex.Notes = append(ex.Notes, more...)
			}
			if d.Limit != nil {
				ex.Limited = fmt.Sprintf("a source's %dth new connection within %d s is rejected", d.Limit.Count, d.Limit.Seconds)
			}
			if a.json {
				return a.printJSON(ex)
			}
			a.printf("%s\n  decided by %s\n", ex.Verdict, ex.Decided)
			if d.Chain == ruleset.Prerouting {
				a.printf("  in the prerouting chain, before conntrack: the packet makes no conntrack state\n")
			}
			if ex.Limited != "" {
				a.printf("  rate limit: %s\n", ex.Limited)
			}
			if len(ex.AcceptedAhead) > 0 && !sure {
				a.printf("  but it may be accepted before moat sees it, by rules ahead of moat's jump:\n")
			} else if len(ex.AcceptedAhead) > 0 {
				a.printf("  accepted before moat sees it, by rules ahead of moat's jump:\n")
			}
			for _, f := range ex.AcceptedAhead {
				a.printf("    - %s\n", f)
			}
			if len(ex.OtherFiltering) > 0 {
				a.printf("  but other filtering also sees this packet and can still drop it:\n")
				for _, f := range ex.OtherFiltering {
					a.printf("    - %s\n", f)
				}
			}
			if len(ex.OtherAnswers) > 0 {
				a.printf("  for a source, destination, port or interface the packet leaves out, rules decide otherwise:\n")
				for _, o := range ex.OtherAnswers {
					a.printf("    %s: %s, %s\n", o.If, o.Verdict, o.Decided)
				}
			}
			for _, n := range ex.Notes {
				a.printf("  note: %s\n", n)
			}
			return nil
		},
	}
}

// markProtected adds addr to the compiled protected set p when the
// kernel's holds it.
func markProtected(ctx context.Context, src *explainSource, p *ruleset.Set, addr netip.Addr) {
	if p == nil || src.protected == nil {
		return
	}
	in, err := src.protected(ctx, addr)
	if err != nil {
		src.notes = append(src.notes, err.Error())
		return
	}
	if in {
		p.Entries = append(p.Entries, ruleset.SetEntry{Prefix: netip.PrefixFrom(addr, addr.BitLen()),
			Origin: ruleset.Origin{ID: "session", Text: "an SSH session logged in when the policy was applied"}})
	}
}

func addrOrAny(a netip.Addr) string {
	if a.IsUnspecified() {
		return "any"
	}
	return a.String()
}

// parsePacket reads the packet description of 'moat explain'.
func parsePacket(args []string) (ruleset.Packet, error) {
	return parsePacketSvc(args, nil)
}

// packetPort reads a port of 'moat explain': a number, or a service name
// of svc (/etc/services), as a rule's port.
func packetPort(v string, svc policy.Services) (uint16, error) {
	if n, err := strconv.Atoi(v); err == nil {
		if n < 1 || n > 65535 {
			return 0, fmt.Errorf("bad port %q: expected 1 to 65535", v)
		}
		return uint16(n), nil
	}
	if s, ok := svc[strings.ToLower(v)]; ok && s.Port > 0 {
		return s.Port, nil
	}
	return 0, fmt.Errorf("bad port %q: expected 1 to 65535 or a service name from /etc/services", v)
}

// parsePacketSvc is parsePacket with service names for ports. As in a
// rule, 'PORT/PROTO' stands for the protocol and the destination port
// ('explain in 22/tcp'), and a 'port' after neither 'from' nor 'to' is
// the destination's.
func parsePacketSvc(args []string, svc policy.Services) (ruleset.Packet, error) {
	p := ruleset.Packet{Hook: ruleset.Input}
	if err := checkArgs(args); err != nil {
		return p, err
	}
	i := 0
	switch strings.ToLower(args[0]) {
	case "in", "incoming":
		i++
	case "out", "outgoing":
		p.Hook = ruleset.Output
		i++
	case "route", "routed", "forward":
		p.Hook = ruleset.Forward
		i++
	}
	if i >= len(args) {
		return p, fmt.Errorf("missing protocol: expected tcp, udp, icmp, ipv6-icmp, esp, ah or gre")
	}
	p.Proto = strings.ToLower(args[i])
	if port, proto, ok := strings.Cut(p.Proto, "/"); ok && (proto == "tcp" || proto == "udp") {
		n, err := packetPort(port, svc)
		if err != nil {
			return p, err
		}
		p.Proto, p.DPort = proto, n
	}
	if p.Proto == "icmpv6" {
		p.Proto = "ipv6-icmp"
	}
	switch p.Proto {
	case "tcp", "udp", "icmp", "ipv6-icmp", "esp", "ah", "gre", "igmp", "vrrp", "ipv6":
	default:
		return p, fmt.Errorf("unknown protocol %q: expected tcp, udp, icmp, ipv6-icmp, esp, ah, gre, igmp, vrrp or ipv6", args[i])
	}
	i++
	side := ""
	next := func(what string) (string, error) {
		if i+1 >= len(args) {
			return "", fmt.Errorf("'%s' needs a value", what)
		}
		i++
		return args[i], nil
	}
	for ; i < len(args); i++ {
		word := strings.ToLower(args[i])
		switch word {
		case "from", "to":
			side = word
			if i+1 < len(args) && !isExplainKeyword(args[i+1]) {
				i++
				addr, err := netip.ParseAddr(args[i])
				if err != nil || addr.Zone() != "" {
					return p, fmt.Errorf("bad address %q: expected an IP address", args[i])
				}
				if word == "from" {
					p.Src = addr.Unmap()
				} else {
					p.Dst = addr.Unmap()
				}
			}
		case "port":
			v, err := next("port")
			if err != nil {
				return p, err
			}
			n, err := packetPort(v, svc)
			if err != nil {
				return p, err
			}
			// 'to port P', or 'port P' alone: the destination's. A
			// second port for a side is an error: it overwrote the
			// first ('from A port 1234 port 22' asked for source port 22).
			at, which := &p.DPort, "destination"
			if side == "from" {
				at, which = &p.SPort, "source"
			}
			if *at != 0 {
				return p, fmt.Errorf("the %s port is given twice (%d, then '%s'): a packet has one", which, *at, echo(v))
			}
			*at = n
		case "on", "in", "out":
			dir := word
			if word != "on" {
				if i+1 >= len(args) || strings.ToLower(args[i+1]) != "on" {
					return p, fmt.Errorf("'%s' needs 'on IFACE'", word)
				}
				i++
			} else if p.Hook == ruleset.Output {
				dir = "out"
			} else {
				dir = "in"
			}
			v, err := next("on")
			if err != nil {
				return p, err
			}
			if dir == "in" {
				p.InIface = v
			} else {
				p.OutIface = v
			}
		case "type":
			v, err := next("type")
			if err != nil {
				return p, err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 255 {
				return p, fmt.Errorf("bad ICMP type %q: expected 0 to 255", v)
			}
			p.ICMPType, p.HasICMPType = uint8(n), true
		case "state":
			v, err := next("state")
			if err != nil {
				return p, err
			}
			switch st := ruleset.CTState(strings.ToLower(v)); st {
			case ruleset.CTNew, ruleset.CTEstablished, ruleset.CTRelated, ruleset.CTInvalid:
				p.CTState = st
			default:
				return p, fmt.Errorf("bad state %q: expected new, established, related or invalid", v)
			}
		default:
			return p, fmt.Errorf("unexpected %q: expected from, to, port, on, type or state", args[i])
		}
	}
	if p.Src.IsValid() && p.Dst.IsValid() && p.Src.Is4() != p.Dst.Is4() {
		return p, fmt.Errorf("mixed IP versions for 'from' and 'to'")
	}
	v6 := p.Proto == "ipv6-icmp" || (p.Src.IsValid() && p.Src.Is6()) || (p.Dst.IsValid() && p.Dst.Is6())
	if v6 && p.Proto == "icmp" {
		return p, fmt.Errorf("icmp is IPv4: use ipv6-icmp for IPv6")
	}
	unspec := netip.IPv4Unspecified()
	if v6 {
		unspec = netip.IPv6Unspecified()
	}
	if !p.Src.IsValid() {
		p.Src = unspec
	}
	if !p.Dst.IsValid() {
		p.Dst = unspec
	}
	if p.HopLimit == 0 {
		p.HopLimit = 64
	}
	return p, nil
}

func isExplainKeyword(s string) bool {
	switch strings.ToLower(s) {
	case "from", "to", "port", "on", "in", "out", "type", "state":
		return true
	}
	return false
}

// decidedBy names the rule of o as explain says it: "FILE:LINE: TEXT"
// where where is the policy file (isFile), "WHERE, line N: TEXT" where it
// names what moat applied, and the text alone for a rule of no line (a
// built-in, a default).
func decidedBy(where string, isFile bool, o ruleset.Origin) string {
	switch {
	case o.Line > 0 && isFile:
		return fmt.Sprintf("%s:%d: %s", where, o.Line, o.Text)
	case o.Line > 0:
		return fmt.Sprintf("%s, line %d: %s", where, o.Line, o.Text)
	}
	return o.Text
}
