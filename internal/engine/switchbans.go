package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// A change of backend (nftables <-> iptables) loads the new backend's
// rules with empty ban sets. The bans in force (the guard's, 'moat ban',
// the port scan trap's) go over to it with the time they have left, as
// they survive an edit; the undo of a switch cut short (kill -9, a failure
// after the kernel took it) brings them back to the old backend the same
// way. While they travel they are recorded in pending.bans (under the
// switch's ID), so that a kill between removing the old backend's rules
// and the end of the command loses none.

// switchID names the record of the bans carried by the change of in.
func switchID(in *Intent) string {
	return fmt.Sprintf("switch %d %s", in.PID, in.Time.UTC().Format(time.RFC3339Nano))
}

// recordedBans reads pending.bans when it was written under id, with the
// time gone since taken off (bans run out meanwhile are dropped): the
// bans, and the port scan trap's login exemptions. ok is false when it
// holds no record of id. A record there but unreadable is said loudly:
// the bans only it held (those made while a change waited, when a
// rollback was cut after its restore; those carried by a switch cut after
// the old rules went) are lost, and the kernel's are used.
func (e *Engine) recordedBans(id string) (bans, logins []ruleset.Ban, ok bool) {
	bans, logins, _, ok = e.recordedBansAt(id)
	return bans, logins, ok
}

// recordedBansAt is recordedBans with the time the record was taken.
func (e *Engine) recordedBansAt(id string) (bans, logins []ruleset.Ban, taken time.Time, ok bool) {
	var rec rollbackBans
	data, err := readState(e.o.StateDir, rollbackBansFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, time.Time{}, false
	}
	if err == nil {
		err = json.Unmarshal(data, &rec)
	}
	if err != nil {
		msg := fmt.Sprintf("%s is unreadable (%v): the bans and login exemptions it recorded are lost; those in the kernel's sets are kept",
			filepath.Join(e.o.StateDir, rollbackBansFile), err)
		if msg != e.bansRecordWarned {
			e.bansRecordWarned = msg
			e.warn(msg)
		}
		return nil, nil, time.Time{}, false
	}
	if rec.ID != id {
		return nil, nil, time.Time{}, false
	}
	gone := max(e.o.Now().Sub(rec.Taken), 0)
	left := func(recs []rollbackBanRec) []ruleset.Ban {
		var out []ruleset.Ban
		for _, b := range recs {
			if !b.Addr.IsValid() || b.LeftMS < 0 {
				continue
			}
			// A hostile or broken record must not overflow the time left.
			left := min(b.LeftMS, maxRecordedLeft.Milliseconds())
			d := time.Duration(left)*time.Millisecond - gone
			if d >= time.Second || b.LeftMS == 0 {
				out = append(out, ruleset.Ban{Addr: b.Addr.Unmap(), Expires: d, Reason: ruleset.CleanReason(b.Reason)})
			}
		}
		return out
	}
	return left(rec.Bans), left(rec.Logins), rec.Taken, true
}

// maxRecordedLeft bounds the time left of a ban read from pending.bans
// (moat's longest duration).
const maxRecordedLeft = 100 * 365 * 24 * time.Hour

// liveBans reads the ban sets of the named backends that hold moat's
// rules (one not loaded, or not a banKeeper, has none), adding those not
// in have already.
func (e *Engine) liveBans(ctx context.Context, have []ruleset.Ban, names ...string) []ruleset.Ban {
	seen := make(map[netip.Addr]bool, len(have))
	for _, b := range have {
		seen[b.Addr.Unmap()] = true
	}
	for _, b := range e.loadedBackends(ctx, names...) {
		k, ok := b.(banKeeper)
		if !ok {
			continue
		}
		bans, err := k.Bans(ctx)
		if err != nil {
			e.warn(fmt.Sprintf("change of backend: cannot read the bans in force in %s (%v): they are not carried over", b.Name(), err))
			continue
		}
		for _, ban := range bans {
			if a := ban.Addr.Unmap(); !seen[a] {
				seen[a] = true
				ban.Addr = a
				have = append(have, ban)
			}
		}
	}
	return have
}

// loadedBackends are those of the named backends that are usable here and
// hold moat's rules.
func (e *Engine) loadedBackends(ctx context.Context, names ...string) []Backend {
	var out []Backend
	for _, name := range names {
		b, err := e.backend(name)
		if err != nil || b.Available() != nil {
			continue
		}
		if on, err := b.Active(ctx); err != nil || !on {
			continue
		}
		out = append(out, b)
	}
	return out
}

