package ruleset

import "github.com/moat-fw/moat/internal/policy"

// Log prefixes, as ufw's "[UFW BLOCK]".
const (
	LogBlock   = "[MOAT BLOCK] "
	LogAllow   = "[MOAT ALLOW] "
	LogInvalid = "[MOAT INVALID] "
	LogAudit   = "[MOAT AUDIT] "
)

// addLogging adds the rules of a logging level to a chain (ufw's levels):
// low logs what the default policy blocks; medium also what it allows
// (new connections) and invalid packets; high logs those without a rate
// limit and every packet with one; full has no rate limits at all. A chain
// left alone (forwarding without route rules) logs nothing.
func addLogging(c *Chain, lv policy.LogLevel) {
	if !lv.AtLeast(policy.LogLow) || (c.Hook == Forward && len(c.Rules) == 0) {
		return
	}
	limited := !lv.AtLeast(policy.LogHigh)
	id := func(what string) Origin {
		return Origin{ID: "logging:" + what + ":" + string(c.Hook), Text: "logging " + string(lv) + ": " + what}
	}
	if c.Default != Accept {
		c.Rules = append(c.Rules, Rule{Verdict: Log, Log: LogBlock, LogLimited: limited, Origin: id("block")})
	} else if lv.AtLeast(policy.LogMedium) {
		c.Rules = append(c.Rules, Rule{Match: Match{CTStates: []CTState{CTNew}}, Verdict: Log, Log: LogAllow, LogLimited: limited, Origin: id("allow")})
	}
	if lv.AtLeast(policy.LogMedium) {
		for i := range c.Rules {
			if c.Rules[i].Origin.ID == "builtin:invalid" {
				inv := Rule{Match: c.Rules[i].Match, Verdict: Log, Log: LogInvalid, LogLimited: limited, Origin: id("invalid")}
				c.Rules = append(c.Rules[:i], append([]Rule{inv}, c.Rules[i:]...)...)
				break
			}
		}
	}
	if lv.AtLeast(policy.LogHigh) {
		all := Rule{Verdict: Log, Log: LogAudit, LogLimited: !lv.AtLeast(policy.LogFull), Origin: id("all")}
		c.Rules = append([]Rule{all}, c.Rules...)
	}
}
