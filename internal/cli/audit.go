package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/audit"
	"github.com/moat-fw/moat/internal/foreign"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
	"github.com/moat-fw/moat/internal/termtext"
)

const auditLong = `List what is exposed: every socket that takes packets from the network in
the network namespace moat runs in (listening TCP sockets and bound UDP
sockets, IPv4 and IPv6, with the process that owns each where /proc tells),
and whether the outside reaches it under the policy moat applied. Each is
judged with the evaluator of 'moat explain', for a new connection from a
source that no rule names, of each family the socket takes:

  open to anyone         a source no rule names gets through (blocklists,
                         lines before the allowing rule that drop or
                         reject some sources, and rate limits that still
                         apply are named)
  open to some sources   only the networks, interfaces or source ports
                         listed get through (the built-in rule for DHCP
                         replies opens UDP port 68 to source port 67)
  closed by moat         moat drops or rejects every new connection
  OPEN: accepted ahead of moat
                         moat would refuse it, but a foreign rule ahead of
                         moat's jump (iptables backend) accepts it first
  may be open: ...       such a rule may accept it (a jump to a chain
                         that accepts, a match that cannot be judged)
  moat not active: open  moat's rules are not in the kernel
  local only             bound to a loopback address, or to a device
                         (SO_BINDTODEVICE) packets from outside never
                         come in on, such as lo

It also lists the policy lines that allow a port nothing listens on (for
information), and warns when moat is not active, fail-closed, or when
filtering outside moat exists (which may drop more than moat says). It
sends nothing and changes nothing. Run it as root: other users' processes,
the kernel's socket table and the applied ruleset need it.

--json prints one object: active, evaluated ("applied", "file" or "none"),
sockets (one per socket and family: proto, family "ipv4"/"ipv6", address,
port, device (SO_BINDTODEVICE), pid, process, status "open", "open-some",
"closed", "inactive-open", "local-only", "open-ahead" or
"maybe-open-ahead", accepted_ahead, from, allowed_by, except (blocklists, and policy lines
"line N (TEXT)" that drop some sources first), rate_limit, unexplained),
unused_allows (line, rule, proto, ports), warnings, other_filtering,
unexplained_exposed and kernel_changed.

Exit codes: 0, nothing is exposed without a policy line that allows it;
1, a socket is exposed although no line of the policy allows it (moat is
not active, or the default policy lets it through; moat's built-in rules,
such as the DHCP replies to port 68, are named and count as allowed); 2, the audit
could not be made (the message says why), or moat's rules in the kernel
were changed outside moat (kernel_changed: the statuses are those of what
moat applied, which the kernel no longer is).`

type auditReport struct {
	Active bool `json:"active"`
	// Evaluated is "applied" or "file" as for 'moat explain'.
	Evaluated      string              `json:"evaluated"`
	Sockets        []audit.Finding     `json:"sockets"`
	UnusedAllows   []audit.UnusedAllow `json:"unused_allows"`
	Warnings       []string            `json:"warnings"`
	OtherFiltering []foreign.Finding   `json:"other_filtering"`
	Unexplained    int                 `json:"unexplained_exposed"`
	// KernelChanged: moat's rules in the kernel were changed outside
	// moat, so the kernel may decide otherwise than the statuses say.
	KernelChanged bool `json:"kernel_changed"`
}

var auditStatusText = map[string]string{
	audit.Open:           "open to anyone",
	audit.OpenSome:       "open to some sources",
	audit.Closed:         "closed by moat",
	audit.Inactive:       "moat not active: open",
	audit.LocalOnly:      "local only",
	audit.OpenAhead:      "OPEN: accepted ahead of moat",
	audit.MaybeOpenAhead: "may be open: a rule ahead of moat may accept",
}

func (a *app) auditCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "audit",
		Short: "List the listening sockets and whether the outside reaches them",
		Long:  auditLong,
		Example: `  # what listens here, and who can reach it
  sudo moat audit
  # for scripts: the exit code is 1 when something is exposed that no rule allows
  # (jq without -r: a process names itself, so print it JSON-escaped)
  sudo moat audit --json | jq -c '.sockets[] | select(.status == "open") | [.proto, .port, .process]'
  # audit another network namespace (a container's)
  sudo ip netns exec web moat audit`,
		GroupID: "inspect",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			err := a.runAudit(cmd.Context())
			var ee *exitError
			if err != nil && !errors.As(err, &ee) {
				return &exitError{code: 2, err: err}
			}
			return err
		},
	}
}

