package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// Fake is an in-memory backend for tests: its "kernel" is the last
// ruleset applied, it records every call, and faults can be injected.
type Fake struct {
	mu   sync.Mutex
	name string
	// rs is the loaded ruleset (nil: moat's rules are not loaded).
	rs *ruleset.Ruleset
	// bans are the ban sets' elements (Expires: the time left, which
	// does not run down: the fake has no clock).
	bans map[netip.Addr]ruleset.Ban
	// logins are the port scan trap's login sets' elements (Expires: the
	// time left), kept across applies as the ban sets are.
	logins map[netip.Addr]time.Duration
	// Calls lists the calls in order ("apply", "remove", "restore", ...).
	Calls []string
	// Unavailable makes Available fail.
	Unavailable error
	// Fail, when it returns an error for an operation ("apply", "remove",
	// "snapshot", "restore", "active", "logins"), that operation fails and changes
	// nothing (as an atomic kernel transaction does).
	Fail func(op string) error
	// KeepBanSets makes RestoreKeepingBans restore (as nftables does when
	// the snapshot and the kernel define the ban sets alike); without it,
	// RestoreKeepingBans does nothing (as iptables, which lacks it).
	KeepBanSets bool
}

// NewFake returns an empty fake backend with that name.
func NewFake(name string) *Fake { return &Fake{name: name} }

// Name is the backend's name.
func (f *Fake) Name() string { return f.name }

// Available fails with Unavailable.
func (f *Fake) Available() error { return f.Unavailable }

func (f *Fake) fault(op string) error {
	f.Calls = append(f.Calls, op)
	if f.Fail != nil {
		if err := f.Fail(op); err != nil {
			return fmt.Errorf("fake %s: %s: %w", f.name, op, err)
		}
	}
	return nil
}

// Apply loads rs.
func (f *Fake) Apply(_ context.Context, rs *ruleset.Ruleset) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("apply"); err != nil {
		return err
	}
	f.rs = rs
	return nil
}

// Active says whether a ruleset is loaded.
func (f *Fake) Active(context.Context) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Fail != nil {
		if err := f.Fail("active"); err != nil {
			return false, err
		}
	}
	return f.rs != nil, nil
}

// Remove unloads the ruleset.
func (f *Fake) Remove(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("remove"); err != nil {
		return err
	}
	f.rs, f.bans, f.logins = nil, nil, nil
	return nil
}

// Protect puts addresses in the login sets for ttl (the loaded ruleset
// must have them: the port scan trap).
func (f *Fake) Protect(_ context.Context, addrs []netip.Addr, ttl time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("protect"); err != nil {
		return err
	}
	if f.rs == nil || !hasLoginSets(f.rs) {
		return fmt.Errorf("fake %s: no login sets loaded", f.name)
	}
	if f.logins == nil {
		f.logins = map[netip.Addr]time.Duration{}
	}
	for _, a := range addrs {
		f.logins[a.Unmap()] = ttl
	}
	return nil
}

// Logins lists the login sets' elements, sorted.
func (f *Fake) Logins(context.Context) ([]ruleset.Ban, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("logins"); err != nil {
		return nil, err
	}
	if f.rs == nil || !hasLoginSets(f.rs) {
		return nil, fmt.Errorf("fake %s: no login sets loaded", f.name)
	}
	out := make([]ruleset.Ban, 0, len(f.logins))
	for a, left := range f.logins {
		out = append(out, ruleset.Ban{Addr: a, Expires: left})
	}
	slices.SortFunc(out, func(a, b ruleset.Ban) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}

// fakeSnapshot is what the fake's Snapshot holds: the ruleset and the
// bans, as a real snapshot holds the ban sets' elements.
type fakeSnapshot struct {
	Ruleset *ruleset.Ruleset `json:"ruleset"`
	Bans    []fakeBan        `json:"bans,omitempty"`
}

type fakeBan struct {
	Addr   netip.Addr    `json:"addr"`
	Left   time.Duration `json:"left"`
	Reason string        `json:"reason,omitempty"`
}

// Snapshot is the loaded ruleset and the bans as JSON (nil: none).
func (f *Fake) Snapshot(context.Context) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("snapshot"); err != nil {
		return nil, err
	}
	if f.rs == nil {
		return nil, nil
	}
	snap := fakeSnapshot{Ruleset: f.rs}
	for _, b := range f.bansLocked() {
		snap.Bans = append(snap.Bans, fakeBan{Addr: b.Addr, Left: b.Expires, Reason: b.Reason})
	}
	return json.Marshal(&snap)
}

