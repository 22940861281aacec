package nft

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/moat-fw/moat/internal/ruleset"
)

// Ban sets elements are written with our own nft script: knftables has no
// per-element timeout.

// Ban adds addresses to the ban sets in one transaction. A ban marked
// Replace gets its new timeout even if the address is banned already (add,
// delete, add: nft's add keeps an existing element as it is; the delete
// makes the commit wait for the kernel to release the old element, about
// 15 ms, so it is done only when asked).
func (b *Backend) Ban(ctx context.Context, bans []ruleset.Ban) error {
	if len(bans) == 0 {
		return nil
	}
	last := map[netip.Addr]ruleset.Ban{}
	for _, ban := range bans {
		last[ban.Addr] = ban
	}
	addrs := make([]netip.Addr, 0, len(last))
	for a := range last {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	if b.NFT != nil {
		tx := b.NFT.NewTransaction()
		for _, a := range addrs {
			el := &knftables.Element{Set: ruleset.BanSetFor(a), Key: []string{a.String()}}
			if r := ruleset.CleanReason(last[a].Reason); r != "" {
				el.Comment = knftables.PtrTo(r)
			}
			if last[a].Replace {
				tx.Add(el)
				tx.Delete(&knftables.Element{Set: el.Set, Key: el.Key})
			}
			tx.Add(el)
		}
		return b.NFT.Run(ctx, tx)
	}
	if b.Netlink {
		var tx batch
		for _, set := range []string{ruleset.BanSet4, ruleset.BanSet6} {
			var els, again []elem
			for _, a := range addrs {
				if ruleset.BanSetFor(a) != set {
					continue
				}
				ban := last[a]
				el := elem{key: a, timeout: wholeSeconds(ban.Timeout), comment: ruleset.CleanReason(ban.Reason)}
				els = append(els, el)
				if ban.Replace {
					again = append(again, el)
				}
			}
			tx.elements(addElems, set, els)
			tx.elements(deleteElems, set, again)
			tx.elements(addElems, set, again)
		}
		return netlinkErr("ban", b.sendBans(&tx))
	}
	bySet := map[string][]string{}
	replace := map[string][]string{}
	keys := map[string][]string{}
	for _, a := range addrs {
		ban := last[a]
		set := ruleset.BanSetFor(a)
		el := fmt.Sprintf("%s timeout %s", a, timeout(ban.Timeout))
		if r := ruleset.CleanReason(ban.Reason); r != "" {
			el += fmt.Sprintf(" comment %q", r)
		}
		bySet[set] = append(bySet[set], el)
		if ban.Replace {
			replace[set] = append(replace[set], el)
			keys[set] = append(keys[set], a.String())
		}
	}
	var script strings.Builder
	for _, set := range sortedKeys(bySet) {
		fmt.Fprintf(&script, "add element inet %s %s { %s }\n", TableName, set, strings.Join(bySet[set], ", "))
		if len(keys[set]) > 0 {
			fmt.Fprintf(&script, "delete element inet %s %s { %s }\n", TableName, set, strings.Join(keys[set], ", "))
			fmt.Fprintf(&script, "add element inet %s %s { %s }\n", TableName, set, strings.Join(replace[set], ", "))
		}
	}
	return b.runScript(ctx, "ban", script.String())
}

// Unban removes addresses from the ban sets (absent ones are fine: each
// is added with a short timeout first, so the delete always finds it).
func (b *Backend) Unban(ctx context.Context, addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return nil
	}
	sorted := slices.Clone(addrs)
	slices.SortFunc(sorted, netip.Addr.Compare)
	sorted = slices.Compact(sorted)
	if b.NFT != nil {
		tx := b.NFT.NewTransaction()
		for _, a := range sorted {
			el := &knftables.Element{Set: ruleset.BanSetFor(a), Key: []string{a.String()}}
			tx.Add(el)
			tx.Delete(el)
		}
		return b.NFT.Run(ctx, tx)
	}
	if b.Netlink {
		var tx batch
		for _, set := range []string{ruleset.BanSet4, ruleset.BanSet6} {
			var els []elem
			for _, a := range sorted {
				if ruleset.BanSetFor(a) == set {
					els = append(els, elem{key: a, timeout: time.Second})
				}
			}
			tx.elements(addElems, set, els)
			tx.elements(deleteElems, set, els)
		}
		return netlinkErr("unban", b.sendBans(&tx))
	}
	bySet := map[string][]string{}
	for _, a := range sorted {
		bySet[ruleset.BanSetFor(a)] = append(bySet[ruleset.BanSetFor(a)], a.String())
	}
	var script strings.Builder
	for _, set := range sortedKeys(bySet) {
		keys := bySet[set]
		els := make([]string, len(keys))
		for i, k := range keys {
			els[i] = k + " timeout 1s"
		}
		fmt.Fprintf(&script, "add element inet %s %s { %s }\n", TableName, set, strings.Join(els, ", "))
		fmt.Fprintf(&script, "delete element inet %s %s { %s }\n", TableName, set, strings.Join(keys, ", "))
	}
	return b.runScript(ctx, "unban", script.String())
}