func (a *app) runAudit(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("audit: run it as root: what moat applied, the kernel's rules and the owners of other users' sockets are root's to read")
	}
	ls, err := safeapply.Listeners("/proc")
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	socks := make([]audit.Socket, len(ls))
	for i, l := range ls {
		socks[i] = audit.Socket{Proto: l.Proto, Local: l.Local, V4: l.V4, V6: l.V6, PID: l.PID, Process: l.Process, Device: l.Device}
	}
	rep := auditReport{Warnings: []string{}, OtherFiltering: []foreign.Finding{}, UnusedAllows: []audit.UnusedAllow{}}
	b, berr := a.activeBackend(ctx)
	var findings []audit.Finding
	switch {
	case berr != nil:
		return fmt.Errorf("audit: %w", berr)
	case b == nil:
		rep.Evaluated = "none"
		rep.Warnings = append(rep.Warnings, "moat is not active: nothing of moat's filters these sockets ('moat enable' applies "+a.config+")")
		findings = audit.Classify(socks, nil, false, outsideIfaces())
		f, ferr := a.foreignFilters(ctx)
		rep.OtherFiltering = append(rep.OtherFiltering, f...)
		if ferr != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("could not look for other filtering: %v", ferr))
		}
	default:
		src, err := a.explainPolicy(ctx)
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		rep.Active, rep.Evaluated = true, src.evaluated
		rep.KernelChanged = src.drifted != ""
		rep.Warnings = append(rep.Warnings, src.notes...)
		rs := a.compile(src.policy)
		ifaces := outsideIfaces()
		findings = audit.ClassifyAt(socks, rs, true, ifaces, outsideAddrs())
		// A socket bound to a device the outside does not come in on
		// (lo) listens for no rule of the outside.
		outside := slices.DeleteFunc(slices.Clone(socks), func(s audit.Socket) bool {
			return s.Device != "" && ifaces != nil && !slices.Contains(ifaces, s.Device)
		})
		rep.UnusedAllows = append(rep.UnusedAllows, audit.UnusedAllows(outside, rs)...)
		rep.OtherFiltering = append(rep.OtherFiltering, src.foreign...)
		markAcceptedAhead(findings, src.foreign)
		if src.foreignErr != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("could not look for other filtering: %v", src.foreignErr))
		}
	}
	if drops, bypass := splitBypass(rep.OtherFiltering); len(drops) > 0 || len(bypass) > 0 {
		if len(bypass) > 0 {
			rep.Warnings = append(rep.Warnings, "rules ahead of moat's jump accept packets moat would refuse: moat never sees what they accept")
		}
		if len(drops) > 0 {
			rep.Warnings = append(rep.Warnings, "filtering outside moat exists: it may drop what this audit calls open ('moat status' shows it)")
		}
	}
	rep.Sockets = findings
	if rep.Sockets == nil {
		rep.Sockets = []audit.Finding{}
	}
	for _, f := range findings {
		if f.Exposed() && f.Unexplained {
			rep.Unexplained++
		}
	}
	if a.json {
		if err := a.printJSON(rep); err != nil {
			return err
		}
	} else {
		a.printAudit(rep)
	}
	if rep.KernelChanged {
		return &exitError{code: 2, err: errors.New("audit: moat's rules in the kernel were changed outside moat: what it calls closed may be open ('moat reload' repairs it)")}
	}
	if rep.Unexplained > 0 {
		return &exitError{code: 1, err: fmt.Errorf("audit: %d socket(s) exposed that no line of the policy allows", rep.Unexplained)}
	}
	return nil
}