// Restore loads a snapshot again (empty: nothing loaded).
func (f *Fake) Restore(_ context.Context, snap []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("restore"); err != nil {
		return err
	}
	if len(snap) == 0 {
		f.rs, f.bans = nil, nil
		return nil
	}
	var s fakeSnapshot
	if err := json.Unmarshal(snap, &s); err != nil || s.Ruleset == nil {
		return fmt.Errorf("fake %s: not a snapshot: %v", f.name, err)
	}
	// The fake's snapshot holds no login sets: restored empty, as a
	// snapshot taken before a login holds none of it.
	f.rs, f.bans, f.logins = s.Ruleset, map[netip.Addr]ruleset.Ban{}, nil
	for _, b := range s.Bans {
		f.bans[b.Addr] = ruleset.Ban{Addr: b.Addr, Expires: b.Left, Reason: b.Reason}
	}
	return nil
}

// RestoreKeepingBans loads a snapshot's ruleset leaving the bans as they
// are, with KeepBanSets and moat's rules loaded; otherwise it does
// nothing (kept false).
func (f *Fake) RestoreKeepingBans(_ context.Context, snap []byte) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.KeepBanSets || f.rs == nil || len(snap) == 0 {
		return false, nil
	}
	if err := f.fault("restore-keeping-bans"); err != nil {
		return false, err
	}
	var s fakeSnapshot
	if err := json.Unmarshal(snap, &s); err != nil || s.Ruleset == nil {
		return false, fmt.Errorf("fake %s: not a snapshot: %v", f.name, err)
	}
	f.rs = s.Ruleset
	return true, nil
}

// Ban puts addresses in the ban sets (moat's rules must be loaded).
func (f *Fake) Ban(_ context.Context, bans []ruleset.Ban) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("ban"); err != nil {
		return err
	}
	if f.rs == nil {
		return fmt.Errorf("fake %s: no ban sets loaded", f.name)
	}
	if f.bans == nil {
		f.bans = map[netip.Addr]ruleset.Ban{}
	}
	for _, b := range bans {
		a := b.Addr.Unmap()
		if _, ok := f.bans[a]; ok && !b.Replace {
			continue // an element already there keeps its timeout, as in the kernel
		}
		f.bans[a] = ruleset.Ban{Addr: a, Expires: b.Timeout, Reason: b.Reason}
	}
	return nil
}

// Unban takes addresses out of the ban sets.
func (f *Fake) Unban(_ context.Context, addrs []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("unban"); err != nil {
		return err
	}
	for _, a := range addrs {
		delete(f.bans, a.Unmap())
	}
	return nil
}

// Bans lists the bans, sorted.
func (f *Fake) Bans(context.Context) ([]ruleset.Ban, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("bans"); err != nil {
		return nil, err
	}
	if f.rs == nil {
		return nil, fmt.Errorf("fake %s: no ban sets loaded", f.name)
	}
	return f.bansLocked(), nil
}

func (f *Fake) bansLocked() []ruleset.Ban {
	out := make([]ruleset.Ban, 0, len(f.bans))
	for _, b := range f.bans {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b ruleset.Ban) int { return a.Addr.Compare(b.Addr) })
	return out
}

// Loaded returns the loaded ruleset as JSON ("" when none), to compare,
// without the live sessions in the protected sets (they depend on who is
// logged in at the apply, not on the policy).
func (f *Fake) Loaded() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rs == nil {
		return ""
	}
	rs := *f.rs
	rs.Sets = make([]*ruleset.Set, len(f.rs.Sets))
	for i, s := range f.rs.Sets {
		rs.Sets[i] = s
		if s.Protect {
			c := *s
			c.Entries = slices.DeleteFunc(slices.Clone(s.Entries), func(e ruleset.SetEntry) bool { return e.Origin.ID == "session" })
			if len(c.Entries) == 0 {
				c.Entries = nil
			}
			rs.Sets[i] = &c
		}
	}
	data, err := json.Marshal(&rs)
	if err != nil {
		return "unmarshalable ruleset: " + err.Error()
	}
	return string(data)
}
