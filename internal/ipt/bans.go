package ipt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// maxIPSetTimeout is the longest timeout ipset takes (seconds, about 24.8
// days: "'2592000' is out of range 0-2147483").
const maxIPSetTimeout = 2147483

// ipsetTimeout is a ban's timeout in seconds for ipset: at least 1s, at
// most maxIPSetTimeout. A longer ban (bantime-max 30d, 'moat ban --for
// 30d') is held that long by the kernel rather than refused; the guard
// bans again at the address's next failures after it.
func ipsetTimeout(d time.Duration) int64 {
	return min(max(int64(d.Seconds()), 1), maxIPSetTimeout)
}

// Ban adds addresses to moat's ban ipsets in one ipset restore; -exist
// gives an address already banned its new timeout.
func (b *Backend) Ban(ctx context.Context, bans []ruleset.Ban) error {
	if len(bans) == 0 {
		return nil
	}
	var s strings.Builder
	for _, ban := range bans {
		secs := ipsetTimeout(ban.Timeout)
		fmt.Fprintf(&s, "add %s %s timeout %d", IPSetName(ruleset.BanSetFor(ban.Addr)), ban.Addr, secs)
		if r := ruleset.CleanReason(ban.Reason); r != "" {
			fmt.Fprintf(&s, " comment %q", r)
		}
		s.WriteString(" -exist\n")
	}
	if _, err := b.runIpset(ctx, []byte(s.String()), "restore"); err != nil {
		return fmt.Errorf("ban: %w ('moat enable' loads moat's ipsets)", err)
	}
	return nil
}

// Unban removes addresses from the ban ipsets (absent ones are fine).
func (b *Backend) Unban(ctx context.Context, addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return nil
	}
	var s strings.Builder
	for _, a := range addrs {
		fmt.Fprintf(&s, "del %s %s -exist\n", IPSetName(ruleset.BanSetFor(a)), a)
	}
	if _, err := b.runIpset(ctx, []byte(s.String()), "restore"); err != nil {
		return fmt.Errorf("unban: %w", err)
	}
	return nil
}

// Banned reports whether addr is banned: one 'ipset test', not a listing.
func (b *Backend) Banned(ctx context.Context, addr netip.Addr) (bool, error) {
	addr = addr.Unmap()
	out, err := b.runIpset(ctx, nil, "test", IPSetName(ruleset.BanSetFor(addr)), addr.String())
	if err == nil {
		return true, nil
	}
	if strings.Contains(string(out)+err.Error(), "is NOT in set") {
		return false, nil
	}
	return false, fmt.Errorf("test ban of %s: %w", addr, err)
}

// Bans lists the banned addresses with the time left.
func (b *Backend) Bans(ctx context.Context) ([]ruleset.Ban, error) {
	return b.membersOf(ctx, "bans", ruleset.BanSet4, ruleset.BanSet6)
}

// Logins lists the addresses in the port scan trap's login ipsets
// (Expires: the time left of their exemption).
func (b *Backend) Logins(ctx context.Context) ([]ruleset.Ban, error) {
	// A login set not there (no trap, or rules of a moat from before the
	// login sets: an upgrade) has none: a change of backend warned that
	// the exemptions in it were lost. A list that fails is an error.
	names, err := b.setNames(ctx)
	if err != nil {
		return nil, fmt.Errorf("list logins: %w", err)
	}
	var sets []string
	for _, s := range []string{ruleset.LoginSet4, ruleset.LoginSet6} {
		if slices.Contains(names, IPSetName(s)) {
			sets = append(sets, s)
		}
	}
	return b.membersOf(ctx, "logins", sets...)
}

// membersOf lists the addresses of moat's ipsets of timeouts with the
// time they have left (what names them in an error).
func (b *Backend) membersOf(ctx context.Context, what string, sets ...string) ([]ruleset.Ban, error) {
	var out []ruleset.Ban
	for _, set := range sets {
		if b.IpsetNetlink {
			if got, err := membersNetlink(ctx, IPSetName(set)); err == nil {
				out = append(out, got...)
				continue
			}
			// Read again with the program, whose error names the cause.
		}
		data, err := b.runIpset(ctx, nil, "save", IPSetName(set))
		if err != nil {
			return nil, fmt.Errorf("list %s: %w ('moat enable' loads moat's ipsets)", what, err)
		}
		out = append(out, parseBanSave(data)...)
	}
	return out, nil
}