func (b *Backend) runScript(ctx context.Context, what, script string) error {
	if _, err := b.Run(ctx, []byte(script), "nft", "-f", "-"); err != nil {
		msg := err.Error()
		if strings.Contains(msg, "No such file or directory") {
			return fmt.Errorf("nftables %s: moat's table is not loaded ('moat enable' first): %s", what, firstLine(msg))
		}
		return fmt.Errorf("nftables %s: %s", what, firstLine(msg))
	}
	return nil
}

// sendBans commits a transaction that touches only the ban and login sets.
// With AfterBan set, it is sent for the ruleset generation read just
// before (tried again if another change came first), and AfterBan learns
// that the generation went from G to G+1 by this transaction alone.
func (b *Backend) sendBans(tx *batch) error {
	if len(tx.msgs) == 0 && tx.err == nil {
		// Nothing to commit: the generation stays, and AfterBan must not
		// hear of a G to G+1 that someone else's commit would make.
		return nil
	}
	if b.AfterBan != nil {
		for range 3 {
			gen, err := Generation()
			if err != nil || gen == ^uint32(0) {
				break
			}
			err = tx.send(gen)
			if errors.Is(err, errGenerationMoved) {
				continue
			}
			if err == nil {
				b.AfterBan(gen, gen+1)
			}
			return err
		}
	}
	return tx.send(0)
}

// wholeSeconds rounds a timeout up to whole seconds, at least one, as nft
// writes it.
func wholeSeconds(d time.Duration) time.Duration {
	return time.Duration(max(int64((d+time.Second-1)/time.Second), 1)) * time.Second
}

// netlinkErr words an error of a netlink transaction on the ban or login
// sets as runScript words nft's.
func netlinkErr(what string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("nftables %s: moat's table is not loaded ('moat enable' first): %w", what, err)
	}
	return fmt.Errorf("nftables %s: %w", what, err)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// Banned reports whether addr is banned, with one lookup (no listing).
func (b *Backend) Banned(ctx context.Context, addr netip.Addr) (bool, error) {
	addr = addr.Unmap()
	set := ruleset.BanSetFor(addr)
	if b.Read != nil {
		return b.Read.Banned(set, addr)
	}
	bans, err := b.Bans(ctx)
	if err != nil {
		return false, err
	}
	for _, ban := range bans {
		if ban.Addr == addr {
			return true, nil
		}
	}
	return false, nil
}

// BansUpTo lists at most n banned addresses (IPv4 first, in the kernel's
// order); more says that there are others. Over netlink the dump stops
// there: with 200,000 bans a whole dump costs seconds.
func (b *Backend) BansUpTo(ctx context.Context, n int) (bans []ruleset.Ban, more bool, err error) {
	r, ok := b.Read.(interface {
		BansUpTo(set string, n int) ([]ruleset.Ban, bool, error)
	})
	if b.NFT != nil || !ok {
		all, err := b.Bans(ctx)
		if err != nil || len(all) <= n {
			return all, false, err
		}
		return all[:n], true, nil
	}
	for _, set := range []string{ruleset.BanSet4, ruleset.BanSet6} {
		got, m, err := r.BansUpTo(set, n-len(bans))
		if err != nil {
			return nil, false, fmt.Errorf("%w ('moat enable' loads moat's table)", err)
		}
		bans = append(bans, got...)
		if m {
			return bans, true, nil
		}
	}
	return bans, false, nil
}