// recordBans writes bans and the login exemptions (logins) to
// pending.bans under id, with the time they have left now. what names the
// command in the warning a failure gives.
func (e *Engine) recordBans(what, id string, bans, logins []ruleset.Ban) {
	recs := func(bans []ruleset.Ban) []rollbackBanRec {
		out := make([]rollbackBanRec, 0, len(bans))
		for _, b := range bans {
			out = append(out, rollbackBanRec{Addr: b.Addr.Unmap(), LeftMS: banLeft(b).Milliseconds(), Reason: ruleset.CleanReason(b.Reason)})
		}
		return out
	}
	rec := rollbackBans{ID: id, Taken: e.o.Now(), Bans: recs(bans)}
	if len(logins) > 0 {
		rec.Logins = recs(logins)
	}
	if err := writeJSON(e.o.StateDir, rollbackBansFile, &rec); err != nil {
		// The command goes on: only a kill before its end would lose them.
		e.warn(fmt.Sprintf("%s: %v", what, err))
	}
}

// banLeft is the time a ban read back has left (or the timeout of one to
// set).
func banLeft(b ruleset.Ban) time.Duration {
	if b.Expires > 0 {
		return b.Expires
	}
	return b.Timeout
}

// putBans bans again in to (whose rules are loaded) the bans carried, with
// the time they have left and their reasons (cleaned); an address banned
// there already keeps its ban.
func (e *Engine) putBans(ctx context.Context, to Backend, bans []ruleset.Ban) {
	if len(bans) == 0 {
		return
	}
	k, ok := to.(banKeeper)
	if !ok {
		return
	}
	put := make([]ruleset.Ban, 0, len(bans))
	for _, b := range bans {
		put = append(put, ruleset.Ban{Addr: b.Addr.Unmap(), Timeout: banLeft(b), Reason: ruleset.CleanReason(b.Reason)})
	}
	if err := k.Ban(ctx, put); err != nil {
		e.warn(fmt.Sprintf("change of backend: could not carry the %d bans in force over to %s: %v (the guard puts its own back when it starts)", len(put), to.Name(), err))
	}
}

// carryBans gives the bans in force in the backends moat's rules leave
// (from) to the backend that took them (to, loaded with rs), recording
// them first, with the port scan trap's login exemptions (carried by
// carryLogins after them): a kill from here to the end of the command
// finds both in the record.
// read is when they were read (their times left are of then).
func (e *Engine) carryBans(ctx context.Context, id string, from []string, to Backend, rs *ruleset.Ruleset) (bans, logins []ruleset.Ban, read time.Time, err error) {
	read = e.o.Now()
	rec, recLogins, _ := e.recordedBans(id)
	bans = e.liveBans(ctx, rec, from...)
	if hasLoginSets(rs) {
		logins = e.liveLogins(ctx, recLogins, from...)
	}
	if len(bans) == 0 && len(logins) == 0 {
		return nil, nil, read, nil
	}
	e.recordBans("change of backend", id, bans, logins)
	if err := e.step("switch-bans-recorded"); err != nil {
		return nil, nil, read, err
	}
	e.putBans(ctx, to, bans)
	return bans, logins, read, e.step("switch-bans")
}

// carryLateBans gives to the bans that landed in the backends moat's
// rules leave (from) after carryBans read them (carried): the port scan
// trap bans in the kernel, from the old rules, without the bans lock, and
// putting many bans in the new backend takes seconds. Read again just
// before the old rules go, in rounds while new ones appear (a few: a
// scan that keeps the trap busy has its bans carried by the rounds, and
// what the last read misses is the instant before the removal).
// The record gives each ban (and login exemption) the time it has left
// at the record's time: those read at read have aged since.
func (e *Engine) carryLateBans(ctx context.Context, id string, from []string, to Backend, carried, logins []ruleset.Ban, read time.Time) error {
	rec := carried
	for range 3 {
		late := e.liveBans(ctx, slices.Clip(carried), from...)[len(carried):]
		if len(late) == 0 {
			return nil
		}
		carried = append(carried, late...)
		now := e.o.Now()
		rec = append(agedBans(rec, now.Sub(read)), late...)
		logins = agedBans(logins, now.Sub(read))
		read = now
		e.recordBans("change of backend", id, rec, logins)
		if err := e.step("switch-late-bans-recorded"); err != nil {
			return err
		}
		e.putBans(ctx, to, late)
	}
	return nil
}