// markAcceptedAhead: a socket moat closes (or opens to some sources) whose
// new connections a rule ahead of moat's jump accepts, or may accept, is
// not closed by moat: open-ahead (maybe-open-ahead), exposed without a
// policy line that allows it.
func markAcceptedAhead(findings []audit.Finding, fs []foreign.Finding) {
	for i := range findings {
		f := &findings[i]
		if f.Status != audit.Closed && f.Status != audit.OpenSome {
			continue
		}
		dst, err := netip.ParseAddr(f.Address)
		if err != nil {
			continue
		}
		if dst.IsUnspecified() {
			dst = netip.IPv4Unspecified()
			if f.Family == "ipv6" {
				dst = netip.IPv6Unspecified()
			}
		}
		pkt := ruleset.Packet{Hook: ruleset.Input, Proto: f.Proto, Dst: dst.Unmap(), DPort: f.Port, CTState: ruleset.CTNew, InIface: f.Device}
		if f.Family == "ipv4" && dst.Is6() {
			pkt.Dst = netip.IPv4Unspecified()
		}
		ahead, sure := acceptedAhead(fs, pkt, ruleset.Input, true)
		if len(ahead) == 0 {
			continue
		}
		f.Status = audit.MaybeOpenAhead
		if sure {
			f.Status, f.From = audit.OpenAhead, nil
		}
		f.Unexplained = true
		for _, a := range ahead {
			f.AcceptedAhead = append(f.AcceptedAhead, a.Where+": "+strings.Join(a.Rules, "; "))
		}
	}
}

// outsideIfaces are this network namespace's interfaces other than
// loopback (nil if they cannot be listed: an interface no rule names).
func outsideIfaces() []string {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []string
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 {
			out = append(out, i.Name)
		}
	}
	return out
}

// outsideAddrs are this network namespace's addresses other than
// loopback ones (nil if they cannot be listed), lo's too: a service
// address on lo (anycast, a load balancer's) is reached from outside.
func outsideAddrs() []netip.Addr {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, i := range ifs {
		as, err := i.Addrs()
		if err != nil {
			continue
		}
		for _, a := range as {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && !ip.Unmap().IsLoopback() {
					out = append(out, ip.Unmap())
				}
			}
		}
	}
	return out
}

func (a *app) printAudit(rep auditReport) {
	for _, w := range rep.Warnings {
		a.printf("warning: %s\n", termtext.Printable(w))
	}
	for _, f := range rep.OtherFiltering {
		a.printf("  other filtering: %s\n", termtext.Printable(f.String()))
	}
	if len(rep.Sockets) == 0 {
		a.printf("Nothing listens in this network namespace.\n")
	} else {
		var sb strings.Builder
		tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
		_, _ = fmt.Fprintln(tw, "PROTO\tFAMILY\tADDRESS\tPORT\tPROCESS\tEXPOSURE")
		for _, f := range rep.Sockets {
			proc := "-"
			if f.PID > 0 {
				proc = termtext.Printable(f.Process) + "[" + strconv.Itoa(f.PID) + "]"
			}
			exp := auditStatusText[f.Status]
			if len(f.From) > 0 {
				exp += " (from " + strings.Join(f.From, ", ") + ")"
			}
			if len(f.Except) > 0 {
				exp += " except " + strings.Join(f.Except, ", ")
			}
			if f.RateLimit != "" {
				exp += ", rate limited"
			}
			if len(f.AcceptedAhead) > 0 {
				exp += " (" + strings.Join(f.AcceptedAhead, "; ") + ")"
			}
			if f.Exposed() && f.Unexplained && f.Status != audit.Inactive {
				exp += " - no rule allows it"
			}
			addr := f.Address
			if f.Device != "" {
				addr += "%" + termtext.Printable(f.Device) // bound to it (SO_BINDTODEVICE)
			}
			_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", f.Proto, f.Family, addr, f.Port, proc, termtext.Printable(exp))
		}
		_ = tw.Flush() // a strings.Builder does not fail
		a.printf("%s", sb.String())
	}
	if len(rep.UnusedAllows) > 0 {
		a.printf("\nRules that allow a port nothing listens on (information):\n")
		for _, u := range rep.UnusedAllows {
			a.printf("  line %d: %s (%s %s)\n", u.Line, termtext.Printable(u.Rule), u.Proto, u.Ports)
		}
	}
}
