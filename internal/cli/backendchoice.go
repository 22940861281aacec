package cli

import (
	"context"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/policy"
)

// applyBackend is the backend an apply of p would load, as the engine
// picks it (engine.choose): --backend; else the backend applied now, while
// the policy's 'backend' line is what it was then; else, with nothing
// recorded, the backend whose rules are in the kernel when the policy
// says auto; else the policy's line. 'moat show' and the dry runs print
// that backend's script: they printed auto's (nftables) while a reload
// kept iptables.
func (a *app) applyBackend(ctx context.Context, p *policy.Policy) (backend.Backend, error) {
	if a.backend != "" || p == nil {
		return a.backendFor(p)
	}
	rec, err := engine.LoadApplied(a.stateDir)
	switch {
	case err == nil && rec != nil && !rec.FailClosed && rec.Setting == string(p.Backend):
		return backend.ForName(policy.Backend(rec.Backend))
	case err == nil && rec == nil && (p.Backend == "" || p.Backend == policy.BackendAuto):
		if b, err := a.activeBackend(ctx); err == nil && b != nil {
			return b, nil
		}
	}
	return a.backendFor(p)
}
