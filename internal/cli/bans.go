package cli

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/guard"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
)

// banBackend is the backend holding moat's ban sets.
func (a *app) banBackend(ctx context.Context) (backend.Backend, error) {
	b, err := a.activeBackend(ctx)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, errors.New("moat is not active: the ban sets live in moat's rules ('moat enable' first)")
	}
	if nb, ok := b.(*nft.Backend); ok {
		nb.AfterBan = a.banCommitted
	}
	return b, nil
}

func parseBanAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		if _, perr := netip.ParsePrefix(s); perr == nil {
			return netip.Addr{}, fmt.Errorf("%q is a network: bans are for addresses; 'moat deny from %s' blocks a network", s, s)
		}
		return netip.Addr{}, fmt.Errorf("bad address %q: expected an IPv4 or IPv6 address", s)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("bad address %q: no zone", s)
	}
	return a.Unmap(), nil
}

func (a *app) banCommand() *cobra.Command {
	var dur, reason string
	cmd := &cobra.Command{
		Use:   "ban ADDRESS...",
		Short: "Ban addresses now, in the kernel, for a while (default: the guard's bantime)",
		Long: `Put addresses in moat's ban sets: every packet from them is dropped, their
open connections too, until the ban expires in the kernel (also if moat is
not running). Works with or without 'moat guard'. An address with a live SSH
session here, or on the guard's allowlist, is refused unless --force; this
host's own addresses (any interface's, loopback) are always refused.`,
		Example: `  moat ban 203.0.113.7
  moat ban 2001:db8::66 --for 2h --reason 'scanning'`,
		GroupID: "guard",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.loadPolicy()
			if err != nil {
				return err
			}
			d := p.Guard.BanTime
			if dur != "" {
				if d, err = policy.ParseDuration(dur); err != nil || d < time.Second {
					return fmt.Errorf("bad --for %q: expected a duration such as 90s, 2h or 7d", dur)
				}
			}
			st, _ := safeapply.FindSSH("/proc", os.Getenv("SSH_CONNECTION"))
			// This host's own addresses are refused even with --force: a ban
			// of them cuts the server off from itself.
			own := &guard.Protector{Sessions: func() ([]netip.Addr, error) { return nil, nil }}
			var bans []ruleset.Ban
			for _, s := range args {
				addr, err := parseBanAddr(s)
				if err != nil {
					return err
				}
				if why, refused := own.Refuse(addr); refused {
					return &exitError{code: exitLockout, err: fmt.Errorf("refusing to ban %s: %s", addr, why)}
				}
				if !a.force {
					for _, sess := range st.Sessions {
						if sess.Client.Addr() == addr {
							return &exitError{code: exitLockout, err: fmt.Errorf("refusing to ban %s: it has a live SSH session here (%s); --force bans it anyway", addr, sess)}
						}
					}
					if guard.Allowed(p.Guard.Allowlist, addr) {
						return fmt.Errorf("refusing to ban %s: it is on the allowlist; --force bans it anyway", addr)
					}
				}
				why := "manual" // not "manual: " when no --reason is given
				if reason != "" {
					why += ": " + reason
				}
				bans = append(bans, ruleset.Ban{Addr: addr, Timeout: d, Reason: why})
			}
			if a.dryRun {
				for _, b := range bans {
					a.printf("would ban %s for %s\n", b.Addr, d)
				}
				return nil
			}
			unlock, err := a.engine().Lock(cmd.Context(), a.commandLine(cmd))
			if err != nil {
				return err
			}
			defer unlock()
			b, err := a.banBackend(cmd.Context())
			if err != nil {
				return err
			}
			// An address banned already gets the new length: replace every
			// element (add, delete, add: about 15 ms more), rather than list
			// the ban sets first, which costs seconds with 100,000 bans.
			for i := range bans {
				bans[i].Replace = true
			}
			if err := b.Ban(cmd.Context(), bans); err != nil {
				return err
			}
			if err := guard.RecordManualBans(a.stateDir, bans, time.Now()); err != nil {
				fmt.Fprintf(a.errOut, "moat: warning: banned, but the ban history was not saved: %v\n", err)
			}
			for _, b := range bans {
				a.printf("Banned %s for %s\n", b.Addr, d)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dur, "for", "", "how long (90s, 2h, 7d; default: the guard's bantime)")
	cmd.Flags().StringVar(&reason, "reason", "", "why, shown by 'moat bans'")
	return cmd
}

func (a *app) unbanCommand() *cobra.Command {
	return &cobra.Command{
		Use: "unban ADDRESS...",
		Example: `  moat unban 203.0.113.7
  moat unban 203.0.113.7 2001:db8::66`,
		Short:   "Lift bans now",
		GroupID: "guard",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var addrs []netip.Addr
			for _, s := range args {
				addr, err := parseBanAddr(s)
				if err != nil {
					return err
				}
				addrs = append(addrs, addr)
			}
			if a.dryRun {
				a.printf("would unban %v\n", addrs)
				return nil
			}
			unlock, err := a.engine().Lock(cmd.Context(), a.commandLine(cmd))
			if err != nil {
				return err
			}
			defer unlock()
			b, err := a.banBackend(cmd.Context())
			if err != nil {
				return err
			}
			// Which were banned, asked before: "Unbanned" for an
			// address that was not is a wrong answer to "was it?".
			each := askEachMax
			if nb, ok := b.(*nft.Backend); ok && nb.Read != nil {
				each = len(addrs) // a netlink lookup each, no process
			}
			was := bannedBefore(cmd.Context(), b, addrs, each)
			if err := b.Unban(cmd.Context(), addrs); err != nil {
				return err
			}
			if err := guard.RecordUnbans(a.stateDir, addrs); err != nil {
				fmt.Fprintf(a.errOut, "moat: warning: unbanned, but the ban history was not saved: %v\n", err)
			}
			for _, ad := range addrs {
				if was[ad] {
					a.printf("Unbanned %s\n", ad)
				} else {
					a.printf("%s was not banned\n", ad)
				}
			}
			return nil
		},
	}
}