// Bans lists the banned addresses with the time left.
func (b *Backend) Bans(ctx context.Context) ([]ruleset.Ban, error) {
	return b.elementsOf(ctx, "bans", ruleset.BanSet4, ruleset.BanSet6)
}

// bansChanging is a Reader that may read a set while it changes (see
// NetlinkReader.BansChanging).
type bansChanging interface {
	BansChanging(set string) (bans []ruleset.Ban, changed bool, err error)
}

// BansChanged says whether a list of bans or logins this Backend read
// was read while the set kept changing (a ban storm): a merge of dumps
// that each saw commits land, not a snapshot at one instant.
func (b *Backend) BansChanged() bool { return b.changed.Load() }

// Logins lists the addresses in the port scan trap's login sets (Expires:
// the time left of their exemption). A login set that moat's table does
// not hold (no trap, or rules of a moat from before the login sets: an
// upgrade) has none: a change of backend warned that the exemptions in
// it were lost. A read that fails otherwise is an error.
func (b *Backend) Logins(ctx context.Context) ([]ruleset.Ban, error) {
	var out []ruleset.Ban
	for _, set := range []string{ruleset.LoginSet4, ruleset.LoginSet6} {
		got, err := b.elementsOf(ctx, "logins", set)
		if err != nil {
			if noSuchSet(err) {
				continue
			}
			return nil, err
		}
		out = append(out, got...)
	}
	return out, nil
}

// noSuchSet says whether a read of a set of moat's table failed because
// the table holds no set of that name (netlink's ENOENT, knftables', or
// nft's message).
func noSuchSet(err error) bool {
	return errors.Is(err, unix.ENOENT) || knftables.IsNotFound(err) || strings.Contains(err.Error(), "No such file or directory")
}

// elementsOf lists the addresses of sets of moat's table with the time
// they have left (what names them in an error).
func (b *Backend) elementsOf(ctx context.Context, what string, sets ...string) ([]ruleset.Ban, error) {
	var out []ruleset.Ban
	for _, set := range sets {
		if b.NFT != nil {
			els, err := b.NFT.ListElements(ctx, "set", set)
			if err != nil {
				return nil, fmt.Errorf("nftables: list %s: %w", what, err)
			}
			for _, e := range els {
				a, err := netip.ParseAddr(strings.Join(e.Key, ""))
				if err != nil {
					continue
				}
				ban := ruleset.Ban{Addr: a}
				if e.Comment != nil {
					ban.Reason = *e.Comment
				}
				out = append(out, ban)
			}
			continue
		}
		if b.Read != nil {
			var bans []ruleset.Ban
			var err error
			if r, ok := b.Read.(bansChanging); ok {
				var changed bool
				bans, changed, err = r.BansChanging(set)
				if changed {
					b.changed.Store(true)
				}
			} else {
				bans, err = b.Read.Bans(set)
			}
			if err != nil {
				return nil, fmt.Errorf("%w ('moat enable' loads moat's table)", err)
			}
			out = append(out, bans...)
			continue
		}
		data, err := b.Run(ctx, nil, "nft", "-j", "list", "set", "inet", TableName, set)
		if err != nil {
			return nil, fmt.Errorf("nftables: list %s: %s ('moat enable' loads moat's table)", what, firstLine(err.Error()))
		}
		bans, err := parseBanSet(data)
		if err != nil {
			return nil, err
		}
		out = append(out, bans...)
	}
	return out, nil
}

