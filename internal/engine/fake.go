package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"github.com/moat-fw/moat/internal/ruleset"
)

// Fake is an in-memory backend for tests: its "kernel" is the last
// ruleset applied, it records every call, and faults can be injected.
type Fake struct {
	mu   sync.Mutex
	name string
	// rs is the loaded ruleset (nil: moat's rules are not loaded).
	rs *ruleset.Ruleset
	// Calls lists the calls in order ("apply", "remove", "restore", ...).
	Calls []string
	// Unavailable makes Available fail.
	Unavailable error
	// Fail, when it returns an error for an operation ("apply", "remove",
	// "snapshot", "restore", "active"), that operation fails and changes
	// nothing (as an atomic kernel transaction does).
	Fail func(op string) error
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
	f.rs = nil
	return nil
}

// Snapshot is the loaded ruleset as JSON (nil: none).
func (f *Fake) Snapshot(context.Context) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("snapshot"); err != nil {
		return nil, err
	}
	if f.rs == nil {
		return nil, nil
	}
	return json.Marshal(f.rs)
}

// Restore loads a snapshot again (empty: nothing loaded).
func (f *Fake) Restore(_ context.Context, snap []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault("restore"); err != nil {
		return err
	}
	if len(snap) == 0 {
		f.rs = nil
		return nil
	}
	var rs ruleset.Ruleset
	if err := json.Unmarshal(snap, &rs); err != nil {
		return fmt.Errorf("fake %s: not a snapshot: %w", f.name, err)
	}
	f.rs = &rs
	return nil
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