// askEachMax is how many addresses unban asks about one by one on
// iptables (an 'ipset test' each, about a millisecond); more are looked up
// in one listing of the bans. nftables asks each over netlink.
const askEachMax = 32

// bannedBefore says which of addrs are banned, for unban's answer: true
// where it cannot tell (the unban goes ahead and says "Unbanned"). Up to
// each are asked one by one; more (xargs of thousands: 5,000 addresses
// took 6.7 s of 'ipset test' on iptables) from one listing of the bans.
func bannedBefore(ctx context.Context, b interface {
	Bans(context.Context) ([]ruleset.Ban, error)
}, addrs []netip.Addr, each int) map[netip.Addr]bool {
	was := make(map[netip.Addr]bool, len(addrs))
	for _, ad := range addrs {
		was[ad] = true
	}
	bc, asks := b.(interface {
		Banned(context.Context, netip.Addr) (bool, error)
	})
	if len(addrs) > each || !asks {
		bans, err := b.Bans(ctx)
		if err != nil {
			return was
		}
		in := make(map[netip.Addr]bool, len(bans))
		for _, ban := range bans {
			in[ban.Addr.Unmap()] = true
		}
		for _, ad := range addrs {
			was[ad] = in[ad.Unmap()]
		}
		return was
	}
	for _, ad := range addrs {
		if ok, err := bc.Banned(ctx, ad); err == nil {
			was[ad] = ok
		}
	}
	return was
}

// defaultBansShown is how many bans 'moat bans' prints without --all.
const defaultBansShown = 1000