func parseBanSet(data []byte) ([]ruleset.Ban, error) {
	els, err := parseSetJSON(data)
	if err != nil {
		return nil, fmt.Errorf("nftables: parse bans: %w", err)
	}
	var out []ruleset.Ban
	for _, el := range els {
		a, err := netip.ParseAddr(el.Val)
		if err != nil {
			continue
		}
		out = append(out, ruleset.Ban{Addr: a, Timeout: time.Duration(el.Timeout) * time.Second,
			Expires: time.Duration(el.Expires) * time.Second, Reason: el.Comment})
	}
	return out, nil
}

// Protect puts addresses in the port scan trap's login sets for ttl (a
// new timeout for one there already: add, delete, add), so the trap never
// bans an admin who logged in after the last apply. Without a trap (no
// login set) it fails like a ban without moat's table.
func (b *Backend) Protect(ctx context.Context, addrs []netip.Addr, ttl time.Duration) error {
	if len(addrs) == 0 {
		return nil
	}
	sorted := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		sorted = append(sorted, a.Unmap())
	}
	slices.SortFunc(sorted, netip.Addr.Compare)
	sorted = slices.Compact(sorted)
	if b.NFT != nil {
		tx := b.NFT.NewTransaction()
		for _, a := range sorted {
			el := &knftables.Element{Set: ruleset.LoginSetFor(a), Key: []string{a.String()}}
			tx.Add(el)
			tx.Delete(el)
			tx.Add(el)
		}
		return b.NFT.Run(ctx, tx)
	}
	if b.Netlink {
		var tx batch
		for _, set := range []string{ruleset.LoginSet4, ruleset.LoginSet6} {
			var els []elem
			for _, a := range sorted {
				if ruleset.LoginSetFor(a) == set {
					els = append(els, elem{key: a, timeout: wholeSeconds(ttl)})
				}
			}
			tx.elements(addElems, set, els)
			tx.elements(deleteElems, set, els)
			tx.elements(addElems, set, els)
		}
		return netlinkErr("protect a login from the port scan trap", b.sendBans(&tx))
	}
	bySet := map[string][]string{}
	for _, a := range sorted {
		bySet[ruleset.LoginSetFor(a)] = append(bySet[ruleset.LoginSetFor(a)], a.String())
	}
	var script strings.Builder
	for _, set := range sortedKeys(bySet) {
		keys := bySet[set]
		els := make([]string, len(keys))
		for i, k := range keys {
			els[i] = fmt.Sprintf("%s timeout %s", k, timeout(ttl))
		}
		fmt.Fprintf(&script, "add element inet %s %s { %s }\n", TableName, set, strings.Join(els, ", "))
		fmt.Fprintf(&script, "delete element inet %s %s { %s }\n", TableName, set, strings.Join(keys, ", "))
		fmt.Fprintf(&script, "add element inet %s %s { %s }\n", TableName, set, strings.Join(els, ", "))
	}
	return b.runScript(ctx, "protect a login from the port scan trap", script.String())
}

// BansOf lists the bans by looking up the addresses that may be banned
// (known: the guard's records), without the kernel's whole dump (see
// NetlinkReader.BansOf). complete false: some element of a ban set was
// not among the addresses looked up, or the sets changed meanwhile, or
// the kernel does not count a set's elements; Bans must list them.
func (b *Backend) BansOf(ctx context.Context, known []netip.Addr) (bans []ruleset.Ban, complete bool, err error) {
	r, ok := b.Read.(interface {
		BansOf(set string, known []netip.Addr) ([]ruleset.Ban, bool, error)
	})
	if b.NFT != nil || !ok {
		return nil, false, nil
	}
	var v4, v6 []netip.Addr
	for _, a := range known {
		if a = a.Unmap(); a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	for _, s := range []struct {
		set   string
		known []netip.Addr
	}{{ruleset.BanSet4, v4}, {ruleset.BanSet6, v6}} {
		got, complete, err := r.BansOf(s.set, s.known)
		if err != nil || !complete {
			return nil, false, err
		}
		bans = append(bans, got...)
	}
	return bans, true, nil
}
