package engine

import "github.com/moat-fw/moat/internal/policy"

// policyOf parses a policy document with the engine's service names and,
// unless the document brings its own, application profiles.
func (e *Engine) policyOf(doc *policy.Document) (*policy.Policy, error) {
	if doc.Apps == nil {
		doc.Apps = e.o.Apps
	}
	return doc.Policy(e.o.Services)
}

// appPorts is the profiles' ports (name → ports), saved with the boot
// ruleset so that a profile removed later does not break 'moat restore'.
func appPorts(apps policy.Apps) map[string]string {
	if len(apps) == 0 {
		return nil
	}
	out := make(map[string]string, len(apps))
	for name, a := range apps {
		out[name] = a.PortsText
	}
	return out
}