// agedBans is bans with d less left (read d ago): one without a timeout
// stays, one run out since goes.
func agedBans(bans []ruleset.Ban, d time.Duration) []ruleset.Ban {
	out := make([]ruleset.Ban, 0, len(bans))
	for _, b := range bans {
		left := banLeft(b)
		if left > 0 {
			if left -= max(d, 0); left < time.Second {
				continue
			}
			b.Expires, b.Timeout = left, 0
		}
		out = append(out, b)
	}
	return out
}

// dropSwitchBans removes the record of the change of in (a record of
// another change, or a rollback's, stays).
func (e *Engine) dropSwitchBans(in *Intent) error {
	var rec rollbackBans
	data, err := readState(e.o.StateDir, rollbackBansFile)
	if err != nil || json.Unmarshal(data, &rec) != nil || rec.ID != switchID(in) {
		return nil
	}
	return removeState(e.o.StateDir, rollbackBansFile)
}

// loginKeeper is a backend with the port scan trap's login sets: the
// addresses that logged in over SSH within a day, which the trap spares.
type loginKeeper interface {
	Logins(ctx context.Context) ([]ruleset.Ban, error)
	Protect(ctx context.Context, addrs []netip.Addr, ttl time.Duration) error
}

// hasLoginSets says whether rs has the port scan trap's login sets.
func hasLoginSets(rs *ruleset.Ruleset) bool {
	for _, s := range rs.Sets {
		if s.Name == ruleset.LoginSet4 || s.Name == ruleset.LoginSet6 {
			return true
		}
	}
	return false
}

// carryLogins gives the port scan trap's exemptions of the backends
// moat's rules leave (logins, read and recorded by carryBans: addresses
// that logged in within the day, put there by the guard) to the backend
// that took them (to), with the time they have left. The new backend's
// login sets start empty: without this an admin who logged in before a
// change of backend, and logged out since, was trapped by the first few
// closed ports tried after it.
func (e *Engine) carryLogins(ctx context.Context, logins []ruleset.Ban, to Backend) {
	e.putLogins(ctx, to, logins)
}

// liveLogins reads the login sets of the named backends that hold moat's
// rules, adding those not in have already (the exemptions recorded in
// pending.bans, kept whatever the read gives). A backend whose login sets
// cannot be read is said loudly: its exemptions are lost unless recorded,
// and the admin they spared may be trapped at the next closed port tried.
func (e *Engine) liveLogins(ctx context.Context, have []ruleset.Ban, names ...string) []ruleset.Ban {
	out := make([]ruleset.Ban, 0, len(have))
	at := map[netip.Addr]int{}
	add := func(l ruleset.Ban) {
		a := l.Addr.Unmap()
		if !a.IsValid() {
			return
		}
		l.Addr = a
		if i, ok := at[a]; ok {
			// Twice (recorded and live, or in both backends): the
			// exemption that lasts longer.
			if banLeft(l) > banLeft(out[i]) {
				out[i] = l
			}
			return
		}
		at[a] = len(out)
		out = append(out, l)
	}
	for _, l := range have {
		add(l)
	}
	for _, b := range e.loadedBackends(ctx, names...) {
		k, ok := b.(loginKeeper)
		if !ok {
			continue
		}
		logins, err := k.Logins(ctx)
		if err != nil {
			kept := "they are lost: an admin they spared is trapped by the port scan trap until the guard sees the next login"
			if len(have) > 0 {
				kept = fmt.Sprintf("the %d recorded in %s are kept", len(have), filepath.Join(e.o.StateDir, rollbackBansFile))
			}
			e.warn(fmt.Sprintf("cannot read the port scan trap's login exemptions in %s (%v): %s", b.Name(), err, kept))
			continue
		}
		for _, l := range logins {
			add(l)
		}
	}
	return out
}

// putLogins exempts logins from the port scan trap of to (whose rules
// are loaded) for the time they have left, in whole seconds rounded up
// (an exemption never ends before it did).
func (e *Engine) putLogins(ctx context.Context, to Backend, logins []ruleset.Ban) {
	k, ok := to.(loginKeeper)
	if !ok || len(logins) == 0 {
		return
	}
	byLeft := map[time.Duration][]netip.Addr{}
	for _, l := range logins {
		left := banLeft(l).Truncate(time.Second)
		if left < banLeft(l) {
			left += time.Second
		}
		if left >= time.Second {
			byLeft[left] = append(byLeft[left], l.Addr)
		}
	}
	for left, addrs := range byLeft {
		if err := k.Protect(ctx, addrs, left); err != nil {
			e.warn(fmt.Sprintf("could not keep the port scan trap's exemption of %d logins in %s: %v (the guard exempts them again at their next login)", len(addrs), to.Name(), err))
		}
	}
}
