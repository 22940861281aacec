package nft

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// ruleMsg is an NFT_MSG_NEWRULE message as a dump gives it, with the
// expressions exprs (each an NFTA_LIST_ELEM's attributes).
func ruleMsg(t testing.TB, exprs ...[]netlink.Attribute) netlink.Message {
	t.Helper()
	var elems []netlink.Attribute
	for _, e := range exprs {
		b, err := netlink.MarshalAttributes(e)
		if err != nil {
			t.Fatal(err)
		}
		elems = append(elems, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: b})
	}
	list, err := netlink.MarshalAttributes(elems)
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte("moat\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte("input\x00")},
		{Type: unix.NFTA_RULE_HANDLE, Data: []byte{0, 0, 0, 0, 0, 0, 0, 7}},
		{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: list},
	})
	if err != nil {
		t.Fatal(err)
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE), Flags: netlink.Multi},
		Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
}

func exprAttrs(t testing.TB, name string, e expr.Any) []netlink.Attribute {
	t.Helper()
	as := []netlink.Attribute{{Type: unix.NFTA_EXPR_NAME, Data: []byte(name + "\x00")}}
	if e != nil {
		data, err := expr.MarshalExprData(byte(gnft.TableFamilyINet), e)
		if err != nil {
			t.Fatal(err)
		}
		as = append(as, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: data})
	}
	return as
}

// A rule whose expressions google/nftables decodes all has no Undecoded;
// one with an expression it drops (an unknown name with data, a known
// name without data, last with its data) lists every expression, the
// dropped ones included, and the data of the changing ones left out.
func TestDecodeRulesUndecoded(t *testing.T) {
	cmp := &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 80}}
	verdict := &expr.Verdict{Kind: expr.VerdictAccept}
	counter := &expr.Counter{Bytes: 1, Packets: 1}
	payload := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	lastData := []netlink.Attribute{{Type: unix.NFTA_EXPR_NAME, Data: []byte("last\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: []byte{8, 0, 2, 0, 0, 0, 1, 0}}}
	msgs := []netlink.Message{
		ruleMsg(t, exprAttrs(t, "payload", payload), exprAttrs(t, "cmp", cmp), exprAttrs(t, "counter", counter), exprAttrs(t, "immediate", verdict)),
		ruleMsg(t, exprAttrs(t, "payload", payload), exprAttrs(t, "byteorder-of-the-future", cmp), exprAttrs(t, "cmp", cmp), exprAttrs(t, "immediate", verdict)),
		ruleMsg(t, exprAttrs(t, "payload", payload), exprAttrs(t, "cmp", nil), exprAttrs(t, "immediate", verdict)),
		ruleMsg(t, lastData, exprAttrs(t, "counter", counter), exprAttrs(t, "immediate", verdict)),
	}
	rules, err := decodeRules(&gnft.Table{Family: gnft.TableFamilyINet, Name: "moat"}, &gnft.Chain{Name: "input"}, msgs)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 4 {
		t.Fatalf("%d rules, want 4", len(rules))
	}
	if rules[0].Undecoded != nil || len(rules[0].Exprs) != 4 || rules[0].Handle != 7 {
		t.Errorf("a rule decoded whole: %+v undecoded %v", rules[0].Rule, rules[0].Undecoded)
	}
	for i, want := range [][]string{
		{"payload", "byteorder-of-the-future", "cmp", "immediate"},
		{"payload", "cmp", "immediate"},
		{"last", "counter", "immediate"},
	} {
		r := rules[i+1]
		if got := r.Kinds(); !slices.Equal(got, want) {
			t.Errorf("rule %d: kinds %q, want %q (decoded %d)", i+2, got, want, len(r.Exprs))
		}
	}
	// The unknown expression's data is in the text; a counter's and
	// last's (they change with the traffic) and an expression without
	// data are names alone.
	if s := rules[1].Undecoded[1].String(); !strings.HasPrefix(s, `"byteorder-of-the-future" `) || len(s) < 30 {
		t.Errorf("unknown expression as %q", s)
	}
	for _, e := range []RawExpr{rules[2].Undecoded[1], rules[3].Undecoded[0], rules[3].Undecoded[1]} {
		if s := e.String(); s != `"`+e.Name+`"` {
			t.Errorf("%s as %q", e.Name, s)
		}
	}
	// A message cut short is an error, not a rule.
	bad := msgs[1]
	bad.Data = bad.Data[:len(bad.Data)-3]
	if _, err := decodeRules(&gnft.Table{Family: gnft.TableFamilyINet, Name: "moat"}, &gnft.Chain{Name: "input"}, []netlink.Message{bad}); err == nil {
		t.Error("a truncated rule decoded")
	}
	if rs, err := decodeRules(&gnft.Table{Family: gnft.TableFamilyINet, Name: "moat"}, &gnft.Chain{Name: "input"}, nil); err != nil || rs != nil {
		t.Errorf("no messages: %v, %v", rs, err)
	}
}

// decodeRules never panics, whatever the kernel (or a forged reply) sends.
func FuzzDecodeRules(f *testing.F) {
	f.Add(ruleMsg(f, exprAttrs(f, "cmp", &expr.Cmp{Register: 1, Data: []byte{1}})).Data)
	f.Add(ruleMsg(f, []netlink.Attribute{{Type: unix.NFTA_EXPR_NAME, Data: []byte("rt\x00")}}).Data)
	f.Fuzz(func(t *testing.T, data []byte) {
		m := netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE)}, Data: data}
		rules, err := decodeRules(&gnft.Table{Family: gnft.TableFamilyINet, Name: "moat"}, &gnft.Chain{Name: "input"}, []netlink.Message{m})
		if err == nil && len(rules) != 1 {
			t.Fatalf("%d rules of one message", len(rules))
		}
	})
}

