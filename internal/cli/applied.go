package cli

import (
	"time"

	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/policy"
)

// appliedState is what moat last put in the kernel, as the engine records
// it: the one thing status and explain trust for "what is applied" (the
// policy file may have changed since, the kernel may have been changed by
// hand).
type appliedState struct {
	Known   bool // false: nothing recorded (moat inactive, or applied by an older moat)
	Backend string
	Policy  string
	// PolicySHA256 is the checksum of Policy (LoadApplied checked it).
	PolicySHA256 string
	Time         time.Time
	FailClosed   bool
	FailReason   string
}

// loadApplied reads what is applied; an unreadable record counts as
// unknown (status then says so).
func (a *app) loadApplied() appliedState {
	st, _ := a.loadAppliedErr()
	return st
}

// loadAppliedErr is loadApplied with the error that made the record
// unreadable (nil when it is read, or there is none).
func (a *app) loadAppliedErr() (appliedState, error) {
	rec, err := engine.LoadApplied(a.stateDir)
	if err != nil || rec == nil {
		return appliedState{}, err
	}
	return appliedState{Known: true, Backend: rec.Backend, Policy: rec.Policy, PolicySHA256: rec.PolicySHA256, Time: rec.Time,
		FailClosed: rec.FailClosed, FailReason: rec.FailReason}, nil
}

// parseApplied compiles a recorded policy text as the engine did: with
// the system's services and application profiles, its lines named after
// the policy file.
func (a *app) parseApplied(text string) (*policy.Policy, error) {
	doc := policy.NewDocument(a.config, []byte(text))
	doc.Apps = a.apps()
	return doc.Policy(a.services())
}
