package nft

import (
	"regexp"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// Chains and sets made in moat's table over netlink under names nft's
// parser cannot take (a newline, controls, a name that is nft commands)
// are removed by a whole rewrite (the drift repair, 'moat reload'): the
// rewrite wrote their names into its script as they were, where they
// broke its syntax (every whole rewrite refused, status saying 'moat
// reload repairs it' all the same) or were read as commands of their own.
// One odd chain holds a rule using a policy set the rewrite makes again,
// so its rules must go before the script.
func TestKernelOddNamesRemoved(t *testing.T) {
	k := newNLKernel(t)
	rs := compile(t, "deny from 192.0.2.0/24\ndeny from 198.51.100.0/24\nallow 22/tcp\n")
	k.apply(rs)
	set := regexp.MustCompile(`set (input_deny_src4_[0-9]+) `).FindStringSubmatch(k.table())
	if set == nil {
		t.Fatalf("no policy set in\n%s", k.table())
	}
	odd := []string{"ev\x1b[31mil\nStatus: inactive", "input\nadd rule inet moat input tcp dport 4444 accept", "1st", "a b"}
	oddSet := "s\x1b]0;t\x07\nx"
	err := k.do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tbl := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
		for _, n := range odd {
			c.AddChain(&nftables.Chain{Name: n, Table: tbl})
		}
		if err := c.AddSet(&nftables.Set{Table: tbl, Name: oddSet, KeyType: nftables.TypeIPAddr}, nil); err != nil {
			return err
		}
		// ip saddr @<policy set> drop, in the first odd chain.
		c.AddRule(&nftables.Rule{Table: tbl, Chain: &nftables.Chain{Name: odd[0], Table: tbl}, Exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: set[1]},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
		return c.Flush()
	})
	if err != nil {
		t.Fatal(err)
	}
	k.be.Full = true
	k.apply(rs)
	objs, err := func() (m map[string][]string, err error) {
		err = k.do(func() error { m, err = NetlinkReader{}.Objects(); return err })
		return m, err
	}()
	if err != nil {
		t.Fatal(err)
	}
	for typ, names := range objs {
		for _, n := range names {
			if !scriptName(n) {
				t.Errorf("%s %q left in moat's table", typ, n)
			}
		}
	}
	if tbl := k.table(); strings.Contains(tbl, "4444") {
		t.Errorf("a chain's name was read as a command:\n%s", tbl)
	}
	// Every name moat gives can be written into a script.
	for _, c := range want(goldenRuleset(t)).chains {
		if !scriptName(c.chain.Name) {
			t.Errorf("moat's chain %q is no script name", c.chain.Name)
		}
	}
	for _, s := range want(goldenRuleset(t)).sets {
		if !scriptName(s.set.Name) {
			t.Errorf("moat's set %q is no script name", s.set.Name)
		}
	}
}