// BenchmarkGetRules reads every chain of moat's table with GetRules (one
// dump, google/nftables' decoding fed the dump, the expressions counted)
// and with google/nftables' GetRules (the reader before), over the shared
// socket, in turns in the same run; it prints the ratio of their times.
func BenchmarkGetRules(b *testing.B) {
	_, ns := kernelNS(b)
	ctx := context.Background()
	p, err := policy.NewDocument("moat.conf", []byte("default deny incoming\nallow 22/tcp\nlimit 2222/tcp\n"+
		"allow from 192.0.2.0/24 to any port 80,443 proto tcp\nreject 25/tcp\nallow 1000:2000/udp\nallow out 53\ndeny out 25/tcp\n")).Policy(nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := (&Backend{Run: labtest.Runner(ns)}).Apply(ctx, ruleset.Compile(p)); err != nil {
		b.Fatal(err)
	}
	var old, now time.Duration
	rules := 0
	if err := ns.Do(func() error {
		defer Share()()
		c, done, err := Conn()
		if err != nil {
			return err
		}
		chains, err := c.ListChainsOfTableFamily(gnft.TableFamilyINet)
		done()
		if err != nil {
			return err
		}
		table := &gnft.Table{Family: gnft.TableFamilyINet, Name: TableName}
		b.ResetTimer()
		for range b.N {
			for turn := range 2 {
				start := time.Now()
				c, done, err := Conn()
				if err != nil {
					return err
				}
				n := 0
				for _, ch := range chains {
					if turn == 0 {
						rs, err := c.GetRules(table, ch)
						n += len(rs)
						if err != nil {
							done()
							return err
						}
					} else {
						rs, err := GetRules(c, table, ch)
						n += len(rs)
						if err != nil {
							done()
							return err
						}
					}
				}
				done()
				if turn == 0 {
					old += time.Since(start)
				} else {
					now += time.Since(start)
				}
				rules = n
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(rules), "rules")
	b.ReportMetric(float64(old.Microseconds())/float64(b.N), "µs-google")
	b.ReportMetric(float64(now.Microseconds())/float64(b.N), "µs-counted")
	b.ReportMetric(float64(now)/float64(old), "ratio")
}

// A dynset's per-element expressions are counted too: google/nftables
// drops the ones it cannot decode there alike.
func TestDecodeRulesUndecodedInDynset(t *testing.T) {
	marshal := func(as []netlink.Attribute) []byte {
		b, err := netlink.MarshalAttributes(as)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	dynset := func(inner ...[]netlink.Attribute) []netlink.Attribute {
		var elems []netlink.Attribute
		for _, e := range inner {
			elems = append(elems, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: marshal(e)})
		}
		data := marshal([]netlink.Attribute{
			{Type: unix.NFTA_DYNSET_SET_NAME, Data: []byte("meter\x00")},
			{Type: unix.NFTA_DYNSET_SREG_KEY, Data: []byte{0, 0, 0, 1}},
			{Type: unix.NFTA_DYNSET_OP, Data: []byte{0, 0, 0, 1}},
			{Type: unix.NLA_F_NESTED | nftaDynsetExpressions, Data: marshal(elems)},
		})
		return []netlink.Attribute{{Type: unix.NFTA_EXPR_NAME, Data: []byte("dynset\x00")}, {Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: data}}
	}
	limit := exprAttrs(t, "limit", &expr.Limit{Type: expr.LimitTypePkts, Rate: 10, Unit: expr.LimitTimeSecond, Burst: 5})
	counter := exprAttrs(t, "counter", &expr.Counter{})
	last := []netlink.Attribute{{Type: unix.NFTA_EXPR_NAME, Data: []byte("last\x00")}}
	verdict := exprAttrs(t, "immediate", &expr.Verdict{Kind: expr.VerdictDrop})
	rules, err := decodeRules(&gnft.Table{Family: gnft.TableFamilyINet, Name: "moat"}, &gnft.Chain{Name: "input"}, []netlink.Message{
		ruleMsg(t, dynset(limit, counter), verdict),
		ruleMsg(t, dynset(limit, last), verdict),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 2 {
		t.Fatalf("%d rules", len(rules))
	}
	if d, ok := rules[0].Exprs[0].(*expr.Dynset); !ok || len(d.Exprs) != 2 || rules[0].Undecoded != nil {
		t.Errorf("a dynset decoded whole: %+v, undecoded %v", rules[0].Exprs, rules[0].Undecoded)
	}
	if got := rules[1].Kinds(); !slices.Equal(got, []string{"dynset", "immediate"}) || !strings.Contains(rules[1].Undecoded[0].String(), "6c61737400") /* "last\0" */ {
		t.Errorf("a dynset with last: kinds %q, %v", got, rules[1].Undecoded)
	}
}
