package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/moat-fw/moat/internal/blocklist"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// sessionAddrs are the client addresses of the live SSH sessions.
func (e *Engine) sessionAddrs() []netip.Addr {
	if e.o.FindSSH == nil {
		return nil
	}
	st, err := e.o.FindSSH()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, s := range st.Sessions {
		out = append(out, s.Client.Addr().Unmap())
	}
	return out
}

// loggedInAddrs are the clients of logged-in SSH sessions (Options.
// LoggedIn), else of every live session.
func (e *Engine) loggedInAddrs(sessions []netip.Addr) []netip.Addr {
	if e.o.LoggedIn == nil {
		return sessions
	}
	addrs, err := e.o.LoggedIn()
	if err != nil {
		e.warn(fmt.Sprintf("cannot tell which SSH sessions are logged in (%v): every live session is protected", err))
		return sessions
	}
	out := make([]netip.Addr, len(addrs))
	for i, a := range addrs {
		out[i] = a.Unmap()
	}
	return out
}

// compile loads the blocklists' contents (with save, an apply: a good file
// list becomes the saved copy), compiles, and puts the clients of the
// logged-in SSH sessions in the protected sets: the drops before
// conntrack and the port scan trap spare them. (A connection still
// guessing passwords is no session to spare: its address could not be
// banned until the next apply.)
func (e *Engine) compile(p *policy.Policy, save bool) (*ruleset.Ruleset, error) {
	rs, _, err := e.compileSaveLater(p, save, false)
	return rs, err
}

// compileSaveLater is compile whose file lists' new copies are saved
// only by the save it returns (with save: an apply calls it once the
// kernel took the change, so that a refused apply leaves the copies
// saying what the kernel holds: TestFailedApplyKeepsFileListCopies).
//
// With loaded, the file lists are their saved copies (blocklist.
// FillLoaded): going back to a recorded state loads the lists it loaded,
// not the list files as they are now.
func (e *Engine) compileSaveLater(p *policy.Policy, save, loaded bool) (*ruleset.Ruleset, func() error, error) {
	sessions := e.sessionAddrs()
	saveLists := func() error { return nil }
	var err error
	if loaded {
		err = blocklist.FillLoaded(e.o.StateDir, p, blocklist.Protect{Sessions: sessions}, e.o.Now(), e.warn)
	} else if save {
		saveLists, err = blocklist.FillSaveLater(e.o.StateDir, p, blocklist.Protect{Sessions: sessions}, e.o.Now(), e.warn)
	} else {
		err = blocklist.Fill(e.o.StateDir, p, blocklist.Protect{Sessions: sessions}, e.o.Now(), false, e.warn)
	}
	if err != nil {
		return nil, nil, err
	}
	rs := ruleset.Compile(p)
	rs.Protect(e.loggedInAddrs(sessions))
	return rs, saveLists, nil
}

// ErrNotApplied says that there is no record of an applied policy to
// refresh.
var ErrNotApplied = errors.New("moat has no record of the policy it applied: run 'moat reload' first")

// Parsed is an applied policy the caller parsed already (to know which
// lists to update): Refresh uses it instead of parsing the applied policy
// again when it is the very text and source found applied under the lock.
type Parsed struct {
	Source, Text string
	Policy       *policy.Policy
	// FromFile: Policy is a parse of the policy file (no policy was
	// applied when the caller read it). It is never loaded; it only
	// names the sources the lists were read from.
	FromFile bool
	// Applied is the applied record's time when the caller read its
	// lists (zero: no record then).
	Applied time.Time
}

// Refresh applies the policy that is applied now once more, with new
// contents for some blocklists (lists: name to networks; the others come
// from their saved copies). The policy file is neither read nor written:
// edits not applied yet stay so. The backends send only the difference.
// Inactive: moat's rules are not loaded, nothing is applied. pre, if not
// nil, is the applied policy as the caller parsed it before taking the
// lock; it is used only if it is still what is applied, by the same
// apply (else the applied policy is parsed here: an apply of the same
// text since, a 'moat reload' after an application profile was edited,
// loaded what the caller's parse, made with the profiles of before, does
// not say).
func (e *Engine) Refresh(ctx context.Context, ch Change, lists map[string][]netip.Prefix, pre *Parsed) (*Result, error) {
	if err := e.mustHoldLock(); err != nil {
		return nil, err
	}
	cur, err := e.current(ctx)
	if err != nil {
		return nil, err
	}
	if len(cur.kernel) == 0 {
		return &Result{Inactive: true}, nil
	}
	if cur.applied == nil {
		return nil, ErrNotApplied
	}
	if cur.applied.FailClosed {
		return &Result{FailClosed: cur.applied}, nil
	}
	doc := policy.NewDocument(cur.applied.Source, []byte(cur.applied.Policy))
	var p *policy.Policy
	if pre != nil && pre.Policy != nil && !pre.FromFile && pre.Source == cur.applied.Source && pre.Text == cur.applied.Policy &&
		pre.Applied.Equal(cur.applied.Time) {
		p = pre.Policy
	} else {
		var err error
		if p, err = e.policyOf(doc); err != nil {
			return nil, fmt.Errorf("the applied policy no longer parses: %w", err)
		}
	}
	if err := sameSources(pre, p, lists); err != nil {
		return nil, err
	}
	if err := fileListsCurrent(pre, p, lists, cur.applied.Time); err != nil {
		return nil, err
	}
	for i := range p.Blocklists {
		if ps, ok := lists[p.Blocklists[i].Name]; ok {
			p.Blocklists[i].Prefixes = ps
		}
	}
	ch.Confirm = 0
	return e.apply(ctx, cur, plan{ch: ch, doc: doc, p: p, backend: cur.applied.Backend, save: saveIfEnabled, source: cur.applied.Source}, &Result{Policy: p})
}

// sameSources refuses lists read from a source that the policy applied
// now no longer names for them: the caller read them before taking the
// lock (a fetch can take many seconds), and another command may have
// applied the list from another file or URL since. Loading the old
// source's networks would put in the kernel a list the applied policy
// does not say (TestRefreshRefusesListsOfAnotherSource).
func sameSources(pre *Parsed, p *policy.Policy, lists map[string][]netip.Prefix) error {
	if pre == nil || pre.Policy == nil || pre.Policy == p {
		return nil
	}
	for name := range lists {
		was, ok1 := pre.Policy.Blocklist(name)
		now, ok2 := p.Blocklist(name)
		if !ok1 || !ok2 {
			continue // not in the policy applied now: not loaded
		}
		if was.Source != now.Source || was.Where() != now.Where() {
			return fmt.Errorf("blocklist %s: read from %s %s, but the policy applied meanwhile takes it from %s %s: run 'moat blocklist update' again", name, was.Source, was.Where(), now.Source, now.Where())
		}
	}
	return nil
}

// fileListsCurrent refuses file lists read before a policy was applied
// (any apply: it read every file list again and saved it): the update's
// read may be older than the apply's, and loading it would undo an
// edit of the list that the apply loaded
// (TestRefreshRefusesFileListReadBeforeAnApply). A URL list is loaded:
// an apply never fetches, the update's copy is the newest.
func fileListsCurrent(pre *Parsed, p *policy.Policy, lists map[string][]netip.Prefix, applied time.Time) error {
	if pre == nil || pre.Applied.Equal(applied) {
		return nil
	}
	for name := range lists {
		if bl, ok := p.Blocklist(name); ok && bl.Source == policy.BlocklistFile {
			return fmt.Errorf("blocklist %s: a policy was applied while %s was read (and read it again): run 'moat blocklist update' again", name, bl.Path)
		}
	}
	return nil
}
