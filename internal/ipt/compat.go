package ipt

import (
	"strings"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// forgetRestored makes the chains that scripts, restored into family fam
// by iptables-restore, declared (so wrote) count as unknown in st, the
// state predicted after Apply: their sums and the raw section's go, so
// the next change over netlink rewrites them (onlyChanged keeps a chain
// without a sum; a raw section not known is not kept). iptables-restore
// writes a comment as the compat match, which costs a call on every
// packet that reaches it; moat's transaction writes it as user data.
// Before, a chain whose rules did not change kept the compat match until
// they did.
func forgetRestored(st *state, fam policy.Family, scripts []string) {
	delete(st.raw, fam)
	sums := st.sums[fam]
	if sums == nil {
		return
	}
	for _, script := range scripts {
		for _, l := range strings.Split(script, "\n") {
			if name, ok := strings.CutPrefix(l, ":"); ok {
				name, _, _ = strings.Cut(name, " ")
				delete(sums, name)
			}
		}
	}
}

// restoredForm says whether st, a state predicted from moat's own
// scripts (it has sums), holds a chain of moat's in family fam whose sum
// is not known: one that iptables-restore wrote (forgetRestored). The
// netlink plan then rewrites the family (onlyChanged keeps only such
// chains and MOAT-GEN), even when its rules are what the policy wants:
// 'moat reload', or any apply, makes the chains converge. A state read
// from the kernel has no sums: its chains are rewritten by the next
// change of rules anyway. Only the chains rs renders count: a MOAT-*
// chain made by hand, which no script of moat's declares (so none gives
// it a sum), would have the family rewritten by every apply.
func restoredForm(st *state, fam policy.Family, rs *ruleset.Ruleset) bool {
	sums := st.sums[fam]
	if sums == nil {
		return false
	}
	for _, ch := range rs.Chains {
		if name := ChainName(ch.Hook); st.has[fam][name] && sums[name] == "" {
			return true
		}
	}
	return false
}
