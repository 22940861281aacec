package drift

import (
	"context"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// An expression google/nftables cannot decode (last, rt, byteorder, any
// name it does not know) added by hand to one of moat's rules over
// netlink shows: the rule's body read over netlink differs from the same
// rule loaded by moat into a scratch namespace, and the fingerprint
// changes. google/nftables dropped such expressions without a word, so
// the rule read exactly as moat's own.
func TestKernelUndecodedExpressionSeen(t *testing.T) {
	p, err := policy.NewDocument("moat.conf", []byte("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")).Policy(policy.ParseServices([]byte("ssh 22/tcp\n")))
	if err != nil {
		t.Fatal(err)
	}
	rs := ruleset.Compile(p)
	for name, extra := range map[string]labtest.RawExpr{
		// last: when the rule last matched (stateful, matches always).
		"last": {Name: "last"},
		// rt: the route's classid into register 2, which moat's rule
		// never reads.
		"rt": {Name: "rt", Data: labtest.ExprAttrs(map[uint16]uint32{unix.NFTA_RT_DREG: unix.NFT_REG_2, unix.NFTA_RT_KEY: unix.NFT_RT_CLASSID})},
		// byteorder: the port moat's rule loaded (register 1), swapped
		// into register 2, which moat's rule never reads.
		"byteorder": {Name: "byteorder", Data: labtest.ExprAttrs(map[uint16]uint32{unix.NFTA_BYTEORDER_SREG: unix.NFT_REG_1,
			unix.NFTA_BYTEORDER_DREG: unix.NFT_REG_2, unix.NFTA_BYTEORDER_OP: unix.NFT_BYTEORDER_HTON,
			unix.NFTA_BYTEORDER_LEN: 2, unix.NFTA_BYTEORDER_SIZE: 2})},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ns := labtest.NS(t, "moatundec")
			ctx := context.Background()
			scratch, err := Loaded(ctx, "nftables", rs, nil)
			if err != nil {
				t.Fatal(err)
			}
			var before, after *Layout
			if err := ns.Do(func() error {
				if err := (&nft.Backend{Run: labtest.Runner(ns)}).Apply(ctx, rs); err != nil {
					return err
				}
				var err error
				before, err = ReadNftLoaded(nil)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if d := Compare(scratch, before); d != nil {
				t.Fatalf("moat's own rules differ from the scratch namespace's: %q", d)
			}
			// moat's rule for 80/tcp: a port compare, accepted.
			tag := ""
			for name, c := range before.Chains {
				for _, r := range c.Rules {
					if !bookkeeping(name) && r.Tag != "" && r.Verdict == "accept" && strings.Contains(r.Body, "Payload") && strings.Contains(r.Body, `"Data":"AFA="`) {
						tag = r.Tag
					}
				}
			}
			if tag == "" {
				t.Fatalf("no rule for 80/tcp in %+v", before.Chains)
			}
			fp0, err := Fingerprint(before)
			if err != nil {
				t.Fatal(err)
			}
			if err := ns.Do(func() error {
				if err := labtest.ReplaceRuleRaw(unix.NFPROTO_INET, nft.TableName, func(_ string, _ uint64, udata []byte, _ []string) bool {
					return ruleset.OriginID(nft.RuleComment(udata)) == tag
				}, labtest.BeforeVerdict(extra)); err != nil {
					return err
				}
				var err error
				after, err = ReadNftLoaded(nil)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			d := Compare(scratch, after)
			if d == nil {
				t.Fatalf("a rule with %s added by hand reads as moat's own", name)
			}
			if !strings.Contains(strings.Join(d, "\n"), name) {
				t.Errorf("the drift report does not name %s: %q", name, d)
			}
			fp1, err := Fingerprint(after)
			if err != nil {
				t.Fatal(err)
			}
			if fp1 == fp0 {
				t.Errorf("the fingerprint did not change with %s added to a rule", name)
			}
			var body string
			for _, c := range after.Chains {
				for _, r := range c.Rules {
					if r.Tag == tag {
						body = r.Body
					}
				}
			}
			if !strings.Contains(body, `"`+name+`"`) {
				t.Errorf("the rule's body does not name %s: %s", name, body)
			}
		})
	}
}

// The names of a rule read raw are given to the admin, escaped; other
// bodies give none.
func TestUndecodedNames(t *testing.T) {
	body := exprBody(nil, nil) + undecodedBody([]nft.RawExpr{{Name: "payload", Data: []byte{1, 2}}, {Name: "last", Data: []byte{3}},
		{Name: "by\x1b[2Jte order"}, {Name: "immediate", Data: []byte{4}}})
	if got, want := undecodedNames(body), []string{"payload", "last", `by\x1b[2Jte order`, "immediate"}; !slices.Equal(got, want) {
		t.Errorf("names %q, want %q (body %s)", got, want, body)
	}
	for _, b := range []string{"", `[{"*expr.Log":{"Data":" undecoded["}}]`, " undecoded[", ` undecoded["x`} {
		_ = undecodedNames(b) // never panics
	}
	if got := undecodedNames(`[{"*expr.Cmp":{}}]`); got != nil {
		t.Errorf("names of a decoded rule: %q", got)
	}
}
