package ipt

import (
	"fmt"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// trapLines renders the port scan trap of one family, per protocol, as two
// rules that decide nothing (the SET target goes on to the next rule): a
// new connection from outside the protected set to a (protocol, port) the
// source has not tried within the window first takes a token from the
// source's bucket (hashlimit) and, over it, adds the source to the ban
// set; then the pair is recorded in the trap's set, which forgets it
// after the window.
func trapLines(r *ruleset.Rule, fam policy.Family, names Names, comment string) []string {
	t := r.Trap
	if t.Family != fam {
		return nil
	}
	n, unit := ruleset.RateUnit(t.Rate)
	scan := names.of(t.PortSet)
	var out []string
	for _, proto := range []string{"tcp", "udp"} {
		// addrtype: the host's own addresses (any interface's, loopback)
		// are never trapped, looked up when the packet comes.
		m := fmt.Sprintf("-p %s -m conntrack --ctstate NEW -m addrtype ! --src-type LOCAL -m set ! --match-set %s src -m set ! --match-set %s src -m set ! --match-set %s src,dst",
			proto, names.of(t.ProtectSet), names.of(t.LoginSet), scan)
		out = append(out,
			join(m, fmt.Sprintf("-m hashlimit --hashlimit-above %d/%s --hashlimit-burst %d --hashlimit-mode srcip --hashlimit-name moat_scan%s --hashlimit-htable-expire %d",
				n, unitAbbrev(unit), t.Rate.Burst, famSuffix(fam), 2*t.Rate.Seconds*1000),
				comment, fmt.Sprintf("-j SET --add-set %s src --timeout %d --exist", names.of(t.BanSet), int64(t.BanTime/time.Second))),
			join(m, comment, fmt.Sprintf("-j SET --add-set %s src,dst --exist", scan)))
	}
	return out
}