// Attributes of a member of an ipset of timeouts (IPSET_ATTR_TIMEOUT,
// IPSET_ATTR_COMMENT).
const (
	ipsetAttrTimeout = 6
	ipsetAttrComment = 26
)

// membersNetlink dumps an ipset of timeouts over netlink: each member's
// address, time left and comment, what `ipset save` prints and
// parseBanSave reads, without the program and its text (a third of the
// CPU of 'moat bans --all' at 200,000 bans). The comment is the kernel's
// as it is (`ipset save` prints it between quotes, unescaped). A set of
// another type than moat's hash:ip (made by hand) is an error, and is
// read with the program: its members may be networks or carry ports,
// which `ipset save` prints as no address and parseBanSave leaves out.
func membersNetlink(ctx context.Context, name string) ([]ruleset.Ban, error) {
	c, err := dialIpset()
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }() // read only
	msgs, err := c.list(ctx, name, 0)
	if err != nil {
		return nil, err
	}
	var out []ruleset.Ban
	var perr error
	setType := ""
	for _, m := range msgs {
		err := walkAttrs(nfPayload(m), func(t uint16, v []byte) {
			if t == ipsetAttrTypename && setType == "" {
				setType = cString(v)
			}
			if t != ipsetAttrADT {
				return
			}
			perr = errors.Join(perr, walkAttrs(v, func(typ uint16, v []byte) {
				if typ != ipsetAttrData {
					return
				}
				ban, err := parseBanMember(v)
				if err != nil {
					perr = errors.Join(perr, err)
					return
				}
				if ban.Addr.IsValid() {
					out = append(out, ban)
				}
			}))
		})
		if err = errors.Join(err, perr); err != nil {
			return nil, fmt.Errorf("%w: list %q: %w", errIpsetNetlink, name, err)
		}
	}
	if setType != "hash:ip" {
		return nil, fmt.Errorf("%w: list %q: a set of type %q, not hash:ip", errIpsetNetlink, name, setType)
	}
	return out, nil
}

// parseBanMember reads one member of an ipset of timeouts.
func parseBanMember(v []byte) (ruleset.Ban, error) {
	var ban ruleset.Ban
	var ierr error
	err := walkAttrs(v, func(typ uint16, v []byte) {
		switch typ {
		case ipsetAttrIP:
			ierr = walkAttrs(v, func(t uint16, v []byte) {
				if t == ipsetAttrIPAddrV4 || t == ipsetAttrIPAddrV6 {
					if a, ok := netip.AddrFromSlice(v); ok {
						ban.Addr = a
					}
				}
			})
		case ipsetAttrTimeout:
			if len(v) == 4 {
				ban.Expires = time.Duration(binary.BigEndian.Uint32(v)) * time.Second
			}
		case ipsetAttrComment:
			ban.Reason = cString(v)
		}
	})
	return ban, errors.Join(err, ierr)
}

// parseBanSave reads `add SET ADDR timeout N [comment "X"]` lines. The
// options are read before the comment, which `ipset save` prints between
// quotes as it is: its words ("timeout 5") are no option, and its spaces
// are kept.
func parseBanSave(data []byte) []ruleset.Ban {
	var out []ruleset.Ban
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		opts, comment, commented := strings.Cut(sc.Text(), ` comment "`)
		f := strings.Fields(opts)
		if len(f) < 3 || f[0] != "add" {
			continue
		}
		a, err := netip.ParseAddr(f[2])
		if err != nil {
			continue
		}
		ban := ruleset.Ban{Addr: a}
		for i := 3; i+1 < len(f); i++ {
			if f[i] == "timeout" {
				n, _ := strconv.Atoi(f[i+1])
				ban.Expires = time.Duration(n) * time.Second
			}
		}
		if commented {
			if i := strings.LastIndexByte(comment, '"'); i >= 0 {
				comment = comment[:i]
			}
			ban.Reason = comment
		}
		out = append(out, ban)
	}
	return out
}