func (a *app) bansCommand() *cobra.Command {
	var all bool
	var limit int
	cmd := &cobra.Command{
		Use:   "bans",
		Short: "List banned addresses: reason, time left, how often banned",
		Long: `List the banned addresses, sorted, with the reason, the time left and how
often each was banned. Without --all at most --limit bans are read and shown
(1000 unless given): the first the kernel lists, sorted, not the first of
all bans in order; a last line says that there are more (reading a ban
set of 200,000 from the kernel takes seconds). --json lists every ban, as
--all does: on nftables by looking up the addresses the guard recorded
(under a second for 200,000), or, when the kernel holds a ban the guard
did not record (the port scan trap's, one added by hand), by reading the
whole sets (seconds for 200,000). A ban added by hand without a timeout
never runs out: its time left is "permanent" ("permanent": true in
--json, seconds_left 0).

--json prints an array of {address, reason, seconds_left, permanent (only
when true), ban_count}, sorted by address.`,
		Example: `  moat bans
  moat bans --all | grep 2001:db8::7
  moat bans --limit 20
  moat bans --json`,
		GroupID: "guard",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 1 {
				return fmt.Errorf("--limit %d: expected 1 or more", limit)
			}
			b, err := a.banBackend(cmd.Context())
			if err != nil {
				return err
			}
			var bans []ruleset.Ban
			var counts map[netip.Addr]int // read with the bans, or below
			more := false
			switch lb, ok := b.(interface {
				BansUpTo(ctx context.Context, n int) ([]ruleset.Ban, bool, error)
			}); {
			case all || a.json:
				bans, counts, err = a.allBans(cmd.Context(), b)
			case ok:
				bans, more, err = lb.BansUpTo(cmd.Context(), limit)
			default:
				bans, err = b.Bans(cmd.Context())
				if len(bans) > limit {
					bans, more = bans[:limit], true
				}
			}
			if err != nil {
				return err
			}
			if c, ok := b.(interface{ BansChanged() bool }); ok && c.BansChanged() {
				fmt.Fprintln(a.errOut, "moat: bans were added or lifted while they were read: this list merges reads taken meanwhile")
			}
			var shown []netip.Addr // nil: every address's count
			if more {
				shown = make([]netip.Addr, len(bans))
				for i, ban := range bans {
					shown[i] = ban.Addr
				}
			}
			if counts == nil {
				counts = guard.BanCounts(a.stateDir, shown)
			}
			rows := banRows(bans, counts)
			if a.json {
				return quietPipe(writeBanJSON(a.out, rows))
			}
			if len(rows) == 0 {
				a.printf("No bans\n")
				return nil
			}
			if err := writeBanRows(a.out, rows); err != nil {
				return quietPipe(err)
			}
			if more {
				a.printf("%s\n", a.moreBans(len(rows)))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "list every ban (nftables: seconds for 200,000 the guard did not record)")
	cmd.Flags().IntVar(&limit, "limit", defaultBansShown, "without --all, show at most this many bans")
	return cmd
}

// recordedSlack is how long after the history says a ban ended it is
// still looked up: the kernel's timeout starts when the ban is loaded,
// a little before or after the history's clock reads.
const recordedSlack = time.Minute

// allBans lists every ban and how often each address was banned. Where
// the backend can (nftables), the addresses the guard's history says may
// be banned are looked up one by one, which costs the kernel a few
// microseconds each, where its dump of a set costs n² (seconds at
// 200,000); when the lookups did not find every element of the ban sets
// (a ban the history does not know: the port scan trap's, one written by
// hand; sets that changed meanwhile) the sets are dumped as before.
func (a *app) allBans(ctx context.Context, b backend.Backend) ([]ruleset.Ban, map[netip.Addr]int, error) {
	lb, ok := b.(interface {
		BansOf(ctx context.Context, known []netip.Addr) ([]ruleset.Ban, bool, error)
	})
	if !ok {
		bans, err := b.Bans(ctx)
		return bans, nil, err
	}
	known, counts := guard.RecordedBans(a.stateDir, time.Now().Add(-recordedSlack))
	bans, complete, err := lb.BansOf(ctx, known)
	switch {
	case err == nil && complete:
		a.log.Debug("bans: listed by lookups of the addresses the history records", "looked_up", len(known), "bans", len(bans))
		return bans, counts, nil
	case err != nil:
		a.log.Debug("bans: the lookups failed, dumping the ban sets", "err", err)
	default:
		a.log.Debug("bans: the lookups did not find every ban, dumping the ban sets", "looked_up", len(known))
	}
	bans, err = b.Bans(ctx)
	return bans, counts, err
}

// moreBans is the line after a listing cut at shown bans.
func (a *app) moreBans(shown int) string {
	msg := fmt.Sprintf("... and more: %d shown (the first the kernel listed, sorted)", shown)
	if n, err := guard.ActiveBans(a.stateDir, time.Now()); err == nil && n > shown {
		msg += fmt.Sprintf(" of about %d recorded by the guard, port scan bans not counted", n)
	}
	return msg + "; 'moat bans --all' lists every one"
}
