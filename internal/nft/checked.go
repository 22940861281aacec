package nft

import "errors"

// ErrChangedSinceCheck says that a change was not committed because the
// nftables ruleset generation is no longer the one at which the
// command's drift check found moat's rules to be what moat applied
// (moat's own commits since counted): another program committed in
// between. The generation moves for any nf_tables change in the
// namespace (a ban of the guard, Docker, a rule in another table), and
// for a rule put by hand into moat's table or chains, which the change,
// made from a read of the kernel, would overwrite without a word. So
// nothing is committed, and the command checks moat's rules again
// before it runs again (cli: locked).
var ErrChangedSinceCheck = errors.New("the nftables ruleset changed after moat's rules were checked")

// CheckedGen is the generation at which a command's drift check found
// moat's rules to be what moat applied: with OK, Apply commits only at
// that generation (else ErrChangedSinceCheck), and moves it on by its
// own commit. Not OK: no check vouches, Apply commits as it reads.
type CheckedGen struct {
	Gen uint32
	OK  bool
	// Recheck, when set, checks moat's rules again now (the fingerprint
	// against the record the command's check vouched for) and returns
	// the generation read before it when they are still what moat
	// applied: Apply, finding the generation moved since the check,
	// goes on from there rather than refuse (a ban, a change of another
	// table). A generation moved again by the time Apply reads is
	// refused all the same.
	Recheck func() (gen uint32, ok bool)
}

// Still moves c on to a generation at which moat's rules were found
// unchanged again, when gen (read without error) is not c's; it says
// whether c is now at gen.
func (c *CheckedGen) Still(gen uint32, err error) bool {
	if c.At(gen, err) {
		return true
	}
	if err != nil || c.Recheck == nil {
		return false
	}
	g, ok := c.Recheck()
	if !ok || g != gen {
		return false
	}
	c.Gen = g
	return true
}

// At says whether gen (read without error) is the checked generation.
func (c CheckedGen) At(gen uint32, err error) bool { return err == nil && gen == c.Gen }