// Protect puts addresses in the port scan trap's login ipsets for ttl
// (-exist gives one there already its new timeout), so the trap never
// bans an admin who logged in after the last apply.
func (b *Backend) Protect(ctx context.Context, addrs []netip.Addr, ttl time.Duration) error {
	if len(addrs) == 0 {
		return nil
	}
	var s strings.Builder
	for _, a := range addrs {
		a = a.Unmap()
		fmt.Fprintf(&s, "add %s %s timeout %d -exist\n", IPSetName(ruleset.LoginSetFor(a)), a, ipsetTimeout(ttl))
	}
	if _, err := b.runIpset(ctx, []byte(s.String()), "restore"); err != nil {
		return fmt.Errorf("protect a login from the port scan trap: %w", err)
	}
	return nil
}

// BansUpTo lists the banned addresses as Bans does, n at most (more:
// the ban ipsets hold others). Over netlink the dump stops there (the
// socket is closed: the kernel ends it), so that 'moat status' counts the
// kernel's bans without reading 200,000 of them.
// A dump that fails (no such set, one of another type made by hand) is
// read again whole as Bans reads it: the program's error names the cause.
func (b *Backend) BansUpTo(ctx context.Context, n int) (bans []ruleset.Ban, more bool, err error) {
	if b.IpsetNetlink {
		if bans, more, err := bansUpToNetlink(ctx, n); err == nil {
			return bans, more, nil
		}
	}
	all, err := b.Bans(ctx)
	if err != nil || len(all) <= n {
		return all, false, err
	}
	return all[:n], true, nil
}

// bansUpToNetlink is BansUpTo's dump of the ban ipsets over netlink.
func bansUpToNetlink(ctx context.Context, n int) (bans []ruleset.Ban, more bool, err error) {
	for _, set := range []string{ruleset.BanSet4, ruleset.BanSet6} {
		got, m, err := banMembersUpTo(ctx, IPSetName(set), n-len(bans))
		if err != nil {
			return nil, false, err
		}
		bans = append(bans, got...)
		if m {
			return bans, true, nil
		}
	}
	return bans, false, nil
}

// errEnough ends a dump that read as many members as asked for.
var errEnough = errors.New("enough members read")

// banMembersUpTo dumps an ipset of timeouts over netlink as
// membersNetlink does, stopping after n members (more: the set holds
// others). A set that is not there, or of another type than moat's
// hash:ip, is an error.
func banMembersUpTo(ctx context.Context, name string, n int) (out []ruleset.Ban, more bool, err error) {
	setType := ""
	missing, err := dumpSet(ctx, name, 0, func(attrs []byte) error {
		var perr error
		werr := walkAttrs(attrs, func(t uint16, v []byte) {
			if t == ipsetAttrTypename && setType == "" {
				setType = cString(v)
			}
			if t != ipsetAttrADT || perr != nil {
				return
			}
			werr := walkAttrs(v, func(typ uint16, v []byte) {
				if typ != ipsetAttrData || perr != nil {
					return
				}
				if len(out) >= n {
					more, perr = true, errEnough
					return
				}
				ban, err := parseBanMember(v)
				if err != nil {
					perr = err
					return
				}
				if ban.Addr.IsValid() {
					out = append(out, ban)
				}
			})
			perr = errors.Join(perr, werr)
		})
		return errors.Join(werr, perr)
	})
	switch {
	case more:
	case err != nil:
		return nil, false, err
	case missing:
		return nil, false, fmt.Errorf("%w: no set %q", errIpsetNetlink, name)
	}
	if setType != "hash:ip" {
		return nil, false, fmt.Errorf("%w: list %q: a set of type %q, not hash:ip", errIpsetNetlink, name, setType)
	}
	return out, more, nil
}
